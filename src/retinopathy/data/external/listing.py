"""What a reader of a public set returns: the photographs to import, and what it left out and why.

Each format's reader (one module each in this package) turns a set, as its users
unpack it, into a :class:`Listing`. Nothing here reads images or writes files:
the writer (:mod:`retinopathy.data.external.importer`) checks the listing as a
whole (every file there, every name unique) before it writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from retinopathy.core.contract import LEFT_OUT_REASONS
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.labels import NAME_RULE, name_problem

UNGRADABLE, UNLABELLED, MISSING = LEFT_OUT_REASONS

_EXTENSIONS = (".jpeg", ".jpg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Photo:
    """One photograph of the set that will be written (converted to ``<name>.jpeg``).

    Attributes:
        source: The file to read.
        name: Its name in the output (without ``.jpeg``): ``<patient>_<eye>`` where patient
            and eye are known (``data.labels.patient_of`` / ``eye_of`` read them back).
        grade: The DR grade 0-4 the set gives it; None when it gives none (ungradable).
        dme: 1 for referable diabetic macular edema, 0 for none; None when the set has no
            DME labels or gives none for this photograph.
        gradable: The set's quality label: False for a photograph it calls ungradable (written
            for ``quality.csv``, not in the test split); None when the set has no quality labels.
        patient: The patient, where the set says it.
        eye: ``left`` or ``right``, where the set says it.
        split: The split of the set it comes from, in the set's own words.
        where: ``file:line`` of its label, for messages.
    """

    source: Path
    name: str
    grade: int | None
    dme: int | None
    gradable: bool | None
    patient: str | None
    eye: str | None
    split: str
    where: str

    @property
    def in_test(self) -> bool:
        """Whether it belongs in the test split: graded and not called ungradable."""
        return self.gradable is not False and self.grade is not None


@dataclass(frozen=True)
class LeftOut:
    """A photograph (or a listed id) of the set that is not written, and why.

    Attributes:
        reason: One of ``contract.LEFT_OUT_REASONS`` (the writer adds ``missing file``).
        source: Its file under the set's root, or its id when there is no file.
        split: The split of the set it comes from.
        where: ``file:line`` that lists it, or its folder when no file lists it.
    """

    reason: str
    source: str
    split: str
    where: str


@dataclass(frozen=True)
class Listing:
    """A set read by its format's reader: what to write and what was left out.

    Attributes:
        format: The format (``contract.EXTERNAL_FORMATS``).
        root: The folder read.
        photos: Every photograph to write, in the order of the set's label files.
        left_out: What is not written (unlabelled photographs, ids without a file).
        label_files: The label files read (their hashes go into the summary).
        notes: What was accepted and normalised, and the quirks decided.
        dme_definition: Which label is referable DME, in words; None for a set without DME labels.
        quality_definition: Which label says gradable or not, in words; None for a set without one.
    """

    format: str
    root: Path
    photos: list[Photo]
    left_out: list[LeftOut]
    label_files: list[Path]
    notes: list[str] = field(default_factory=list)
    dme_definition: str | None = None
    quality_definition: str | None = None


def relative(root: Path, path: Path) -> str:
    """``path`` under ``root``, as written in messages and ``sources.csv``."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def output_name(text: str, where: str) -> str:
    """``text`` as an output name: refused, naming ``where``, unless prepare would take it
    (:data:`~retinopathy.data.labels.IMAGE_NAME`, the one rule for image names).

    Raises:
        RetinopathyError: the name holds another character, or ends in an image extension.
    """
    shown = text if len(text) <= 60 else f"{text[:60]}... ({len(text)} characters)"
    problem = name_problem(text)
    if problem:
        raise RetinopathyError(
            f"{where}: the image id {shown!r} cannot name an output image ({problem}); {NAME_RULE}. "
            "Rename the file and its entry in the label file"
        )
    if text.lower().endswith(_EXTENSIONS):
        raise RetinopathyError(
            f"{where}: the image id {shown!r} would name an output image that ends in an "
            "image extension; rename the file and its entry in the label file"
        )
    return text


def missing_file(what: str, path: Path, fix: str) -> RetinopathyError:
    """The error for a label file the format needs and that is not there (naming it and the fix)."""
    return RetinopathyError(f"{path}: file not found; it should hold the {what}. {fix}")


def files_in(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """The regular files directly in ``folder`` whose suffix is one of ``suffixes`` (any case), by name.

    An absent folder holds none (the readers say which listed files are missing instead).
    """
    if not folder.is_dir():
        return {}
    lower = tuple(suffix.lower() for suffix in suffixes)
    return {
        entry.name: entry
        for entry in sorted(folder.iterdir())
        if entry.name.lower().endswith(lower) and entry.is_file()
    }
