"""Which of the project's source files a module runs: its import closure, read from the source.

dvc.yaml lists, for each stage, the files of its closure as code deps (a test
checks the lists), and a checkpoint's fingerprint hashes the closure of the
`train` stage, so "the training code" means the same files in both places.

Modules that change no stage's results are left out of both: error messages
(errors), atomic writes (files) and the dispatcher (cli). config.py is in: it
turns params.yaml into values (``AugmentParams.active``, ``TrainParams.epochs_for``
and the other per-model choices decide what a stage computes). Package
``__init__.py`` files hold only docstrings (a test checks it) and are left out too.
``python -m retinopathy.pipeline.dvcyaml`` writes these lists into dvc.yaml.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import retinopathy

PACKAGE = Path(retinopathy.__file__).resolve().parent  # src/retinopathy
NOT_DEPS = frozenset({"core/errors.py", "core/files.py", "cli.py"})


def module_file(name: str) -> Path | None:
    """The source file of module ``retinopathy.x.y`` (``x/y.py`` or ``x/y/__init__.py``), if any."""
    parts = name.split(".")
    if parts[0] != "retinopathy":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """The ``retinopathy`` modules that the source file ``path`` imports (top level and in functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("retinopathy"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.startswith("retinopathy")
        ):
            found.add(node.module)
            # `from retinopathy.engine import loops` imports the submodule retinopathy.engine.loops.
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if module_file(f"{node.module}.{alias.name}") is not None
            )
    return {name for name in found if module_file(name) is not None}


BUILD = "retinopathy.models.build"  # imports each architecture's module by its registry record's name


def architecture_modules() -> set[str]:
    """The modules that ``models/build.py`` imports by name: every registry record's builder module."""
    from retinopathy.core.registry import REGISTRY  # torch-free

    return {f"retinopathy.models.{record.module}" for record in REGISTRY.values()}


def import_closure(module: str) -> set[Path]:
    """The source files of ``module`` and of every ``retinopathy`` module it imports, directly or not.

    ``models/build.py`` counts as importing every architecture module of the registry.
    """
    seen: set[Path] = set()
    todo = [module]
    build = module_file(BUILD)
    while todo:
        path = module_file(todo.pop())
        if path is not None and path not in seen:
            seen.add(path)
            todo += imported_modules(path)
            if path == build:
                todo += architecture_modules()
    return seen


def code_deps(module: str) -> list[str]:
    """The closure of ``module`` that decides its results, as sorted paths relative to ``src/``.

    E.g. ``retinopathy/stages/train.py``: the form dvc.yaml uses after ``src/``.
    """
    return sorted(
        path.relative_to(PACKAGE.parent).as_posix()
        for path in import_closure(module)
        if path.name != "__init__.py" and path.relative_to(PACKAGE).as_posix() not in NOT_DEPS
    )


def code_digest(module: str) -> str:
    """SHA-256 over the paths and contents of :func:`code_deps` of ``module``."""
    digest = hashlib.sha256()
    for name in code_deps(module):
        digest.update(name.encode())
        digest.update((PACKAGE.parent / name).read_bytes())
    return digest.hexdigest()
