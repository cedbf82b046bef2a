"""Which params keys a stage reads: its declaration, and the guard that holds it to that.

Each DVC stage module declares ``PARAMS``, a literal tuple of the keys it reads
(``"train.lr"``, or a whole section: ``"augment"``), and its ``main`` reads
params.yaml through :func:`restrict`. A key read that the declaration lacks is a
:class:`~retinopathy.core.errors.RetinopathyError` at that very read, in the stage
and in every test that runs it, so the declaration cannot fall behind the code.
``python -m retinopathy.pipeline.dvcyaml`` writes each stage's ``params:`` in dvc.yaml from
its declaration, less :data:`SPEED_ONLY`, and ``--check`` compares them.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

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


def _refuse(owner: str, key: str) -> RetinopathyError:
    return RetinopathyError(
        f'{owner} reads params key `{key}`, which its PARAMS does not declare; add "{key}" to PARAMS '
        f"in src/{owner.replace('.', '/')}.py, then run `python -m retinopathy.pipeline.dvcyaml` so that "
        "dvc.yaml lists it and DVC reruns the stage when it changes"
    )


class _Guard:
    """Mixed into a params dataclass: reading an undeclared field raises instead of answering."""

    def __getattribute__(self, name: str) -> Any:
        guard = object.__getattribute__(self, "__dict__").get("_guard")
        if guard is not None:
            owner, prefix, blocked = guard
            if name in blocked:
                raise _refuse(owner, f"{prefix}{name}")
            if name == "to_dict":  # the whole file, as a record (checkpoints), not a read
                return object.__getattribute__(self, "__dict__")["_whole"].to_dict
        return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        owner, prefix, blocked = object.__getattribute__(self, "__dict__")["_guard"]
        return f"<{type(self).__name__} as {owner} reads it: not {', '.join(sorted(blocked))}>"


def _guard_class(cls: type) -> type:
    # At module level under its own name, so that a guarded object pickles like the plain one.
    namespace = {
        "__module__": __name__,
        "__repr__": _Guard.__repr__,
        "__eq__": object.__eq__,
        "__hash__": object.__hash__,
    }
    guarded = type(f"Guarded{cls.__name__}", (_Guard, cls), namespace)
    globals()[guarded.__name__] = guarded
    return guarded


_GUARDED: dict[type, type] = {
    cls: _guard_class(cls) for cls in (Params, *(kind for kind in _SECTIONS.values() if kind is not None))
}


def _guarded(value: Any, owner: str, prefix: str, blocked: set[str], whole: Any) -> Any:
    cls = _GUARDED[type(value)]
    copy: Any = object.__new__(cls)
    state = object.__getattribute__(value, "__dict__")
    object.__getattribute__(copy, "__dict__").update(state)
    object.__getattribute__(copy, "__dict__")["_guard"] = (owner, prefix, frozenset(blocked))
    object.__getattribute__(copy, "__dict__")["_whole"] = whole
    return copy


def restrict(params: Params, keys: Iterable[str], owner: str) -> Params:
    """``params`` that answer only the keys of ``keys``: reading any other raises.

    Args:
        params: From :func:`retinopathy.core.config.load_params`.
        keys: The stage's ``PARAMS``: ``section.key`` names, whole sections, top-level keys.
        owner: The declaring module's name (``__name__``), for the message.

    Raises:
        RetinopathyError: if ``keys`` names a key params.yaml does not have; and later,
            from the returned object, at the first read of a key outside ``keys``.
    """
    keys = list(keys) + list(SPEED_ONLY)
    check_declaration(keys, owner)
    declared = set(keys)
    if isinstance(params, _Guard):  # restricted already: restrict the whole file anew
        params = object.__getattribute__(params, "__dict__")["_whole"]
    sections: dict[str, Any] = {}
    for section in _SECTIONS:
        fields = _section_fields(section)
        if fields is None or section in declared:
            continue
        blocked = {name for name in fields if f"{section}.{name}" not in declared}
        sections[section] = _guarded(getattr(params, section), owner, f"{section}.", blocked, params)
    top_blocked = {name for name, kind in _SECTIONS.items() if kind is None and name not in declared}
    out = _guarded(params, owner, "", top_blocked, params)
    object.__getattribute__(out, "__dict__").update(sections)
    return out
