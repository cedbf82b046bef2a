"""dvc.yaml agrees with the code: each stage's code deps are its import closure, its paths the contract's.

And the house rule that makes the first true: no stage module imports another
stage module, so a stage's deps are only the library rooms it really runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from retinopathy import checkpoint, codedeps
from retinopathy.cli import COMMANDS, module_of
from retinopathy.contract import ARMS, REPORT_FIGURES, SCREENING_FIGURES, Layout

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src/retinopathy"
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC["stages"]


def stage_command(spec: dict) -> str:
    return spec["cmd"].split()[1]  # `retinopathy <command> ...`


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_the_code_it_imports(stage: str) -> None:
    spec = STAGES[stage]
    listed = sorted(dep.removeprefix("src/") for dep in spec["deps"] if str(dep).startswith("src/"))
    assert listed == codedeps.code_deps(module_of(stage_command(spec)))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_stage_module_imports_another_stage_module(command: str) -> None:
    module = module_of(command)
    own = codedeps.module_file(module)
    room = own.parent if own.name == "__init__.py" else own  # a package (bench) is one room
    stages = PACKAGE / "stages"
    for path in codedeps.import_closure(module):
        if stages in path.parents and path != stages / "__init__.py":
            assert path == room or room in path.parents, f"{module} imports {path.relative_to(PACKAGE)}"


def test_library_modules_import_no_stage_module() -> None:
    for path in PACKAGE.rglob("*.py"):
        if "stages" in path.relative_to(PACKAGE).parts:
            continue
        for name in codedeps.imported_modules(path):
            assert not name.startswith("retinopathy.stages"), f"{path.relative_to(PACKAGE)} imports {name}"


def test_package_init_files_hold_only_docstrings() -> None:
    # They are left out of the code deps, so they must not run any code.
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent.name == "bench":
            continue  # the bench command's package re-exports its main; it is no DVC stage
        body = ast.parse(init.read_text()).body
        kinds = {type(node) for node in body[1:]}
        assert kinds <= {ast.Assign} and isinstance(body[0], ast.Expr), init  # docstring, __version__


def test_the_fingerprinted_training_code_is_the_train_stage_deps() -> None:
    listed = [dep.removeprefix("src/") for dep in STAGES["train"]["deps"] if str(dep).startswith("src/")]
    assert sorted(listed) == codedeps.code_deps(checkpoint.TRAINING_STAGE)


def test_the_demo_painter_is_a_dependency_of_demo_data_only() -> None:
    painter = "src/retinopathy/data/synthetic.py"
    assert [name for name, spec in STAGES.items() if painter in spec["deps"]] == ["demo-data"]


def _expand(path: str) -> list[str]:
    return [path.replace("${item.init}", arm) for arm in ARMS] if "${item.init}" in path else [path]


def _outs(stage: str) -> set[str]:
    found = set()
    for out in STAGES[stage]["outs"]:
        found.update(_expand(next(iter(out)) if isinstance(out, dict) else out))
    return found


def test_stage_outputs_are_the_contract_paths() -> None:
    layout = Layout()
    arms = [layout.arm(arm) for arm in ARMS]
    assert _outs("demo-data") == {str(layout.demo)}
    assert _outs("prepare") == {str(layout.prepared)}
    assert _outs("weights") == {str(layout.manifests)}
    assert _outs("train") == {str(p) for a in arms for p in (a.model_dir, a.history)}
    assert _outs("evaluate") == {str(p) for a in arms for p in (
        a.metrics, a.info, a.confusion_counts, a.confusion_normalized, a.predictions, a.val_predictions,
        a.screening, a.roc_image, a.roc_patient, a.reliability)}
    assert _outs("fuse") == {str(p) for arm in ARMS for p in (layout.blend(arm), layout.fused_metrics(arm),
                                                              layout.fused_predictions(arm))}
    assert _outs("explain") == {str(layout.explanation(arm)) for arm in ARMS}
    figures = [layout.report, *(layout.figure(name) for name in (*REPORT_FIGURES, *SCREENING_FIGURES)),
               *(layout.confusion_figure(arm) for arm in ARMS)]
    assert _outs("report") == {str(path) for path in figures}
    assert set(DVC["metrics"]) == {str(a.metrics) for a in arms}
    for stage, option, path in (("demo-data", "--out", layout.demo), ("prepare", "--out", layout.prepared),
                                ("weights", "--out", layout.manifests), ("report", "--out", layout.plots),
                                ("report", "--metrics", layout.metrics)):
        words = STAGES[stage]["cmd"].split()
        assert words[words.index(option) + 1] == str(path), (stage, option)
