"""The course layout's label files -> records, with every line validated.

The course layout is one folder holding ``<name>.jpeg`` images and four
header-less CSVs with one value per line (see ``SPLIT_FILES``): line *i* of
``*_img.csv`` names an image and line *i* of ``*_label.csv`` is its grade 0-4.

The course's template read these with ``pandas.read_csv`` and its default
header row, which silently dropped the first image of each split. Here every
line is a record. What we accept and normalise (a header row, a UTF-8 BOM,
CRLF line endings, trailing blank lines, names listed with ``.jpeg``) is
returned as human-readable notes; everything else is a ``RetinopathyError``
that names the file and the 1-based line.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retinopathy.core.contract import NUM_GRADES
from retinopathy.core.errors import RetinopathyError, where
from retinopathy.core.files import NAME_MAX

SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train_img.csv", "train_label.csv"),
    "test": ("test_img.csv", "test_label.csv"),
}
IMAGE_SUFFIX = ".jpeg"

# First lines of an image list that are column names, not images (Kaggle's
# trainLabels.csv says "image", APTOS says "id_code").
_IMAGE_HEADERS = frozenset(
    {"image", "images", "img", "name", "id", "id_code", "image_id", "image_name", "filename"}
)
# "Clearly a word" (label, level, diagnosis, image_name): letters only, so a
# first line such as "-1", "2.0" or "2576_right" is never taken for a header.
_WORD = re.compile(r"[A-Za-z][A-Za-z_ -]*")
_GRADES = {str(grade): grade for grade in range(NUM_GRADES)}  # a grade's text: one digit
# What an image name may be, decided once where names are first read (prepare's lists,
# import-kaggle's trainLabels.csv, predict's photographs and lists): ASCII letters,
# digits and `_ - . +`, starting with a letter or a digit. Every public set's names fit
# (EyePACS 2576_right, APTOS 000c1434d8d7, IDRiD IDRiD_001, Messidor
# 20051019_38557_0100_PP, DDR 007-0004-000), and a name then never carries markup
# (`<!--`, `<script>`, `|`, backticks, `$...$`) into the CSVs that `dvc plots show`
# draws, a Markdown table or a figure's title, nor a path separator, a quote, a CSV
# separator, a space or a control character.
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
NAME_RULE = (
    "a name holds only ASCII letters, digits and _ - . + and starts with a letter or a digit "
    "(e.g. 2576_right, IDRiD_001, 007-0004-000)"
)
# Image files besides the course layout's .jpeg (a listed name ending so is refused; quality labels drop it).
OTHER_EXTENSIONS = (".jpg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
MAX_LISTED = 20
# EyePACS names a photograph `<patient>_left` or `<patient>_right`. The eye is read in any case
# (`_Left`, `_RIGHT`): a case-sensitive parse made `7_Left` a patient of its own, so that its other
# eye `7_right` could sit on the other side of a split by patient, uncounted. The patient part is
# kept as written (`A7` and `a7` are two patients, as they are two names on a case-sensitive disk).
# A set with several photographs of one eye (DeepDRiD's two views, `import-external`) adds the
# view: `<patient>_left_2`.
_EYE_NAME = re.compile(r"(?P<patient>.+)_(?P<eye>left|right)(?:_(?P<view>[0-9]+))?", re.IGNORECASE)


@dataclass(frozen=True)
class Record:
    """One labelled image: ``image`` is the name as listed, without extension."""

    image: str
    label: int


@dataclass(frozen=True)
class CourseSplits:
    """Both course splits, checked against each other, plus what was normalised."""

    train: list[Record]
    test: list[Record]
    notes: list[str]


@dataclass(frozen=True)
class SplitListing:
    """A parsed split with the 1-based CSV line of every record, for error messages."""

    records: list[Record]
    img_path: Path
    lab_path: Path
    img_lines: list[int]
    lab_lines: list[int]
    notes: list[str]


def patient_of(name: str) -> str:
    """Return the patient of image ``name``: ``<id>`` for EyePACS's ``<id>_left`` / ``<id>_right``.

    The eye is matched in any case (``7_Left`` is patient ``7``), and a view number after it
    (``<id>_left_2``: another photograph of the same eye) keeps the patient; any other name is
    its own patient. A listed ``.jpeg`` suffix is ignored. Every count and split by patient
    (prepare, the leakage counts, fuse's pairs, predict) reads names through this and :func:`eye_of`.
    """
    stem = name[: -len(IMAGE_SUFFIX)] if name.endswith(IMAGE_SUFFIX) else name
    match = _EYE_NAME.fullmatch(stem)
    return match["patient"] if match else stem


def eye_of(name: str) -> str | None:
    """Return ``"left"`` or ``"right"`` for an EyePACS name (in any case, with or without a view number),
    else None."""
    stem = name[: -len(IMAGE_SUFFIX)] if name.endswith(IMAGE_SUFFIX) else name
    match = _EYE_NAME.fullmatch(stem)
    return match["eye"].lower() if match else None


def image_path(root: str | Path, name: str) -> Path:
    """Return where the course layout stores image ``name``: ``root / f"{name}.jpeg"``."""
    return Path(root) / f"{name}{IMAGE_SUFFIX}"


def _split_files(root: Path, split: str) -> tuple[Path, Path]:
    if split not in SPLIT_FILES:
        raise RetinopathyError(f"unknown split {split!r}; expected one of {sorted(SPLIT_FILES)}")
    img_name, label_name = SPLIT_FILES[split]
    files = (root / img_name, root / label_name)
    for path in files:
        if not path.is_file():
            needed = ", ".join(name for pair in SPLIT_FILES.values() for name in pair)
            raise RetinopathyError(
                f"{path}: file not found; the course layout needs {needed} in {path.parent} "
                "(one value per line, no header)"
            )
    return files


def utf8_text(path: Path, notes: list[str], fix: str) -> str:
    """The text of a UTF-8 file; a leading BOM is removed and noted in ``notes``.

    Raises:
        RetinopathyError: the bytes are not UTF-8 (naming the line, and ``fix``).
    """
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        notes.append(f"{path.name}: UTF-8 BOM removed")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        at = data[: error.start].count(b"\n") + 1
        raise RetinopathyError(f"{where(path, at)}: not UTF-8 text ({error.reason}); {fix}") from None


def read_lines(path: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """Read a one-value-per-line file as ``(line number, stripped text)`` pairs.

    Accepts (and notes) a UTF-8 BOM, CRLF line endings, surrounding whitespace
    and trailing blank lines; a blank line anywhere else is an error.
    """
    if not path.is_file():
        raise RetinopathyError(f"{path}: file not found")
    notes: list[str] = []
    text = utf8_text(path, notes, "save the file as UTF-8")
    raw = text.split("\n")
    if raw[-1] == "":
        raw.pop()  # the final newline of a normal text file, not a blank line
    crlf = 0
    stripped = 0
    lines: list[tuple[int, str]] = []
    for number, line in enumerate(raw, start=1):
        if line.endswith("\r"):
            line = line[:-1]
            crlf += 1
        if "\r" in line:
            raise RetinopathyError(
                f"{where(path, number)}: bare carriage return (old Mac line endings); "
                "save the file with \\n or \\r\\n line endings"
            )
        value = line.strip()
        stripped += value != line
        lines.append((number, value))
    if crlf:
        terminated = len(raw) - (not text.endswith("\n"))  # the last line may lack a newline
        mixed = "" if crlf >= terminated else " on some lines"
        notes.append(f"{path.name}: CRLF line endings{mixed}")
    if stripped:
        notes.append(f"{path.name}: whitespace around the value stripped on {stripped} line(s)")
    trailing = 0
    while lines and not lines[-1][1]:
        lines.pop()
        trailing += 1
    if trailing:
        notes.append(f"{path.name}: {trailing} trailing blank line(s) ignored")
    for number, value in lines:
        if not value:
            raise RetinopathyError(
                f"{where(path, number)}: blank line; every line must hold one value "
                "(the files pair up line by line) - delete the blank line"
            )
    return lines, notes


def parse_split(root: str | Path, split: str) -> SplitListing:
    """Read and validate one split, keeping each record's CSV lines (``read_split`` drops them).

    Public for ``kaggle``, which checks the course's lists against Kaggle's labels.
    """
    img_path, lab_path = _split_files(Path(root), split)
    imgs, notes = read_lines(img_path)
    labs, lab_notes = read_lines(lab_path)
    notes += lab_notes

    # Header rows, only where unambiguous: a label header is a word where an
    # integer belongs; an image header is a known column name, or a word when
    # the label file has a header too and both files have the same length.
    lab_header = bool(labs) and bool(_WORD.fullmatch(labs[0][1]))
    img_header = bool(imgs) and (
        imgs[0][1].lower() in _IMAGE_HEADERS
        or (lab_header and len(imgs) == len(labs) and bool(_WORD.fullmatch(imgs[0][1])))
    )
    headers: list[str] = []
    if img_header:
        headers.append(f"{img_path.name}: header row {imgs[0][1]!r} skipped")
        imgs = imgs[1:]
    if lab_header:
        headers.append(f"{lab_path.name}: header row {labs[0][1]!r} skipped")
        labs = labs[1:]
    notes += headers

    if not imgs and not labs:
        raise RetinopathyError(
            f"{img_path} and {lab_path}: the {split} split is empty; list one image per line"
        )
    if len(imgs) != len(labs):
        skipped = f" ({'; '.join(headers)})" if headers else ""
        raise RetinopathyError(
            f"{img_path} has {len(imgs)} image lines but {lab_path} has {len(labs)} label "
            f"lines{skipped}; the files pair up line by line - regenerate both from the same table"
        )

    names = listed_names(img_path, imgs, notes, f"in the {split} split", " (and its label)")
    records: list[Record] = []
    for name, (lab_line, text) in zip(names, labs, strict=True):
        records.append(Record(name, check_grade(lab_path, lab_line, text)))
    return SplitListing(records, img_path, lab_path, [n for n, _ in imgs], [n for n, _ in labs], notes)


def listed_names(
    path: Path, lines: list[tuple[int, str]], notes: list[str], scope: str, also: str = ""
) -> list[str]:
    """The image names of a list's ``(line, text)`` pairs (header already removed), checked.

    Every name must be bare (:func:`check_name`) and listed once; ``.jpeg`` is stripped when every
    name carries it (noted in ``notes``) and refused when only some do. ``scope`` and ``also`` word
    a repeat's message ("in the test split", " (and its label)").

    Raises:
        RetinopathyError: naming ``path``, the line and the fix.
    """
    names = [value for _, value in lines]
    for number, name in lines:
        check_name(path, number, name)
    with_suffix = [name.endswith(IMAGE_SUFFIX) for name in names]
    if names and all(with_suffix):
        # Unambiguous: every name carries the layout's own extension, so
        # stripping it points at exactly the files that were listed.
        names = [name[: -len(IMAGE_SUFFIX)] for name in names]
        notes.append(f"{path.name}: '{IMAGE_SUFFIX}' extension stripped from all {len(names)} names")
    elif any(with_suffix):
        first = with_suffix.index(True)
        other = with_suffix.index(False)
        raise RetinopathyError(
            f"{where(path, lines[first][0])}: {lines[first][1]!r} is listed with "
            f"'{IMAGE_SUFFIX}' but {where(path, lines[other][0])}: {lines[other][1]!r} is not; "
            "list every image by its name without extension"
        )
    seen: dict[str, int] = {}
    for name, (number, _) in zip(names, lines, strict=True):
        if name in seen:
            raise RetinopathyError(
                f"{where(path, number)}: image {name!r} is listed twice {scope}, also at line "
                f"{seen[name]}; delete one of the two lines{also}"
            )
        seen[name] = number
    return names


def read_image_list(path: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """A list of image names alone (predict's ``*.csv``), read as prepare reads ``*_img.csv``.

    The same reader (:func:`read_lines`), the same header row (a known column name such as
    ``image``; with no label file beside it, a word alone is a name), the same names
    (:func:`listed_names`: bare, listed once, ``.jpeg`` on all or none).

    Returns:
        ``(line number, name without extension)`` per image, in file order, and notes on what
        was accepted and normalised.

    Raises:
        RetinopathyError: naming ``path``, the line and the fix.
    """
    lines, notes = read_lines(path)
    if lines and lines[0][1].lower() in _IMAGE_HEADERS:
        notes.append(f"{path.name}: header row {lines[0][1]!r} skipped")
        lines = lines[1:]
    if not lines:
        raise RetinopathyError(f"{path}: no image listed; list one image name per line")
    names = listed_names(path, lines, notes, f"in {path.name}")
    return [(number, name) for (number, _), name in zip(lines, names, strict=True)], notes


def grade_of(text: str) -> int | None:
    """The grade that ``text`` is, one digit 0-4 (``"2"``), or None for anything else.

    One rule for every file that holds grades (the label lists, import-kaggle's
    trainLabels.csv, the prepared index, evaluate's predictions). Leading zeros are
    refused, not read: ``000...0002`` is a damaged or foreign value, and reading it as 2
    would hide that (and ``int()`` refuses more than 4300 digits with a traceback).
    """
    return _GRADES.get(text)


def check_grade(path: Path, line: int, text: str) -> int:
    """Return the grade written as ``text``; raise, naming path:line, unless it is an integer 0-4."""
    grade = grade_of(text)
    if grade is None:
        zeros = " (a grade is one digit, without leading zeros)" if text[:1] == "0" else ""
        raise RetinopathyError(
            f"{where(path, line)}: label {_shorten(text)!r} is not an integer grade "
            f"0-{NUM_GRADES - 1}{zeros}; fix the value"
        )
    return grade


def _shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for a message (a 5000-digit value is not worth printing)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an image name (:data:`IMAGE_NAME`), in words, or None if it can."""
    if IMAGE_NAME.fullmatch(name):
        return None
    if not name:
        return "it is empty"
    if IMAGE_NAME.fullmatch("0" + name[1:]):
        return f"it starts with {_character(name[0])}"
    return f"it contains {_character(next(c for c in name if not IMAGE_NAME.fullmatch('0' + c)))}"


def _character(char: str) -> str:
    """One character as a message names it: ``'<'``, ``a space``, ``a control character (U+0000)``."""
    if char.isspace():
        return f"a space or other blank (U+{ord(char):04X})" if char != " " else "a space"
    if not char.isprintable():
        return f"a control character (U+{ord(char):04X})"
    return repr(char) if char.isascii() else f"{char!r} (U+{ord(char):04X}, not ASCII)"


def check_name(path: Path, line: int, name: str) -> None:
    """Raise, naming path:line, unless ``name`` is a bare image name: :data:`IMAGE_NAME` (so no
    separator, quote, markup or control character such as NUL), and no file extension."""
    problem = name_problem(name)
    if problem:
        raise RetinopathyError(
            f"{where(path, line)}: {_shorten(name)!r} is not an image name ({problem}); {NAME_RULE} - "
            "rename the image and fix the line"
        )
    lower = name.lower()
    if lower.endswith(OTHER_EXTENSIONS) or (lower.endswith(IMAGE_SUFFIX) and not name.endswith(IMAGE_SUFFIX)):
        raise RetinopathyError(
            f"{where(path, line)}: {name!r} has a file extension; list names without one - the "
            f"images are read as <name>{IMAGE_SUFFIX}, so convert or rename the file to match"
        )
    # The image is <name>.jpeg: over the file-name limit no such file can exist (a stat of it fails).
    size = len(f"{name}{IMAGE_SUFFIX}".encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:
        raise RetinopathyError(
            f"{where(path, line)}: {_shorten(name)!r} is too long an image name: its file "
            f"<name>{IMAGE_SUFFIX} would be {size} bytes, over the limit of {NAME_MAX} bytes per file name; "
            "shorten it (at most "
            f"{NAME_MAX - len(IMAGE_SUFFIX)} bytes) and rename the image to match"
        )


def read_split(root: str | Path, split: str) -> tuple[list[Record], list[str]]:
    """Read one split's image and label lists.

    Args:
        root: Folder holding the course CSVs (``SPLIT_FILES``).
        split: ``"train"`` or ``"test"``.

    Returns:
        The records in file order (every line is a record), and notes on what
        was accepted and normalised.

    Raises:
        RetinopathyError: a missing file, a blank line inside a file, a label
            that is not an integer 0-4, files of different lengths, an empty
            split, a duplicated image or an unusable image name; the message
            names the file and the 1-based line.
    """
    parsed = parse_split(root, split)
    return parsed.records, parsed.notes


def read_course_splits(root: str | Path) -> CourseSplits:
    """Read both splits and check that no image is in both.

    Args:
        root: Folder holding the four course CSVs.

    Returns:
        The train and test records (file order) and the notes of both.

    Raises:
        RetinopathyError: anything ``read_split`` rejects, or an image listed
            in both splits (named with both file:line locations).
    """
    listings = parse_course_splits(root)
    train, test = listings["train"], listings["test"]
    return CourseSplits(train.records, test.records, train.notes + test.notes)


def parse_course_splits(root: str | Path) -> dict[str, SplitListing]:
    """Like :func:`read_course_splits`, keeping each record's CSV lines (see :func:`parse_split`)."""
    train = parse_split(root, "train")
    test = parse_split(root, "test")
    train_lines = dict(zip((r.image for r in train.records), train.img_lines, strict=True))
    for record, line in zip(test.records, test.img_lines, strict=True):
        if record.image in train_lines:
            raise RetinopathyError(
                f"image {record.image!r} is in both splits: "
                f"{where(train.img_path, train_lines[record.image])} and "
                f"{where(test.img_path, line)}; "
                "an image belongs to exactly one split - remove it from one (and its label line)"
            )
    return {"train": train, "test": test}


def class_counts(records: Sequence[Record]) -> list[int]:
    """Count the records of each grade: a list of length ``NUM_GRADES``."""
    counts = [0] * NUM_GRADES
    for record in records:
        if not 0 <= record.label < NUM_GRADES:
            raise RetinopathyError(
                f"image {record.image!r} has label {record.label}, outside 0-{NUM_GRADES - 1}"
            )
        counts[record.label] += 1
    return counts
