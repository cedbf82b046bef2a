"""`retinopathy export`: a trained arm as one self-contained file another program can run.

``retinopathy export --arm scratch --format onnx|torchscript --out FILE`` writes
the arm's ``best.pt`` (or ``--checkpoint FILE``) as a model that takes a uint8
RGB batch [N, 3, H, W] of any H and W (the fundus cropped and squared, as
`import-kaggle` does) and returns its scores: the five grade probabilities
[N, 5], or the regression value [N] (grade = how many of the thresholds in
the card lie below it). The resize to the network's size (bilinear,
anti-aliased; :mod:`retinopathy.models.photo_graph`), scaling, the optional
Graham preprocessing and the normalisation are inside the graph. Beside it,
``FILE.md`` is a short model card: architecture, initialisation, data, the
exact input, what the checkpoint itself records (epoch, selection figure,
fingerprint), the test metrics only when ``metrics/<arm>.info.json`` carries
the checkpoint's fingerprint, how far a plain full decode lands from the
project's own decoder (measured on the arm's test images when they are
there), and what it is not for.

ONNX goes through ``torch.onnx.export`` (the dynamo exporter, with dynamic
batch, height and width) and needs the ``export`` extra (onnx, onnxscript,
onnxruntime); TorchScript is ``torch.jit.trace``. Both are checked against
PyTorch before they are published (scores within 1e-4, at the network's size
and at another; a NaN or infinite score on either side fails the check), and
the model and its card are written together (both or neither).

``--fused`` writes the arm's both-eyes grader instead
(:class:`~retinopathy.fusion.graph.BothEyes`: the network up to its features
on each eye, then the blend of the `fuse` stage, ``models/<arm>.fuse.pt`` or
``--blend FILE``): inputs ``images`` and ``others`` (this eye and the other eye,
uint8 [N, 3, H, W]) and ``side`` [N] (0 left, 1 right), output this eye's
scores, checked against PyTorch in the same way; its card says what it is.

Only ``argparse`` and the light contract module are imported at the top, so
``retinopathy export --help`` does not wait for torch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retinopathy.core.contract import ARMS, METRIC_KEYS, Layout
from retinopathy.core.errors import RetinopathyError

if TYPE_CHECKING:  # imported where they are used, so that --help is instant
    from torch import Tensor

    from retinopathy.core.records import EvaluationInfo, TrainingStatus
    from retinopathy.engine.checkpoint import BestCheckpoint, Trained
    from retinopathy.models.grader import GraderSpec
    from retinopathy.models.photo_graph import PhotoGrader

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
EXTRA = "pip install -e '.[export]'"
MISSING_FIX = "train the arm first (`dvc repro`), or pass another --checkpoint"
MEASURE_IMAGES = 32  # test images on which a plain full decode is compared with the project's decoder


def scores_model(trained: Trained) -> PhotoGrader:
    """The trained grader and its head as the exported model computes them (eval mode, fp32, CPU)."""
    from retinopathy.models.photo_graph import PhotoGrader

    return PhotoGrader(trained.grader, trained.spec.head()).eval()


def load_scores_model(path: Path) -> PhotoGrader:
    """:func:`scores_model` of the checkpoint at ``path``."""
    from retinopathy.engine import checkpoint

    return scores_model(checkpoint.load_trained(path, fix=MISSING_FIX))


def _example(side: int, count: int = 2, width: int | None = None) -> Tensor:
    import torch

    return torch.randint(
        0, 256, (count, 3, side, width or side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def _export_onnx(model: PhotoGrader, example: Tensor, path: Path) -> None:
    try:
        import onnxruntime  # noqa: F401  (checked here so the error names the extra)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RetinopathyError(
            f"ONNX export needs {error.name}, which is not installed; install the export extra: {EXTRA}"
        ) from None
    import torch

    dims = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=2),
        3: torch.export.Dim("width", min=2),
    }
    chatter = io.StringIO()  # the exporter prints its progress; it is shown only if it fails
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=["images"],
                output_names=["scores"],
                dynamic_shapes={"images": dims},
                verbose=False,
            )
    except Exception:
        print(chatter.getvalue(), file=sys.stderr)
        raise


def _run_onnx(path: Path, images: Tensor) -> Tensor:
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def _export_torchscript(model: PhotoGrader, example: Tensor, path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
        traced = torch.jit.trace(model, example)
        traced.save(str(path))


def _run_torchscript(path: Path, images: Tensor) -> Tensor:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))(images)


EXPORTERS = {"onnx": (_export_onnx, _run_onnx), "torchscript": (_export_torchscript, _run_torchscript)}


@dataclass(frozen=True)
class DecoderGap:
    """How far the exported graph fed a plain full decode lands from `retinopathy predict`'s scores.

    Attributes:
        images: The test photographs measured on.
        max: The largest difference of a score.
        mean: The mean over the photographs of each one's largest difference.
    """

    images: int
    max: float
    mean: float


@dataclass
class Provenance:
    """What is known about the exported checkpoint, each part only where it is shown to belong to it.

    Attributes:
        selected: The checkpoint's own record of its selection (e.g. ``{"test_accuracy": 0.9}``).
        status: ``status.json`` beside the checkpoint, when it has the checkpoint's fingerprint.
        info: ``metrics/<arm>.info.json`` of the arm whose evaluation carries the fingerprint.
        metrics: That arm's ``metrics/<arm>.json``.
        source: Which files the metrics came from, or why there are none.
    """

    selected: dict[str, float]
    status: TrainingStatus | None
    info: EvaluationInfo | None
    metrics: dict[str, float]
    source: str


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: nested thousands of levels deep
        return {}
    return value if isinstance(value, dict) else {}


def _worst(differences: list[float]) -> float:
    """The largest of ``differences``; NaN when one is not finite (``max(0.0, nan)`` would be 0.0)."""
    return max(differences) if all(math.isfinite(d) for d in differences) else math.nan


def _check_agreement(out: Path, fmt: str, difference: float) -> None:
    """Refuse an export whose scores are not PyTorch's within :data:`TOLERANCE`, or not finite.

    Raises:
        RetinopathyError: naming ``out``; nothing is written.
    """
    if not math.isfinite(difference):
        raise RetinopathyError(
            f"{out}: the {fmt} model's scores, or PyTorch's, are NaN or infinite on the "
            "check images, so the export cannot be shown to agree; nothing was written. "
            "The network overflows: train the arm again, or pass another --checkpoint"
        )
    if difference > TOLERANCE:
        raise RetinopathyError(
            f"{out}: the {fmt} model's scores differ from PyTorch's by "
            f"{difference:.2g} (more than {TOLERANCE:g}); nothing was written"
        )


def _record_if_there(read: Callable[[Path, str], Any], path: Path, arm: str) -> Any:
    """The record at ``path``; None when there is none, or (said) when it cannot be read."""
    from retinopathy.core.errors import warn
    from retinopathy.core.records import RecordError

    if not path.is_file():
        return None
    try:
        return read(path, arm)
    except RecordError as error:
        warn(f"{error}. The model card leaves it out")
        return None


def provenance(path: Path, state: BestCheckpoint, arm: str, layout: Layout) -> Provenance:
    """Gather what describes ``state`` (read from ``path``), matching every record by its fingerprint.

    The metrics on disk may come from another run (the arm retrained since, or
    another experiment checked out), so they are used only when evaluate wrote
    this checkpoint's fingerprint into the arm's info file.
    """
    from retinopathy.core.records import EvaluationInfo, TrainingStatus, read_info, read_status

    fingerprint = state.fingerprint
    selected = state.selected
    status = _record_if_there(read_status, path.parent / layout.arm(arm).status.name, arm)
    status = status if isinstance(status, TrainingStatus) and status.fingerprint == fingerprint else None
    for name in ARMS:
        files = layout.arm(name)
        info = _record_if_there(read_info, files.info, name)
        if isinstance(info, EvaluationInfo) and info.fingerprint == fingerprint:
            return Provenance(
                selected,
                status,
                info,
                _json(files.metrics),
                f"`{files.metrics}` and `{files.info}`, whose evaluation carries this "
                f"checkpoint's fingerprint `{fingerprint}`",
            )
    return Provenance(
        selected,
        status,
        None,
        {},
        f"none: no `metrics/<arm>.info.json` here carries this checkpoint's fingerprint "
        f"`{fingerprint}` (evaluate it with `dvc repro evaluate@<arm>` in its project)",
    )


def measure_decoders(model: PhotoGrader, run: Any, out: Path, photos: list[Path]) -> DecoderGap | None:
    """How far the exported graph, fed a plain full decode, lands from `retinopathy predict`'s scores.

    For each photograph: the project's path (its decoder at the network's size,
    :func:`~retinopathy.data.photos.prepare_photo`, then the grader) against
    the exported file fed Pillow's full-size decode (no DCT scaling) and left
    to resize in its graph. None when there is no photograph to measure on.
    """
    import numpy as np
    import torch
    from PIL import Image

    from retinopathy.data.photos import prepare_photo

    ours, full = [], []
    for photo in photos:
        try:
            prepared = prepare_photo(photo, model.size, 10**9)
            with Image.open(photo) as image:
                decoded = np.array(image.convert("RGB"))
        except (RetinopathyError, OSError):
            continue
        if decoded.shape[0] == decoded.shape[1]:  # a camera photograph is cropped first: like with like
            ours.append(prepared)
            full.append(decoded)
    differences: list[float] = []
    for shape in dict.fromkeys(image.shape for image in full):  # one batch per size (one load of the file)
        chosen = [i for i, image in enumerate(full) if image.shape == shape]
        with torch.no_grad():
            expected = model(torch.from_numpy(np.stack([ours[i] for i in chosen])).permute(0, 3, 1, 2))
        got = run(out, torch.from_numpy(np.stack([full[i] for i in chosen])).permute(0, 3, 1, 2).contiguous())
        differences += (got - expected).abs().reshape(len(chosen), -1).max(1).values.tolist()
    if not differences:
        return None
    if not math.isfinite(_worst(differences)):
        raise RetinopathyError(
            f"{out}: its scores (or `retinopathy predict`'s) are NaN or infinite on the "
            "checkpoint's test images, so the card cannot say how far they differ; "
            "nothing was written. The network overflows: train the arm again, or pass "
            "another --checkpoint"
        )
    return DecoderGap(len(differences), max(differences), sum(differences) / len(differences))


def _test_photos(info: EvaluationInfo | None) -> list[Path]:
    """Up to MEASURE_IMAGES test images of the checkpoint's data (course layout), if they are here."""
    from retinopathy.data.labels import image_path, read_image_list

    if info is None or not info.data or not (Path(info.data) / "test_img.csv").is_file():
        return []
    root = Path(info.data)
    listed = root / "test_img.csv"
    try:
        lines, _ = read_image_list(listed)  # as prepare read it: a header row, names with .jpeg
    except RetinopathyError:
        return []
    return [image_path(root, name) for _, name in lines[:MEASURE_IMAGES]]


def model_card(
    spec: GraderSpec,
    arm: str,
    state: BestCheckpoint,
    known: Provenance,
    fmt: str,
    file: Path,
    measured: DecoderGap | None,
    checkpoint_path: Path,
) -> str:
    """The text of ``FILE.md``: only what is known about this checkpoint, and where it came from."""
    status, info = known.status, known.info
    described = info or status
    lines = [
        f"# {file.name}: diabetic retinopathy grader ({spec.model}, "
        f"{described.init if described else arm} arm)",
        "",
        "**For research, not for diagnosis.** It has not been validated on patients and must not "
        "be used to decide anyone's care.",
        "",
    ]
    if info is not None and info.synthetic:
        lines += [
            "> **Trained on SYNTHETIC demo data** (drawn by `retinopathy demo-data`, no photograph of "
            "a person): it says nothing about real fundus photographs.",
            "",
        ]
    output = (
        f"the regression value [N], float32; the grade is how many thresholds lie below it: {spec.thresholds}"
        if spec.loss == "regression"
        else "the probabilities of grades 0-4 [N, 5], float32 (softmax of the logits)"
    )
    side = spec.image_size or 512
    selected = ", ".join(f"{key} {value:.4g}" for key, value in known.selected.items()) or "not recorded"
    run = status or info
    epochs = run.epochs if run else "?"
    rule = (
        info.selection_rule
        if info
        else f"highest {status.selection} {status.select_by}"
        if status
        else "see the run"
    )
    weights = run.weights if run else "not recorded"
    data = info.data if info else "not recorded"
    lines += [
        "| | |",
        "|---|---|",
        f"| format | {fmt} |",
        f"| checkpoint | `{checkpoint_path}`, run fingerprint `{state.fingerprint}` |",
        f"| architecture | {spec.model} (torchvision layout), head: {spec.loss} |",
        f"| initialisation | {weights} |",
        f"| data | `{data}` |",
        f"| selected epoch | {state.epoch} of {epochs} ({rule}); the checkpoint records {selected} |",
        "| input `images` | uint8 RGB [N, 3, H, W], 0-255, any H and W: the fundus cropped and squared as "
        "`import-kaggle` does (a non-square input is stretched) |",
        f"| inside the graph | resize to {side}x{side} (bilinear, anti-aliased when shrinking, half-pixel "
        "centres: PyTorch `interpolate(mode='bilinear', antialias=True)`, ONNX `Resize` linear with "
        "`antialias=1`), scaling to [0, 1], preprocessing "
        f"`{spec.preprocess}`, normalisation `{spec.normalize}` |",
        f"| output `scores` | {output} |",
        "",
        "## Preprocessing, exactly",
        "",
        f"The network was trained on images decoded by {status.decoder if status else 'the project'}: for a "
        f"JPEG, libjpeg-turbo decodes at the smallest DCT scale n/8 of the stored size that keeps both sides "
        f">= {side}, and Pillow's `BILINEAR` resize (`reducing_gap=3.0`) makes it exactly {side}x{side}; "
        "other formats are decoded by Pillow in full and resized the same way. Feeding this graph that "
        f"{side}x{side} image reproduces `retinopathy predict` within {TOLERANCE:g}. Feeding it the "
        "photograph decoded in full instead (any decoder) lets the graph do the resize, which is close "
        "but not identical:",
        "",
    ]
    if measured:
        lines += [
            f"- measured on {measured.images} test images of `{data}` (Pillow's "
            f"full decode fed to this file, against `retinopathy predict`): scores differ by at most "
            f"**{measured.max:.4f}** (mean of the per-image maxima {measured.mean:.4f}).",
            "",
        ]
    else:
        lines += ["- not measured here: the checkpoint's test images were not found beside this export.", ""]
    lines += ["## Test metrics", "", f"Source: {known.source}.", ""]
    if known.metrics:
        lines += ["| metric | value | meaning |", "|---|---|---|"]
        lines += [
            f"| `{key}` | {value} | {METRIC_KEYS[key]} |"
            for key, value in known.metrics.items()
            if key in METRIC_KEYS
        ]
    else:
        history = status.history if status else []
        row = next((r for r in history if r["epoch"] == state.epoch), None)
        if row:
            lines += [
                f"Training's own figures for epoch {state.epoch} (from `{checkpoint_path.parent}/"
                "status.json`, same fingerprint):",
                "",
                "| figure | value |",
                "|---|---|",
            ]
            lines += [f"| `{key}` | {value:.4g} |" for key, value in row.items() if key != "epoch"]
        else:
            lines += ["No test metrics are known for this checkpoint."]
    return "\n".join(lines) + "\n"


def _our_export(out: Path, card: Path) -> Callable[[Path], bool]:
    """An earlier export to ``out``: its card (and so the model beside it) starts as :func:`model_card`'s."""

    def ours(_: Path) -> bool:
        try:
            with open(card, "rb") as stream:
                first = stream.readline(1000)
            return first.startswith(f"# {out.name}: ".encode()) and b"retinopathy" in first
        except OSError:
            return False

    return ours


def export(
    arm: str, fmt: str, out: Path, checkpoint_path: Path | None = None, layout: Layout | None = None
) -> float:
    """Write ``out`` and ``out.md``; returns the largest difference from PyTorch's scores.

    Raises:
        RetinopathyError: a missing or damaged checkpoint, a missing extra, or an
            export that does not reproduce PyTorch's scores within 1e-4.
    """
    import torch

    from retinopathy.core.files import check_output_file, draft_folder, write_together
    from retinopathy.engine import checkpoint
    from retinopathy.reporting.results import missing_checkpoint_fix

    layout = layout or Layout()
    files = layout.arm(arm)
    path = checkpoint_path or files.best
    card = out.with_name(out.name + ".md")
    ours = _our_export(out, card)  # replace only an earlier export: never the checkpoint, nor others' files
    check_output_file(out, "export", ours, inputs=[path])
    check_output_file(card, "export", ours, inputs=[path])
    fix = MISSING_FIX if checkpoint_path else missing_checkpoint_fix(arm, layout)
    trained = checkpoint.load_trained(path, fix=fix)
    state, spec = trained.state, trained.spec
    model = scores_model(trained)
    example = _example(model.size)
    write, run = EXPORTERS[fmt]
    with draft_folder(out) as folder:  # a killed export's draft is removed by the next export to `out`
        draft = folder / out.name
        write(model, example, draft)
        differences = []
        # Another batch size than the one traced, at the network's size and at another (the resize).
        for check in (_example(model.size, 3), _example(model.size + model.size // 2, 2, model.size * 2)):
            with torch.no_grad():
                differences.append(float((run(draft, check) - model(check)).abs().max()))
        difference = _worst(differences)
        _check_agreement(out, fmt, difference)
        known = provenance(path, state, arm, layout)
        measured = measure_decoders(model, run, draft, _test_photos(known.info))
        exported = draft.read_bytes()
    write_together({out: exported, card: model_card(spec, arm, state, known, fmt, out, measured, path)})
    return difference


def _both_eyes_example(side: int, count: int = 2, width: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    import torch

    images = _example(side, count, width)
    return images, images.flip(3), torch.arange(count, dtype=torch.float32) % 2


def _export_fused(model: Any, example: tuple, path: Path, fmt: str) -> None:
    import torch

    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(model, example).save(str(path))
        return
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RetinopathyError(
            f"ONNX export needs {error.name}, which is not installed; install the export extra: {EXTRA}"
        ) from None
    batch = torch.export.Dim("batch", min=1)
    dims = {
        name: {
            0: batch,
            2: torch.export.Dim(f"{name}_height", min=2),
            3: torch.export.Dim(f"{name}_width", min=2),
        }
        for name in ("images", "others")
    }
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=True,
                external_data=False,
                input_names=["images", "others", "side"],
                output_names=["scores"],
                dynamic_shapes={**dims, "side": {0: batch}},
                verbose=False,
            )
    except Exception:
        print(chatter.getvalue(), file=sys.stderr)
        raise


def run_fused(path: Path, fmt: str, images: Tensor, others: Tensor, side: Tensor) -> Tensor:
    """Scores of an exported both-eyes grader (``--fused``)."""
    import torch

    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path))(images, others, side)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"images": images.numpy(), "others": others.numpy(), "side": side.numpy()}
    return torch.from_numpy(session.run(None, feeds)[0])


def export_fused(
    arm: str,
    fmt: str,
    out: Path,
    checkpoint_path: Path | None = None,
    blend_path: Path | None = None,
    layout: Layout | None = None,
) -> float:
    """Write the both-eyes grader to ``out`` and its card ``out.md``; returns the largest difference.

    Raises:
        RetinopathyError: a missing checkpoint or blend, a blend of another checkpoint, a missing
            extra, or an export that does not reproduce PyTorch's scores within 1e-4.
    """
    import torch

    from retinopathy.core.files import check_output_file, draft_folder, write_together
    from retinopathy.engine import checkpoint
    from retinopathy.fusion.blend import BlendRecord
    from retinopathy.fusion.features import blend_width
    from retinopathy.fusion.graph import BothEyes
    from retinopathy.reporting.results import missing_checkpoint_fix

    layout = layout or Layout()
    path = checkpoint_path or layout.arm(arm).best
    blend_path = blend_path or layout.blend(arm)
    card = out.with_name(out.name + ".md")
    ours = _our_export(out, card)
    check_output_file(out, "export", ours, inputs=[path, blend_path])
    check_output_file(card, "export", ours, inputs=[path, blend_path])
    missing = MISSING_FIX if checkpoint_path else missing_checkpoint_fix(arm, layout)
    state = checkpoint.load(path, "best", fix=missing)
    fix = f"run `dvc repro fuse@{arm}` with fuse.method: blend, or pass --blend FILE"
    record = BlendRecord.load(blend_path, fix)
    if not record.learned:
        raise RetinopathyError(f"{blend_path}: holds no blend ({record.selection}); {fix}")
    if record.fingerprint != state.fingerprint:
        raise RetinopathyError(
            f"{blend_path}: learned on the features of run {record.fingerprint}, not of "
            f"{path} (run {state.fingerprint}); {fix}"
        )
    photo = load_scores_model(path)
    record.check_fits(blend_width(photo.grader, record.inputs, photo.spec.head()), blend_path, fix)
    model = BothEyes(photo, record).eval()
    size = model.photo.size
    with draft_folder(out) as folder:
        draft = folder / out.name
        _export_fused(model, _both_eyes_example(size), draft, fmt)
        differences = []
        for check in (_both_eyes_example(size, 3), _both_eyes_example(size + size // 2, 2, size * 2)):
            with torch.no_grad():
                got = run_fused(draft, fmt, *check)
                differences.append(float((got - model(*check)).abs().max()))
        difference = _worst(differences)
        _check_agreement(out, fmt, difference)
        exported = draft.read_bytes()
    output = (
        f"the regression value [N]; the grade is how many of the thresholds {record.thresholds} lie below it"
        if model.regression
        else "the probabilities of grades 0-4 [N, 5]"
    )
    write_together(
        {
            out: exported,
            card: "\n".join(
                [
                    f"# {out.name}: diabetic retinopathy grader with both eyes "
                    f"({arm} arm, retinopathy `fuse`)",
                    "",
                    "**For research, not for diagnosis.**",
                    "",
                    f"- network: `{path}` (run `{state.fingerprint}`), up to its {record.inputs}; "
                    f"the blend: `{blend_path}` ({record.selection}; learned on {record.train_pairs} "
                    "training images of two-eyed patients)",
                    "- inputs: `images` and `others`, uint8 RGB [N, 3, H, W] (this eye and the same "
                    f"patient's other eye, each resized to {size}x{size} inside as the single-eye export "
                    "does), `side` [N] float (0: `images` are left eyes, 1: right)",
                    f"- output `scores`: this eye's {output}",
                    f"- test metrics: `{layout.fused_metrics(arm)}` of the run that wrote the blend",
                    "",
                ]
            ),
        }
    )
    return difference


def build_parser() -> argparse.ArgumentParser:
    """The command's options (built without importing torch)."""
    parser = argparse.ArgumentParser(prog="retinopathy export", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--arm", choices=ARMS, default="scratch", help="Export models/<arm>/best.pt (default: scratch)."
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="Export this checkpoint instead; its card shows test metrics only when an "
        "evaluation of it (same fingerprint) is found.",
    )
    parser.add_argument("--format", choices=FORMATS, required=True, help="The file format.")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="The model file to write; FILE.md is its model card.",
    )
    parser.add_argument(
        "--fused",
        action="store_true",
        help="Write the both-eyes grader: the network, then the arm's blend (`fuse` stage).",
    )
    parser.add_argument(
        "--blend", type=Path, metavar="FILE", help="With --fused: this blend (default: models/<arm>.fuse.pt)."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy export --arm scratch|pretrained --format onnx|torchscript --out FILE``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.blend and not args.fused:
        parser.error("--blend belongs to --fused")
    if args.fused:
        difference = export_fused(args.arm, args.format, args.out, args.checkpoint, args.blend)
    else:
        difference = export(args.arm, args.format, args.out, args.checkpoint)
    print(f"wrote {args.out} ({args.format}; scores within {difference:.1g} of PyTorch's) and {args.out}.md")
    return 0
