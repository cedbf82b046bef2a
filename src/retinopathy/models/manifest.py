"""An arm's weights manifest: where its initial weights come from, written by `weights`, read by `train`.

The `weights` stage resolves the initial weights of each arm into a small JSON
file (the source and its SHA-256, or why the weights are unavailable), so DVC
reruns the pretrained arm exactly when its weights change or become available.
Both the writer (:func:`write_manifest`) and the reader (:func:`read_manifest`) of
that file are here, and the file is one of three frozen records, read by the
typed reader of :mod:`retinopathy.core.schema`: :class:`RandomInit` (the scratch
arm), :class:`WeightsFile` (ImageNet's or a file's weights and their SHA-256) or
:class:`Unavailable` (why not, and the fix: the arm is then skipped).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from retinopathy.core.contract import ARMS
from retinopathy.core.errors import RetinopathyError, note
from retinopathy.core.files import sha256_of, write_json_atomic
from retinopathy.core.records import parse_json, read_text_file
from retinopathy.core.registry import architecture
from retinopathy.core.schema import Invalid, OneOf, parse
from retinopathy.models.build import (
    DOWNLOAD_TIMEOUT,
    IMAGENET,
    WeightsUnavailableError,
    build_model,
    fetch_imagenet,
    imagenet_cache_file,
)

SOURCES = ("random", "imagenet", "file")  # where an arm's initial weights come from
Arm = Annotated[str, OneOf(ARMS)]


@dataclass(frozen=True)
class RandomInit:
    """The scratch arm: random initialisation, nothing external (``source: random``)."""

    arm: Arm
    available: Annotated[bool, OneOf((True,))]
    model: str
    source: Annotated[str, OneOf(("random",))]
    description: str  # the initialisation and the torch seed, in words


@dataclass(frozen=True)
class WeightsFile:
    """Weights from a file: torchvision's ImageNet weights (``source: imagenet``) or ``train.weights``'s."""

    arm: Arm
    available: Annotated[bool, OneOf((True,))]
    model: str
    source: Annotated[str, OneOf(("imagenet", "file"))]
    description: str
    file: str  # imagenet: the file's name in torch's cache; file: its path as given
    sha256: str


@dataclass(frozen=True)
class Unavailable:
    """Weights that cannot be had here (ImageNet's, offline): the arm is skipped, saying why and the fix."""

    arm: Arm
    available: Annotated[bool, OneOf((False,))]
    model: str
    source: Annotated[str, OneOf(SOURCES)]
    reason: str
    fix: str


Manifest = RandomInit | WeightsFile | Unavailable


def describe_scratch(model: str, seed: int, zero_init_residual: bool) -> RandomInit:
    """Manifest of the scratch arm: random initialisation, nothing external."""
    blocks = ", residual blocks starting as the identity" if zero_init_residual else ""
    init = architecture(model).initialisation
    return RandomInit(
        arm="scratch",
        available=True,
        model=model,
        source="random",
        description=f"random initialisation ({init}{blocks}, torch seed {seed})",
    )


def describe_pretrained(
    model: str, weights: str, download: bool = True, timeout: float = DOWNLOAD_TIMEOUT
) -> WeightsFile | Unavailable:
    """Manifest of the pretrained arm: where its weights come from and their SHA-256.

    ImageNet weights that are neither cached nor downloadable give a manifest
    with ``available: false``, the reason and the fix (the arm is then skipped).
    A file named in ``train.weights`` that is missing or does not fit is an error.
    """
    if weights == "imagenet":
        try:
            path, sha256 = fetch_imagenet(model, download=download, timeout=timeout)
        except WeightsUnavailableError as error:
            note(f"note: {error}")  # this machine's details: stderr only, never in the manifest
            return Unavailable(
                arm="pretrained",
                available=False,
                model=model,
                source="imagenet",
                reason=error.reason,
                fix=error.fix,
            )
        return WeightsFile(
            arm="pretrained",
            available=True,
            model=model,
            source="imagenet",
            description=f"torchvision {IMAGENET[model]} (ImageNet-1k)",
            file=path.name,
            sha256=sha256,
        )
    path = Path(weights)
    build_model(model, weights=path)  # fails early and clearly if the file does not fit
    return WeightsFile(
        arm="pretrained",
        available=True,
        model=model,
        source="file",
        description=f"state dict from {path}",
        file=str(path),
        sha256=sha256_of(path),
    )


WEIGHTS_FIX = "run `dvc repro weights` (or `retinopathy weights`) to write it again"


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write ``manifest`` to ``path`` (atomically), its fields in the order of its record."""
    write_json_atomic(path, dataclasses.asdict(manifest))


def read_manifest(path: Path) -> Manifest:
    """Read the manifest the `weights` stage wrote, checking it whole.

    Raises:
        RetinopathyError: the file is missing, not JSON (e.g. merge-conflict markers), not a
            manifest, or has a key missing, unknown or of the wrong type; the message names the
            file and says to run the weights stage again.
    """
    text = read_text_file(path, "run `dvc repro weights` first", WEIGHTS_FIX)
    try:
        raw = parse_json(text)
    except ValueError as error:
        conflict = " (it holds merge-conflict markers)" if "\n<<<<<<< " in f"\n{text}" else ""
        raise RetinopathyError(f"{path}: not valid JSON{conflict} ({error}); {WEIGHTS_FIX}") from None
    if (
        not isinstance(raw, dict)
        or raw.get("source") not in SOURCES
        or not isinstance(raw.get("available"), bool)
    ):
        raise RetinopathyError(
            f"{path}: not a weights manifest (no `source` random/imagenet/file or no "
            f"`available` true/false); {WEIGHTS_FIX}"
        )
    try:
        if not raw["available"]:
            return parse(Unavailable, raw)
        return parse(RandomInit, raw) if raw["source"] == "random" else parse(WeightsFile, raw)
    except Invalid as error:
        raise RetinopathyError(f"{path}: {error}; {WEIGHTS_FIX}") from None


def weights_argument(manifest: RandomInit | WeightsFile) -> str | None:
    """What :func:`build_model` takes for this manifest: None (random), ``"imagenet"`` or a file."""
    if isinstance(manifest, RandomInit):
        return None
    return "imagenet" if manifest.source == "imagenet" else manifest.file


def verify_weights(manifest: RandomInit | WeightsFile, source: Path) -> None:
    """Check that the weights file is still the one the manifest ``source`` recorded (its SHA-256).

    The `weights` stage hashes the file; a file swapped afterwards would train
    from other weights than the checkpoint and dvc.lock record.

    Raises:
        RetinopathyError: naming the file, both hashes and the fix.
    """
    if isinstance(manifest, RandomInit):
        return
    imagenet = manifest.source == "imagenet"
    path = imagenet_cache_file(manifest.model) if imagenet else Path(manifest.file)
    try:
        digest = sha256_of(path)
    except OSError as error:
        raise RetinopathyError(
            f"{path}: cannot read the pretrained weights ({error.strerror}) that "
            f"{source} records; run `dvc repro` (or `retinopathy weights`)"
        ) from None
    if digest != manifest.sha256:
        raise RetinopathyError(
            f"{path}: changed after the `weights` stage hashed it (SHA-256 {digest[:12]}..., {source} "
            f"records {manifest.sha256[:12]}...); run `dvc repro` so the pretrained arm is trained "
            "from the new file and says so, or put the old file back"
        )
