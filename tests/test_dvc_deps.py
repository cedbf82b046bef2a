"""dvc.yaml lists, for every stage, exactly the project code that stage imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from retinopathy.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src/retinopathy"
# Reading params, error text, atomic writes and the dispatcher change no stage's results
# (dvc.yaml's header says so); every other imported module is a dependency.
NOT_DEPS = {"config.py", "errors.py", "files.py", "cli.py", "__init__.py"}


def imported_modules(path: Path) -> set[str]:
    """File names of the retinopathy modules that ``path`` imports directly."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("retinopathy"):
            if node.module == "retinopathy":  # from retinopathy import engine
                names = [f"retinopathy.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("retinopathy")]
        else:
            continue
        for name in names:
            parts = name.split(".")[1:]
            if parts and (PACKAGE / f"{parts[0]}.py").is_file():
                found.add(f"{parts[0]}.py")
    return found


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(PACKAGE / name)
    return seen


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_the_code_it_imports(stage: str) -> None:
    spec = STAGES[stage]
    command = spec["cmd"].split()[1]  # `retinopathy <command> ...`
    module = COMMANDS[command][0].removeprefix("retinopathy.") + ".py"
    listed = {Path(dep).name for dep in spec["deps"] if str(dep).startswith("src/retinopathy/")}
    assert listed == import_closure(module) - NOT_DEPS
