"""CONTRIBUTING.md's "Add an architecture" is true: its steps alone register a working model.

The test reads the recipe's file names from CONTRIBUTING.md itself, follows its steps for a
throwaway architecture (torchvision's MobileNetV3-Small under a name no one will use) in a copy
of the repository's code, and then, in a child process on that copy:

- the generated lists of dvc.yaml are current (the recipe's command wrote them), and
- the registry's quick tests pass for the new record, together with the tests that are not
  per model (those are where a hard-coded list of models would fail).

Only the files the recipe names may differ from the originals afterwards.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env
from retinopathy.core.registry import MODELS

NAME = "throwaway_net"  # a name that contains none of the registry's, so `-k` can tell them apart
FAMILY = "throwaway"

# Step 1's module, written as the recipe describes it (a builder that raises on zero_init_residual).
MODULE = f'''"""A throwaway architecture (tests/test_add_architecture.py): torchvision's MobileNetV3-Small."""

from __future__ import annotations

import torchvision.models as tvm
from torch import nn


def {NAME}(num_classes: int = 1000, zero_init_residual: bool = False) -> nn.Module:
    """MobileNetV3-Small with torchvision's initialisation and state-dict layout."""
    if zero_init_residual:
        raise ValueError("{NAME} has no zero_init_residual start")
    return tvm.mobilenet_v3_small(weights=None, num_classes=num_classes)
'''

# Step 2's record: classifier = Linear(576, 1024), Hardswish, Dropout, Linear(1024, classes);
# features.12 is the last stage (stride 32), features.8/3/1 the earlier ones (16, 8, 4).
RECORD = f"""    Architecture(
        name="{NAME}",
        title="Throwaway-Net",
        builder="{FAMILY}.{NAME}",
        imagenet="MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        head="classifier.3",
        features=1024,
        initialisation="torchvision's",
        first_conv="features.0.0",
        cam_layers=(("features.12", 32), ("features.8", 16), ("features.3", 8), ("features.1", 4)),
        zero_init_residual=False,
        own=False,
    ),
"""


class Recipe:
    """The file names and the command of CONTRIBUTING.md's "Add an architecture", as it writes them."""

    def __init__(self, text: str) -> None:
        section = re.search(r"^## Add an architecture\n(.*?)(?=^## )", text, re.M | re.S)
        assert section, "CONTRIBUTING.md has no '## Add an architecture' section"
        self.text = " ".join(section[1].split())

        def named(pattern: str, what: str) -> str:
            found = re.search(pattern, self.text)
            assert found, f"CONTRIBUTING.md's recipe no longer names {what} as this test expects: {pattern}"
            return found[1]

        self.module = named(r"`(src/[\w/]+/)<family>\.py`", "the module's folder") + f"{FAMILY}.py"
        self.registry = named(r"`RECORDS`, `(src/[\w/]+\.py)`", "the registry's file")
        self.params = named(r"`model:` comment in `([\w.]+)`", "the params file")
        self.command = named(r"Run `(python -m [\w.]+)`", "the generator").split()[2:]
        self.generated = named(r"it rewrites `([\w.]+)`", "the file the generator rewrites")
        self.tests = named(r"`pytest -m \"not slow\" (tests/[\w/]+\.py)`", "the registry's tests")

    def touched(self) -> set[str]:
        return {self.module, self.registry, self.params, self.generated}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (bytecode caches aside) -> the SHA-256 of its bytes."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def follow(recipe: Recipe, root: Path) -> None:
    """Steps 1-3 by hand, as a contributor edits the files."""
    (root / recipe.module).write_text(MODULE)

    registry = root / recipe.registry
    lines = registry.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("RECORDS = (")), None)
    assert start is not None, f"{recipe.registry} has no `RECORDS = (` for step 2"
    end = next(i for i in range(start, len(lines)) if lines[i] == ")\n")  # the tuple's closing line
    registry.write_text("".join(lines[:end] + [RECORD] + lines[end:]))

    params = root / recipe.params
    text, count = re.subn(
        r"^(model: \w+ +# .*?)( \()", rf"\1 | {NAME}\2", params.read_text(), count=1, flags=re.M
    )
    assert count == 1, f"{recipe.params} has no `model: <name>  # a | b (...)` comment for step 3"
    params.write_text(text)


def child(root: Path, *argv: str) -> subprocess.CompletedProcess:
    """``python <argv>`` in ``root`` with the copy's package, not the installed one, on the path."""
    env = subprocess_env()
    env["PYTHONPATH"] = str(root / "src")
    return subprocess.run(
        [sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture()
def copy(tmp_path) -> Path:
    """The repository's code, params, dvc.yaml and test settings, without caches."""
    root = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", root / "src", ignore=ignore)
    for name in ("pyproject.toml", "params.yaml", "dvc.yaml", "CONTRIBUTING.md"):
        shutil.copy2(REPO / name, root / name)
    (root / "tests").mkdir()
    return root


@pytest.mark.slow
def test_the_recipe_alone_adds_an_architecture_that_passes_the_quick_checks(copy, tmp_path):
    recipe = Recipe((REPO / "CONTRIBUTING.md").read_text())
    for name in ("conftest.py", Path(recipe.tests).name):
        shutil.copy2(REPO / "tests" / name, copy / "tests" / name)
    assert NAME not in MODELS and not any(NAME in model or model in NAME for model in MODELS)
    before = snapshot(copy)

    follow(recipe, copy)
    generated = child(copy, "-m", *recipe.command)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    changed = {path for path, digest in snapshot(copy).items() if before.get(path) != digest}
    assert changed <= recipe.touched(), (
        f"files the recipe does not name: {sorted(changed - recipe.touched())}"
    )
    assert {recipe.module, recipe.registry, recipe.params, recipe.generated} <= changed
    assert (
        f"- {recipe.module}\n" in (copy / recipe.generated).read_text()
    )  # a dep of the stages that build it

    checked = child(copy, "-m", *recipe.command, "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The registry's tests on the new record and every test that is not per model; the records that
    # were there before are deselected by their names (the main suite checks them).
    others = " or ".join(MODELS)
    tests = child(
        copy,
        "-m",
        "pytest",
        recipe.tests,
        "-m",
        "not slow",
        "-k",
        f"not ({others})",
        "-v",
        "-p",
        "no:cacheprovider",
        f"--basetemp={tmp_path / 'inner'}",
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    passed = set(re.findall(r"::(\w+)\[" + NAME + r"\] PASSED", tests.stdout))
    assert {
        "test_every_model_builds_for_both_heads_with_the_recorded_parts",
        "test_the_grad_cam_layers_exist_with_the_recorded_strides",
        "test_grad_cam_explains_every_model",
    } <= passed, tests.stdout[-4000:]
    assert re.search(r"::test_the_records_are_the_models_params_yaml_offers PASSED", tests.stdout)
