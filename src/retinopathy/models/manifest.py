"""An arm's weights manifest: where its initial weights come from, written by `weights`, read by `train`.

The `weights` stage resolves the initial weights of each arm into a small JSON
file (the source and its SHA-256, or why the weights are unavailable), so DVC
reruns the pretrained arm exactly when its weights change or become available.
Both the writer and the reader of that file are here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retinopathy.core.errors import RetinopathyError, note
from retinopathy.core.files import sha256_of
from retinopathy.core.records import parse_json
from retinopathy.core.registry import architecture
from retinopathy.models.build import (
    DOWNLOAD_TIMEOUT,
    IMAGENET,
    WeightsUnavailableError,
    build_model,
    fetch_imagenet,
    imagenet_cache_file,
)


def describe_scratch(model: str, seed: int, zero_init_residual: bool) -> dict[str, Any]:
    """Manifest of the scratch arm: random initialisation, nothing external."""
    blocks = ", residual blocks starting as the identity" if zero_init_residual else ""
    init = architecture(model).initialisation
    return {
        "arm": "scratch",
        "available": True,
        "model": model,
        "source": "random",
        "description": f"random initialisation ({init}{blocks}, torch seed {seed})",
    }


def describe_pretrained(
    model: str, weights: str, download: bool = True, timeout: float = DOWNLOAD_TIMEOUT
) -> dict[str, Any]:
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
            return {
                "arm": "pretrained",
                "available": False,
                "model": model,
                "source": "imagenet",
                "reason": error.reason,
                "fix": error.fix,
            }
        return {
            "arm": "pretrained",
            "available": True,
            "model": model,
            "source": "imagenet",
            "description": f"torchvision {IMAGENET[model]} (ImageNet-1k)",
            "file": path.name,
            "sha256": sha256,
        }
    path = Path(weights)
    build_model(model, weights=path)  # fails early and clearly if the file does not fit
    return {
        "arm": "pretrained",
        "available": True,
        "model": model,
        "source": "file",
        "description": f"state dict from {path}",
        "file": str(path),
        "sha256": sha256_of(path),
    }


WEIGHTS_FIX = "run `dvc repro weights` (or `retinopathy weights`) to write it again"
# The keys each kind of manifest has, as `weights` writes them.
_MANIFEST_KEYS = {
    "random": ("arm", "available", "model", "source", "description"),
    "imagenet": ("arm", "available", "model", "source", "description", "file", "sha256"),
    "file": ("arm", "available", "model", "source", "description", "file", "sha256"),
    "unavailable": ("arm", "available", "model", "source", "reason", "fix"),
}


def read_manifest(path: Path) -> dict[str, Any]:
    """Read the manifest the `weights` stage wrote, checking its keys.

    Raises:
        RetinopathyError: the file is missing, not JSON (e.g. merge-conflict markers) or lacks
            a key; the message names the file and says to run the weights stage again.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RetinopathyError(f"{path}: not found; run `dvc repro weights` first") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RetinopathyError(f"{path}: cannot read it ({error}); {WEIGHTS_FIX}") from None
    try:
        manifest = parse_json(text)
    except ValueError as error:
        conflict = " (it holds merge-conflict markers)" if "\n<<<<<<< " in f"\n{text}" else ""
        raise RetinopathyError(f"{path}: not valid JSON{conflict} ({error}); {WEIGHTS_FIX}") from None
    except RecursionError:  # thousands of nested brackets: no manifest is more than one level deep
        raise RetinopathyError(
            f"{path}: nested thousands of levels deep, not a weights manifest; {WEIGHTS_FIX}"
        ) from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("source") not in ("random", "imagenet", "file")
        or not isinstance(manifest.get("available"), bool)
    ):
        raise RetinopathyError(
            f"{path}: not a weights manifest (no `source` random/imagenet/file or no "
            f"`available` true/false); {WEIGHTS_FIX}"
        )
    kind = manifest["source"] if manifest["available"] else "unavailable"
    missing = [key for key in _MANIFEST_KEYS[kind] if not isinstance(manifest.get(key), str | bool)]
    if missing:
        raise RetinopathyError(f"{path}: the key {missing[0]!r} is missing or not text; {WEIGHTS_FIX}")
    return manifest


def weights_argument(manifest: dict[str, Any]) -> str | None:
    """What :func:`build_model` takes for this manifest: None (random), ``"imagenet"`` or a file."""
    if manifest["source"] == "random":
        return None
    return "imagenet" if manifest["source"] == "imagenet" else manifest["file"]


def verify_weights(manifest: dict[str, Any], source: Path) -> None:
    """Check that the weights file is still the one the manifest ``source`` recorded (its SHA-256).

    The `weights` stage hashes the file; a file swapped afterwards would train
    from other weights than the checkpoint and dvc.lock record.

    Raises:
        RetinopathyError: naming the file, both hashes and the fix.
    """
    if manifest["source"] == "random":
        return
    imagenet = manifest["source"] == "imagenet"
    path = imagenet_cache_file(manifest["model"]) if imagenet else Path(manifest["file"])
    try:
        digest = sha256_of(path)
    except OSError as error:
        raise RetinopathyError(
            f"{path}: cannot read the pretrained weights ({error.strerror}) that "
            f"{source} records; run `dvc repro` (or `retinopathy weights`)"
        ) from None
    if digest != manifest["sha256"]:
        raise RetinopathyError(
            f"{path}: changed after the `weights` stage hashed it (SHA-256 {digest[:12]}..., {source} "
            f"records {manifest['sha256'][:12]}...); run `dvc repro` so the pretrained arm is trained "
            "from the new file and says so, or put the old file back"
        )
