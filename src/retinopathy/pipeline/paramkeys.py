"""Which params keys a stage reads: its declaration, and the static check that holds the code to it.

Each DVC stage module declares ``PARAMS``, a literal tuple of the keys it reads
(``"train.lr"``, or a whole section: ``"augment"``). Only stage modules read params:
library code takes the values it uses as arguments (plain values, or small settings
objects such as ``Switches``), so every read is in the stage's own source, where
:func:`undeclared_reads` finds it without running anything. ``python -m
retinopathy.pipeline.dvcyaml --check`` (the tests and the pre-commit hook run it) reports a
read that the declaration lacks, and writes each stage's ``params:`` in dvc.yaml from its
declaration, less :data:`SPEED_ONLY`.

What the check follows, in a stage module: ``params`` (a parameter of that name, one
annotated ``Params``, or a ``load_params(...)`` or ``stage_params(...)`` call) and the names bound to it or to
one of its sections (``train = params.train``; a parameter annotated ``TrainParams``).
A read is ``params.model``, ``params.train.lr``, ``train.lr``, or a section's method
(``train.epochs_for(model)`` reads ``train.epochs``: the method's own ``self.<key>``
reads, from core/config.py); a section passed whole reads all of it. ``params.to_dict()``
is the whole file as a record (a checkpoint keeps it), not a read of a key. Params
passed whole to a function of another module would leave the check's sight, so that is
reported too: pass the values the function uses instead.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from retinopathy.core.config import Params
from retinopathy.core.errors import RetinopathyError

# Keys that change how fast a stage runs, never what it computes: DataLoader worker
# processes (each image is decoded the same in any of them; the order is the sampler's),
# and the folder of the decoded-pixel cache (its pixels are the decoded pixels, byte for
# byte). A stage may read them without listing them in dvc.yaml.
SPEED_ONLY = ("data.num_workers", "data.cache_dir")

# Params' fields: a section (a dataclass of keys) or a top-level key (`model`).
_SECTIONS: dict[str, type | None] = {
    name: (kind if isinstance(kind, type) and dataclasses.is_dataclass(kind) else None)
    for name, kind in typing.get_type_hints(Params).items()
    if name != "source"
}
# Not reads of a key: the whole file as a record, and where it came from (for messages).
_NOT_READS = frozenset({"to_dict", "source"})


def _section_fields(section: str) -> list[str] | None:
    """The keys of section ``section`` (None: ``section`` is a top-level key such as ``model``)."""
    cls = _SECTIONS[section]
    return None if cls is None else [field.name for field in dataclasses.fields(cls)]


def known_keys() -> list[str]:
    """Every key a declaration may name: each section, each top-level key and each ``section.key``."""
    found: list[str] = []
    for section in _SECTIONS:
        found.append(section)
        found += [f"{section}.{name}" for name in _section_fields(section) or []]
    return found


def check_declaration(keys: Iterable[str], owner: str) -> None:
    """Refuse a declaration that names a key params.yaml does not have.

    Raises:
        RetinopathyError: naming ``owner`` (the declaring module), the key and the known keys.
    """
    known = set(known_keys())
    for key in keys:
        if key not in known:
            raise RetinopathyError(
                f"{owner}: PARAMS names `{key}`, which is no key of params.yaml "
                f"(config.Params); known: {', '.join(sorted(known))}"
            )


def results_keys(keys: Iterable[str]) -> list[str]:
    """The keys of a declaration that decide a stage's results: all but :data:`SPEED_ONLY`, in order."""
    return [key for key in keys if key not in SPEED_ONLY]


# ------------------------------------------------------------------ the static check


@dataclass(frozen=True)
class Read:
    """One read of params in a stage's source.

    Attributes:
        line: Where (1-based).
        key: The key read: ``section.key``, a top-level key, or a whole section.
        leaves: Set instead of ``key`` when all of params goes to a function of another
            module, named here, whose reads the check cannot see.
    """

    line: int
    key: str = ""
    leaves: str = ""


def _method_reads() -> dict[str, dict[str, list[str]]]:
    """Per section, what each of its methods and properties reads: the ``self.<key>`` in its body."""
    tree = ast.parse(Path(inspect.getfile(Params)).read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    found: dict[str, dict[str, list[str]]] = {}
    for section, cls in _SECTIONS.items():
        if cls is None or cls.__name__ not in classes:
            continue
        fields = set(_section_fields(section) or [])
        found[section] = {
            method.name: sorted(
                {
                    node.attr
                    for node in ast.walk(method)
                    if isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                    and node.attr in fields
                }
            )
            for method in classes[cls.__name__].body
            if isinstance(method, ast.FunctionDef)
        }
    return found


_PARAMS = "params"  # the kind of an expression that is all of params


class _Scope:
    """The names of one function (or the module) that stand for params or one of its sections."""

    def __init__(self, node: ast.AST, outer: dict[str, str]) -> None:
        self.kinds = dict(outer)
        self.bound: set[int] = set()  # the ids of `params.<section>` nodes that are bound to a name
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                kind = _annotated_kind(arg.annotation) or (_PARAMS if arg.arg == "params" else None)
                if kind is not None:
                    self.kinds[arg.arg] = kind
                else:
                    self.kinds.pop(arg.arg, None)
        for child in _own_nodes(node):  # in source order, so that a later binding wins
            if isinstance(child, ast.Assign):
                for target in child.targets:
                    self._bind(target, child.value)

    def _bind(self, target: ast.expr, value: ast.expr) -> None:
        if (
            isinstance(target, ast.Tuple)
            and isinstance(value, ast.Tuple)
            and len(target.elts) == len(value.elts)
        ):
            for each_target, each_value in zip(target.elts, value.elts, strict=True):
                self._bind(each_target, each_value)
        elif isinstance(target, ast.Name):
            kind = self.kind(value)
            if kind is not None:
                self.kinds[target.id] = kind
                if isinstance(value, ast.Attribute):
                    self.bound.add(id(value))
            else:
                self.kinds.pop(target.id, None)

    def kind(self, node: ast.expr) -> str | None:
        """``params`` (all of it), a section's name, or None (anything else, or a key's value)."""
        if isinstance(node, ast.Name):
            return self.kinds.get(node.id)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("load_params", "stage_params")
        ):
            return _PARAMS
        if isinstance(node, ast.Attribute) and self.kind(node.value) == _PARAMS:
            return node.attr if _SECTIONS.get(node.attr) is not None else None
        return None


def _annotated_kind(annotation: ast.expr | None) -> str | None:
    """``params`` for a ``Params`` annotation, a section's name for its class (``TrainParams``)."""
    name = annotation.id if isinstance(annotation, ast.Name) else getattr(annotation, "value", None)
    if name == "Params":
        return _PARAMS
    for section, cls in _SECTIONS.items():
        if cls is not None and name == cls.__name__:
            return section
    return None


def _own_nodes(node: ast.AST) -> list[ast.AST]:
    """The nodes of ``node``'s body, not those of the functions defined in it, in source order."""
    found: list[ast.AST] = []
    todo = list(ast.iter_child_nodes(node))
    while todo:
        child = todo.pop(0)
        found.append(child)
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            todo[:0] = list(ast.iter_child_nodes(child))
    return sorted(found, key=lambda each: (getattr(each, "lineno", 0), getattr(each, "col_offset", 0)))


def reads(path: Path) -> list[Read]:
    """Every read of params in the stage module's source at ``path`` (see the module's docstring)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    methods = _method_reads()
    parents = {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found: list[Read] = []

    def visit(scope_node: ast.AST, outer: dict[str, str]) -> None:
        scope = _Scope(scope_node, outer)
        for node in _own_nodes(scope_node):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                visit(node, scope.kinds)
            elif isinstance(node, ast.expr):
                found.extend(_read(node, scope, parents, own, methods))

    visit(tree, {})
    return found


def _read(
    node: ast.expr,
    scope: _Scope,
    parents: dict[int, ast.AST],
    own: set[str],
    methods: dict[str, dict[str, list[str]]],
) -> list[Read]:
    """The reads that ``node`` itself makes (its parts are visited on their own)."""
    parent = parents.get(id(node))
    if isinstance(node, ast.Attribute):
        owner = scope.kind(node.value)
        if owner == _PARAMS and node.attr not in _NOT_READS and _SECTIONS.get(node.attr) is None:
            return [Read(node.lineno, node.attr)]  # a top-level key: `params.model`
        if owner not in (None, _PARAMS):  # a section's key, or a method that reads some
            if node.attr in methods.get(owner, {}):
                return [Read(node.lineno, f"{owner}.{key}") for key in methods[owner][node.attr]]
            return [Read(node.lineno, f"{owner}.{node.attr}")]
    kind = scope.kind(node)
    if kind is None or (isinstance(parent, ast.Attribute) and parent.value is node):
        return []  # not params, or read by the attribute after it
    if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        return []  # a name being bound
    if id(node) in scope.bound or (isinstance(parent, ast.Assign) and parent.value is node):
        return []  # bound to a name: its reads are where that name is read
    if isinstance(parent, ast.Tuple) and isinstance(parents.get(id(parent)), ast.Assign):
        return []
    call = parents.get(id(parent)) if isinstance(parent, ast.keyword) else parent
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in own:
        return []  # to a function of this module, whose reads are checked where they are
    if kind == _PARAMS:
        name = ast.unparse(call.func) if isinstance(call, ast.Call) else "another expression"
        return [Read(node.lineno, leaves=name)]
    return [Read(node.lineno, kind)]  # a section, passed on whole: all of it is read


def undeclared_reads(path: Path, declared: Iterable[str]) -> list[str]:
    """Each read in the stage module at ``path`` that ``declared`` (its PARAMS) does not cover, in words.

    :data:`SPEED_ONLY` keys are always covered.
    """
    covered = set(declared) | set(SPEED_ONLY)
    problems = []
    for read in reads(path):
        if read.leaves:
            problems.append(
                f"{path}:{read.line}: passes all of params to {read.leaves}, whose reads no check can "
                "see; pass it the values it uses"
            )
        elif read.key not in covered and read.key.split(".")[0] not in covered:
            problems.append(
                f"{path}:{read.line}: reads params key `{read.key}`, which PARAMS does not declare; add "
                f'"{read.key}" to PARAMS, then run `python -m retinopathy.pipeline.dvcyaml` so that dvc.yaml '
                "lists it and DVC reruns the stage when it changes"
            )
    return problems
