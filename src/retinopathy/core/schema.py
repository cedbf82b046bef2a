"""The one typed layer: plain data (JSON, YAML, a torch file's plain fields) -> a checked frozen dataclass.

Every record the project reads back goes through :func:`parse`: params.yaml
(:mod:`retinopathy.core.config`), the JSON records between stages
(:mod:`retinopathy.core.records`: status, info, summary, import, screening and
fusion), the weights manifest (:mod:`retinopathy.models.manifest`), the `fuse`
stage's blend and a checkpoint's non-tensor fields. A record is a frozen
dataclass, and what each field allows is declared once, on the field:

- its type, checked from the annotation: ``str``, ``bool``, ``int``, ``float``, ``None``,
  ``list[T]``, ``dict[str, T]``, a nested record, and unions of them (``Figure | None``);
- and the marks of ``Annotated[T, ...]``: :class:`OneOf` (a choice), :class:`Between` (bounds),
  :class:`Positive`, :class:`Even`, :class:`NotEmpty`, :class:`Keys` (a mapping's exact keys),
  :data:`PerModel` (``{default: v, <model>: v}``), :class:`FromBool` (YAML's ``on``/``off``),
  and :class:`Say` (how params messages word what the key must be);
- and always: an int or a float is never a bool, a float is finite.

Relations between fields (``nesterov`` needs ``momentum > 0``) are checked by the
record itself, in ``__post_init__``, raising :class:`Invalid` (or ValueError).

Two kinds of file are read, and the reader treats them as what they are:

- written by this program (records, manifests; ``by_hand=False``): a number stays as
  it was written (an integer stays one, so that writing it again changes no byte), and
  every int is a count (an epoch, a grade, a seed): never negative;
- written by people (params.yaml, ``by_hand=True``): a float field takes an integer and
  number text (``dvc exp run -S lr=1e-10`` writes a float YAML 1.1 reads as a string) and
  holds a float; each int declares its own bounds.

A failure is an :class:`Invalid`: the dotted key, and the words of either kind of
message (records: ``'epochs' is 0, not at least 1``; params: ``must be an integer
>= 1 and at most 1,000, got 0``); the caller adds the file and the fix.

Why frozen dataclasses and this reader rather than pydantic: every record here was
already a frozen dataclass whose writer (``dataclasses.asdict``) gives the files
their exact bytes, and the messages (file, key, fix, in the two wordings above)
are what users and tests read. Pydantic would need a translation of each of its
errors back into those words, its lax mode turns ``"1"`` into 1 (checks become
coercions), its strict mode refuses 1 for a float field, and it is DVC's
dependency, not ours (one more package to pin for what this one module does, importing
nothing above core/).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union

from retinopathy.core.registry import DEFAULT, MODELS, unknown_keys

Record = TypeVar("Record")
T = TypeVar("T")

EXCERPT = 80  # characters of a user's value that a message quotes
# A number as `dvc exp run -S key=1e-10` writes it: YAML 1.1 reads a float without a
# dot ("1e-10") as a string, so in a file written by hand a float field takes such text.
NUMBER_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# A field with this metadata is not read from the data (Params.source: where the data came from).
NOT_READ = {"read": False}

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 6


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """A short ``repr`` of a user's value for a message: at most ``limit`` characters, whatever its size.

    ``reprlib`` looks at only a few levels and items, so the work is bounded too (a
    value built from YAML aliases may be billions of items long once expanded).
    """
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer too long to print (Python's 4300-digit limit)
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    text = text if len(text) <= limit else f"{text[:limit]}..."
    return f"{text} ({len(value):,} characters)" if isinstance(value, str) and len(value) > 60 else text


def shown(value: Any) -> str:
    """``value`` as JSON, cut short, for a record's message."""
    try:
        return json.dumps(value)[:80]
    except (ValueError, RecursionError):
        return repr(value)[:80]


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,60}")


def key_text(key: Any) -> str:
    """A key as a message shows it: a plain name as it is, anything else as a short ``repr``."""
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else excerpt(key, 60)


class Invalid(ValueError):
    """A value that its field does not allow: where, and the words of both kinds of message.

    ``str(error)`` is the records' wording (``'epochs' is 0, not at least 1``);
    ``said`` the params' wording after the key (``must be an integer >= 1, got 0``).

    Attributes:
        key: The dotted key (``patients.count``, ``history[1]``, ``train.epochs.resnet50``; ``""``:
            the whole record).
        said: What the params message says after the key.
        final: Whether ``said`` is whole (a missing key, a relation between keys): a :class:`Say`
            around it does not reword it.
        shallow: The value is not even of the field's type (another option of a union may fit).
    """

    def __init__(self, key: str, text: str, said: str, final: bool = False, shallow: bool = False) -> None:
        super().__init__(text)
        self.key, self.said, self.final, self.shallow = key, said, final, shallow


def refuse(key: str, said: str, text: str | None = None) -> Invalid:
    """A relation between fields that does not hold, for a record's ``__post_init__``.

    Args:
        key: The key that is refused, relative to the record (``nesterov``).
        said: What is wrong with it, after the key (``needs train.momentum > 0``).
        text: The records' wording (default: the key, then ``said``).
    """
    return Invalid(key, text or f"{key!r} {said}", said, final=True)


def _must(value: Any, words: str, sep: str = ",") -> str:
    return f"must be {words}{sep} got {excerpt(value)}"


# ------------------------------------------------------------------ what a field allows

# The marks compare by identity (eq=False): typing caches ``Annotated[float, mark]`` by equal
# metadata, and Between(0, 1) would otherwise stand in for an equal Between(0.0, 1.0) whose
# message prints its bounds as written ("at most 1.0").


@dataclass(frozen=True, eq=False)
class OneOf:
    """``Annotated[str, OneOf(contract.ARMS)]``: the field holds one of ``values``."""

    values: tuple[Any, ...]
    sep = ";"

    def words(self, base: Any) -> str:
        return f"one of {', '.join(map(str, self.values))}"

    def check(self, value: Any, key: str, base: Any) -> None:
        if value not in self.values:
            raise Invalid(
                key,
                f"{key!r} is {shown(value)}, not {self.words(base)}",
                _must(value, self.words(base), self.sep),
            )


@dataclass(frozen=True, eq=False)
class Between:
    """``Annotated[float, Between(0, 1)]``: a number within bounds (None: no bound on that side).

    ``open_low``/``open_high``: the bound itself is left out. ``why``: what a params message adds
    after the upper bound (``" (over all GPUs together)"``); ``words``: the params wording whole.
    """

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    why: str = ""
    said: str | None = None
    sep = ","

    def words(self, base: Any) -> str:
        if self.said is not None:
            return self.said
        if base is int:
            return f"an integer >= {self.low}" + (
                "" if self.high is None else f" and at most {self.high:,}{self.why}"
            )
        if self.high is None:
            return f">= {self.low}"
        if self.open_high:
            return f"in [{self.low}, {self.high})"
        return f">= {self.low} and at most {self.high}{self.why}"

    def _record_words(self) -> str:
        if (self.low, self.high, self.open_low, self.open_high) == (0, 1, False, False):
            return "a fraction in [0, 1]"
        if self.high is None:
            return f"at least {self.low}" if not self.open_low else f"more than {self.low}"
        if self.low is None:
            return f"at most {self.high}" if not self.open_high else f"less than {self.high}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"

    def check(self, value: Any, key: str, base: Any) -> None:
        low, high = self.low, self.high
        if (
            (low is not None and (value < low or (self.open_low and value == low)))
            or (high is not None and (value > high or (self.open_high and value == high)))
        ):  # fmt: skip
            raise Invalid(
                key,
                f"{key!r} is {shown(value)}, not {self._record_words()}",
                _must(value, self.words(base)),
            )


@dataclass(frozen=True, eq=False)
class Positive:
    """``Annotated[float, Positive()]``: more than 0 (after a :class:`Between` from 0 has said the rest)."""

    sep = ","

    def words(self, base: Any) -> str:
        return "> 0"

    def check(self, value: Any, key: str, base: Any) -> None:
        if not value > 0:
            raise Invalid(key, f"{key!r} is {shown(value)}, not more than 0", _must(value, "> 0"))


@dataclass(frozen=True, eq=False)
class Even:
    """``Annotated[int, Even()]``: an even number (the demo's images: two eyes per patient)."""

    sep = ","

    def words(self, base: Any) -> str:
        return "an even integer"

    def check(self, value: Any, key: str, base: Any) -> None:
        if value % 2:
            raise Invalid(key, f"{key!r} is {shown(value)}, not even", _must(value, self.words(base)))


@dataclass(frozen=True, eq=False)
class NotEmpty:
    """``Annotated[str, NotEmpty()]``: text that is not empty."""

    sep = ","

    def words(self, base: Any) -> str:
        return "text that is not empty"

    def check(self, value: Any, key: str, base: Any) -> None:
        if not value:
            raise Invalid(key, f"{key!r} is empty", _must(value, self.words(base)))


@dataclass(frozen=True, eq=False)
class Interval:
    """``Annotated[list[float], Interval()]``: ``[low, high]``, two numbers with low <= high."""

    sep = ","

    def words(self, base: Any) -> str:
        return "[low, high] with low <= high"

    def check(self, value: Any, key: str, base: Any) -> None:
        if len(value) != 2 or value[0] > value[1]:
            raise Invalid(
                key, f"{key!r} is {shown(value)}, not {self.words(base)}", _must(value, self.words(base))
            )


@dataclass(frozen=True, eq=False)
class Keys:
    """``Annotated[dict[str, float], Keys(a, b)]``: a mapping whose keys are exactly ``a``'s or ``b``'s.

    Checked before the values. ``ordered``: the mapping is read in the order of the matching set
    (params.yaml's operating points, whichever order they are written in).
    """

    sets: tuple[tuple[str, ...], ...]
    ordered: bool = False
    sep = ","

    def __init__(self, *sets: tuple[str, ...], ordered: bool = False) -> None:
        object.__setattr__(self, "sets", sets)
        object.__setattr__(self, "ordered", ordered)

    def words(self, base: Any) -> str:
        return " or ".join(f"a mapping of exactly {', '.join(keys) or 'no keys'}" for keys in self.sets)

    def before(self, value: Any, key: str) -> Any:
        if not isinstance(value, dict):
            return value  # the type check says what it is instead
        for keys in self.sets:
            if set(value) == set(keys):
                return {name: value[name] for name in keys} if self.ordered else value
        allowed = {name for keys in self.sets for name in keys}
        extra = [name for name in value if name not in allowed]
        closest = min(self.sets, key=lambda keys: len(set(keys) ^ set(value)))
        missing = [name for name in closest if name not in value]
        problem = (
            f"has the key(s) {', '.join(map(repr, extra))}, which it may not have"
            if extra
            else f"lacks {', '.join(map(repr, missing))}"
        )
        raise Invalid(key, f"{key!r} {problem}", _must(value, self.words(dict)))


@dataclass(frozen=True, eq=False)
class ModelKeys:
    """A per-model mapping's keys (:data:`PerModel`): model names and ``default``, at least one.

    Checked before the values, and its message is whole: no :class:`Say` rewords it.
    """

    def before(self, value: Any, key: str) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = unknown_keys(value)
        if unknown or not value:
            where, problem = (
                (f"{key}.{key_text(unknown[0])}", "is not a model's name") if unknown else (key, "is empty")
            )
            said = (
                f"{problem}; a per-model mapping takes `{DEFAULT}` (the value of the models it does not "
                f"name) and model names: {', '.join(MODELS)} (e.g. `{{{DEFAULT}: ..., {MODELS[-1]}: ...}}`); "
                "or write one value for every model"
            )
            raise Invalid(where, f"{where!r} {problem}", said, final=True)
        return value


# A per-model param: one value for every model, or {default: v, <model>: v} (registry.for_model).
PerModel = Union[T, Annotated[dict[str, T], ModelKeys()]]  # noqa: UP007 (a generic alias: PerModel[int])


@dataclass(frozen=True, eq=False)
class FromBool:
    """``Annotated[str, FromBool("on", "off"), OneOf(SWITCHES)]``: YAML reads ``on``/``off`` as
    booleans; this takes them back as the words."""

    true: str
    false: str

    def before(self, value: Any, key: str) -> Any:
        if isinstance(value, bool):
            return self.true if value else self.false
        return value


@dataclass(frozen=True, eq=False)
class Say:
    """How a params message words what the key must be, for every failure of the value and inside it
    (``Say("a target in (0, 1] (a share: 0.9, not 90)")``); records' messages are unchanged."""

    words: str
    sep: str = ","


# ------------------------------------------------------------------ the reader


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


_TYPE_WORDS = {float: "a number", int: "an integer", bool: "true or false", str: "text", type(None): "null"}


def _type_words(hint: Any) -> str:
    if typing.get_origin(hint) is Annotated:
        return _type_words(typing.get_args(hint)[0])
    if typing.get_origin(hint) in (Union, types.UnionType):
        return _type_words(typing.get_args(hint)[0])
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return "a mapping of keys"
    origin = typing.get_origin(hint)
    return "a list" if origin is list else "a mapping" if origin is dict else _TYPE_WORDS.get(hint, str(hint))


def _wrong_type(value: Any, hint: Any, key: str) -> Invalid:
    return Invalid(
        key,
        f"{key!r} is {shown(value)}, not of type {_type_name(hint)}",
        _must(value, _type_words(hint)),
        shallow=True,
    )


def _annotated(value: Any, hint: Any, key: str, by_hand: bool) -> Any:
    base, *marks = typing.get_args(hint)
    worded = [mark for mark in marks if hasattr(mark, "words") and not isinstance(mark, Say)]
    say = next((mark for mark in marks if isinstance(mark, Say)), None)
    try:
        raw = value
        for mark in marks:
            if hasattr(mark, "before"):
                raw = mark.before(raw, key)
        converted = _convert(raw, base, key, by_hand, cast=False)
        for mark in marks:
            if hasattr(mark, "check"):
                mark.check(converted, key, base)
        return _cast(converted, base, key, by_hand)
    except Invalid as error:
        if error.final:
            raise
        if say is not None:  # params: one wording for every failure of this value
            shallow = error.shallow and error.key == key  # another option of a union may still fit
            raise Invalid(key, str(error), _must(value, say.words, say.sep), True, shallow) from None
        if error.shallow and error.key == key and worded and base is not float:
            # params: an int or a choice of another type is worded by its bounds or choices
            words = worded[0].words(base)
            raise Invalid(key, str(error), _must(value, words, worded[0].sep), shallow=True) from None
        raise


def _union(value: Any, options: tuple[Any, ...], key: str, by_hand: bool) -> Any:
    errors: list[Invalid] = []
    for option in options:
        try:
            return _convert(value, option, key, by_hand)
        except Invalid as error:
            errors.append(error)
    # The words of the option the value was meant for: the first that it is at least of the type of
    # (`Figure | None` given a broken figure: what is wrong in it), else the first option's.
    raise next((error for error in errors if not (error.shallow and error.key == key)), errors[0])


def _cast(value: Any, hint: Any, key: str, by_hand: bool) -> Any:
    """A float field of a file written by hand holds a float (an int of 400 digits is no float)."""
    if hint is float and by_hand and not isinstance(value, float):
        try:
            return float(value)
        except OverflowError:
            raise Invalid(
                key, f"{key!r} is {shown(value)}, not a finite number", _must(value, "a finite number")
            ) from None
    return value


def _convert(value: Any, hint: Any, key: str, by_hand: bool, cast: bool = True) -> Any:
    """``value`` as the annotation ``hint`` says (nested records built), or :class:`Invalid` saying where."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _annotated(value, hint, key, by_hand)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key, by_hand)
    if origin in (Union, types.UnionType):
        return _union(value, args, key, by_hand)
    if origin is list and isinstance(value, list):
        return [_convert(item, args[0], f"{key}[{i}]", by_hand) for i, item in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {
            name: _convert(item, args[1], f"{key}.{key_text(name) if by_hand else name}", by_hand)
            for name, item in value.items()
        }
    if hint is None or hint is type(None):
        if value is None:
            return value
    elif hint is Any:
        return value
    elif hint is float:
        if by_hand and isinstance(value, str) and NUMBER_TEXT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid(key, f"{key!r} is {value}, not a finite number", _must(value, "a finite number"))
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _cast(value, hint, key, by_hand) if cast else value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0 and not by_hand:
                raise Invalid(
                    key,
                    f"{key!r} is {value}, but it is a count (or an epoch, a grade, a seed): never negative",
                    _must(value, "a count, never negative"),
                )
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise _wrong_type(value, hint, key)


def _build(cls: type[Record], raw: Any, where: str, by_hand: bool) -> Record:
    """A ``cls`` from the mapping ``raw``: exactly its fields (those with a default may be absent),
    each of its annotated type and within what its annotation allows."""
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise Invalid(
            where,
            f"{where or 'the file'} is not a JSON object",
            _must(raw, "a mapping of keys"),
            shallow=True,
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [field for field in dataclasses.fields(cls) if field.metadata.get("read", True)]  # type: ignore[arg-type]
    names = [field.name for field in fields]
    optional = {
        field.name
        for field in fields
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    }
    missing = [name for name in names if name not in raw and name not in optional]
    # Keys may be of any type YAML reads (`1: x` is an integer key): ordered by their text.
    extra = sorted((key for key in raw if key not in names), key=key_text)
    if missing and (not extra or not by_hand):  # by hand, a misspelt key is named before the one it misses
        said = (
            "is missing; every key must be set (the project's params.yaml lists each one with its "
            "default and what it does)"
        )
        raise Invalid(
            prefix + missing[0],
            f"the key {prefix}{missing[0]!r} is missing"
            if len(missing) == 1
            else f"the keys {', '.join(repr(prefix + name) for name in missing)} are missing",
            said,
            final=True,
        )
    if extra:
        kinds = {
            int: "a number, not",
            float: "a number, not",
            bool: "true or false, not",
            type(None): "null, not",
        }
        kind = "" if isinstance(extra[0], str) else f" ({kinds.get(type(extra[0]), 'not')} a name)"
        unknown = [key for key in raw if key not in names]  # as written, for the records' message
        raise Invalid(
            prefix + key_text(extra[0]),
            f"it has the key(s) {', '.join(repr(prefix + str(key)) for key in unknown)}, which "
            f"a {cls.__name__} does not",
            f"is not a known key{kind}; allowed here: {', '.join(names)}",
            final=True,
        )
    values = {name: _convert(raw[name], hints[name], prefix + name, by_hand) for name in names if name in raw}
    try:
        return cls(**values)
    except Invalid as error:  # a relation between its fields (__post_init__), keyed within the record
        key = prefix + error.key
        text = f"{where}: {error}" if where else str(error)
        raise Invalid(key, text, error.said, final=True) from None
    except ValueError as error:
        raise Invalid(where, f"{where or 'the record'}: {error}", str(error), final=True) from None


def parse(cls: type[Record], raw: Any, where: str = "", *, by_hand: bool = False) -> Record:
    """A ``cls`` (a frozen dataclass) from plain data, checked from its annotations.

    Args:
        cls: The record.
        raw: The plain data (a JSON object, params.yaml's mapping, a torch file's dict).
        where: The key of ``raw`` in the file, for the messages (``""``: the whole file).
        by_hand: A file people write (params.yaml): a float field takes an int or number text and
            holds a float, and ints are not taken to be counts (see the module's docstring).

    Raises:
        Invalid: naming the key that is missing, unknown, of the wrong type or not allowed.
    """
    return _build(cls, raw, where, by_hand)
