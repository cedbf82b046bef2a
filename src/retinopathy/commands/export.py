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
there), and what it is not for. The graph does not judge whether a photograph
can be graded: the card states the quality thresholds and the policy in force
(params.yaml's ``quality``, ``--params``; the assessor's defaults and ``flag``
without a params.yaml) and exactly how to compute the verdict beside the graph
(:func:`retinopathy.quality.verdict.assess`, torch-free).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retinopathy.core.config import QualityThresholds
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
# Each input of an exported graph, in order, and its dynamic dimensions (axis -> torch.export.Dim).
Shapes = dict[str, dict[int, Any]]
MEASURE_IMAGES = 32  # test images on which a plain full decode is compared with the project's decoder
PARAMS_FILE = "params.yaml"
# Each quality threshold as the card states it: the measure it bounds (``quality.measures.Measures``,
# on the analysis copy, inside the fundus disc), the comparison that makes a photograph ungradable,
# and the reason it then gives (``quality.verdict.judge`` applies them). {dark} and {bright} are the
# measures' clipping levels (``quality.measures.DARK_LEVEL``, ``BRIGHT_LEVEL``), filled in where the
# card is written: the measures module imports SciPy, which `export --help` must not wait for.
THRESHOLD_ROWS = {
    "min_coverage": ("`coverage`: share of the frame inside the fundus disc", "<", "no fundus"),
    "min_visible": ("`disc_visible`: share of the disc that lies in the picture", "<", "off-field"),
    "min_brightness": ("`brightness`: mean luminance (ITU-R 601, 0-255) in the disc", "<", "dark"),
    "max_clipped_dark": ("`clipped_dark`: share of the disc with luminance below {dark}", ">", "dark"),
    "max_brightness": ("`brightness`: mean luminance (0-255) in the disc", ">", "overexposed"),
    "max_clipped_bright": ("`clipped_bright`: share of the disc with green >= {bright}", ">", "overexposed"),
    "min_focus": ("`focus`: fine over coarse detail (differences of Gaussian blurs)", "<", "blur"),
    "max_flare": ("`flare`: share of the disc under a whitish haze", ">", "flare"),
}


@dataclass(frozen=True)
class QualityPolicy:
    """The quality thresholds and the ungradable policy the card states, and where they came from."""

    thresholds: QualityThresholds
    ungradable: str  # contract.UNGRADABLE_POLICIES
    source: str


def quality_policy(params_path: str | None) -> QualityPolicy:
    """params.yaml's ``quality`` (``params_path``, else ./params.yaml when there is one), else the
    assessor's defaults and ``flag``, as `retinopathy predict` uses them.

    Raises:
        RetinopathyError: ``--params`` names a file that is missing or invalid.
    """
    if params_path is None and not Path(PARAMS_FILE).is_file():
        return QualityPolicy(QualityThresholds(), "flag", "the defaults without a params.yaml")
    from retinopathy.core.config import load_params

    path = params_path or PARAMS_FILE
    quality = load_params(path).quality
    return QualityPolicy(quality.thresholds, quality.ungradable, f"`quality` of `{path}`")


def quality_section(policy: QualityPolicy) -> list[str]:
    """The card's lines on image quality: not in the graph, the thresholds and policy, and how to judge."""
    import dataclasses

    from retinopathy.quality.measures import ANALYSIS_SIDE, BRIGHT_LEVEL, DARK_LEVEL

    thresholds = policy.thresholds
    withhold = policy.ungradable == "withhold"
    lines = [
        "## Image quality: not computed by this graph",
        "",
        "This graph grades whatever it is given; it does **not** say whether a photograph can be graded "
        "(blurred, dark, overexposed, off-field, flare, no fundus). `retinopathy predict` judges that with "
        "a transparent assessor whose measures are NumPy/SciPy code, not part of this file. Judge every "
        "photograph before trusting its grade:",
        "",
        "```python",
        "from retinopathy.core.config import QualityThresholds",
        "from retinopathy.data.images import decode_image",
        "from retinopathy.quality.verdict import assess",
        "",
        "image = decode_image(path)  # at its own size: RGB uint8 [H, W, 3], upright (EXIF), 8 bits",
        "thresholds = QualityThresholds(",
        *(
            f"    {field.name}={getattr(thresholds, field.name)!r},"
            for field in dataclasses.fields(thresholds)
        ),
        ")",
        "verdict = assess(image, thresholds)",
        "verdict.gradable, verdict.reasons  # e.g. False, ('blur',)",
        f"verdict.explain()  # e.g. ['blur: focus 0.12 (at least {thresholds.min_focus:.2f})']: "
        "each measure and its threshold",
        "```",
        "",
        "`retinopathy.quality.verdict.assess` needs this project's package (`pip install` it; the quality "
        "code imports NumPy, Pillow and SciPy, not torch). Give it the photograph decoded at its own "
        "size, as stored (before the crop and the resize this graph's input has; any decoder that gives "
        "the upright RGB uint8 pixels will do); it measures an analysis copy "
        f"resized so that its longer side is {ANALYSIS_SIDE} px (bilinear; "
        "`retinopathy.quality.measures.ANALYSIS_SIDE`), so each threshold means the same at any "
        "resolution. A photograph is ungradable when any measure crosses its threshold; its reasons "
        "come in the order of `retinopathy.quality.verdict.REASONS`, and without a fundus disc nothing "
        "else is judged.",
        "",
        f"Thresholds in force ({policy.source}):",
        "",
        "| threshold | measure (analysis copy, inside the fundus disc) | ungradable when | reason |",
        "|---|---|---|---|",
    ]
    for field in dataclasses.fields(thresholds):
        measure, comparison, reason = THRESHOLD_ROWS[field.name]
        measure = measure.format(dark=DARK_LEVEL, bright=BRIGHT_LEVEL)
        lines.append(
            f"| `{field.name}` | {measure} | {comparison} {getattr(thresholds, field.name):g} | {reason} |"
        )
    lines += [
        "",
        f"Policy in force: `quality.ungradable: {policy.ungradable}` ({policy.source}). "
        + (
            "`retinopathy predict` gives an ungradable photograph no grade, no scores and no patient "
            "call, as screening devices report it; do the same with this graph's scores: leave the grade "
            "of an ungradable photograph empty and have the eye re-imaged or referred."
            if withhold
            else "`retinopathy predict` grades an ungradable photograph and marks it (`gradable` false, "
            "`quality` the reasons); a grade of an ungradable photograph means little, so show the "
            "reasons beside it and have the eye re-imaged."
        ),
        "",
    ]
    return lines


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


def _example_of_one(side: int, count: int = 2, width: int | None = None) -> tuple[Tensor]:
    """:func:`_example` as the single-eye graph's inputs: ``images`` alone."""
    return (_example(side, count, width),)


def _image_dims(batch: Any, prefix: str = "") -> dict[int, Any]:
    """An image input's dynamic dimensions: the shared batch, and its own height and width."""
    import torch

    return {
        0: batch,
        2: torch.export.Dim(f"{prefix}height", min=2),
        3: torch.export.Dim(f"{prefix}width", min=2),
    }


def _write_graph(model: Any, example: tuple[Tensor, ...], path: Path, fmt: str, shapes: Shapes) -> None:
    """Trace ``model`` on ``example`` into ``path``: TorchScript, or ONNX with the inputs ``shapes`` names.

    Args:
        shapes: Each input's name, in the order of ``example``, and its dynamic dimensions (ONNX).

    Raises:
        RetinopathyError: ONNX without the export extra installed.
    """
    import torch

    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
            torch.jit.trace(model, example).save(str(path))
        return
    try:
        import onnxruntime  # noqa: F401  (checked here so the error names the extra)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RetinopathyError(
            f"ONNX export needs {error.name}, which is not installed; install the export extra: {EXTRA}"
        ) from None
    chatter = io.StringIO()  # the exporter prints its progress; it is shown only if it fails
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=True,
                external_data=False,
                input_names=list(shapes),
                output_names=["scores"],
                dynamic_shapes=shapes,
                verbose=False,
            )
    except Exception:
        print(chatter.getvalue(), file=sys.stderr)
        raise


def run_graph(path: Path, fmt: str, feeds: dict[str, Tensor]) -> Tensor:
    """The scores of an exported file (``fmt``) on ``feeds``, its inputs by name, in order."""
    import torch

    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path))(*feeds.values())
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {name: value.numpy() for name, value in feeds.items()})[0])


def _single_eye(fmt: str) -> tuple[Callable[[Any, Tensor, Path], None], Callable[[Path, Tensor], Tensor]]:
    """The writer and the runner of the single-eye graph (``fmt``): one input, ``images``."""

    def write(model: Any, example: Tensor, path: Path) -> None:
        import torch

        _write_graph(model, (example,), path, fmt, {"images": _image_dims(torch.export.Dim("batch", min=1))})

    def run(path: Path, images: Tensor) -> Tensor:
        return run_graph(path, fmt, {"images": images})

    return write, run


EXPORTERS = {fmt: _single_eye(fmt) for fmt in FORMATS}


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
    quality: QualityPolicy,
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
    lines += quality_section(quality)
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


def _check_outputs(out: Path, inputs: list[Path]) -> Path:
    """Before any work: ``out`` and its card replace only an earlier export, never an input; the card.

    Raises:
        RetinopathyError: naming the output and the fix.
    """
    from retinopathy.core.files import check_output_file

    card = out.with_name(out.name + ".md")
    ours = _our_export(out, card)  # replace only an earlier export: never the checkpoint, nor others' files
    for path in (out, card):
        check_output_file(path, "export", ours, inputs=inputs)
    return card


def _load(path: Path, arm: str, given: bool, layout: Layout) -> Trained:
    """The checkpoint to export (``--checkpoint``: ``given``, else the arm's ``best.pt``) and its grader."""
    from retinopathy.engine import checkpoint
    from retinopathy.reporting.results import missing_checkpoint_fix

    return checkpoint.load_trained(path, fix=MISSING_FIX if given else missing_checkpoint_fix(arm, layout))


@contextlib.contextmanager
def _drafted(
    out: Path,
    fmt: str,
    model: Any,
    size: int,
    examples: Callable[..., tuple[Tensor, ...]],
    shapes: Shapes,
) -> Iterator[tuple[Path, float]]:
    """Export ``model`` into a draft beside ``out`` and check it against PyTorch before anything is written.

    The check runs another batch size than the one traced, at the network's size and at
    another (the resize inside the graph). A killed export's draft is removed by the next
    export to ``out``.

    Args:
        size: The network's input side (each image is resized to it inside the graph).
        examples: ``examples(side, count=2, width=None)``: the graph's inputs, in the order of ``shapes``.
        shapes: Each input's name and its dynamic dimensions (ONNX).

    Yields:
        The draft file, and the largest difference from PyTorch's scores.

    Raises:
        RetinopathyError: the scores differ by more than :data:`TOLERANCE`, or are not finite.
    """
    import torch

    from retinopathy.core.files import draft_folder

    with draft_folder(out) as folder:
        draft = folder / out.name
        _write_graph(model, examples(size), draft, fmt, shapes)
        differences = []
        for check in (examples(size, 3), examples(size + size // 2, 2, size * 2)):
            with torch.no_grad():
                got = run_graph(draft, fmt, dict(zip(shapes, check, strict=True)))
                differences.append(float((got - model(*check)).abs().max()))
        difference = _worst(differences)
        _check_agreement(out, fmt, difference)
        yield draft, difference


def export(
    arm: str,
    fmt: str,
    out: Path,
    checkpoint_path: Path | None = None,
    layout: Layout | None = None,
    quality: QualityPolicy | None = None,
) -> float:
    """Write ``out`` and ``out.md``; returns the largest difference from PyTorch's scores.

    ``quality``: the thresholds and policy the card states (None: :func:`quality_policy` of ./params.yaml).

    Raises:
        RetinopathyError: a missing or damaged checkpoint, a missing extra, or an
            export that does not reproduce PyTorch's scores within 1e-4.
    """
    import torch

    from retinopathy.core.files import write_together

    layout = layout or Layout()
    quality = quality or quality_policy(None)
    path = checkpoint_path or layout.arm(arm).best
    card = _check_outputs(out, [path])
    trained = _load(path, arm, checkpoint_path is not None, layout)
    model = scores_model(trained)
    shapes = {"images": _image_dims(torch.export.Dim("batch", min=1))}
    with _drafted(out, fmt, model, model.size, _example_of_one, shapes) as (draft, difference):
        known = provenance(path, trained.state, arm, layout)
        measured = measure_decoders(model, EXPORTERS[fmt][1], draft, _test_photos(known.info))
        exported = draft.read_bytes()
    text = model_card(trained.spec, arm, trained.state, known, fmt, out, measured, path, quality)
    write_together({out: exported, card: text})
    return difference


def _both_eyes_example(side: int, count: int = 2, width: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    import torch

    images = _example(side, count, width)
    return images, images.flip(3), torch.arange(count, dtype=torch.float32) % 2


def run_fused(path: Path, fmt: str, images: Tensor, others: Tensor, side: Tensor) -> Tensor:
    """Scores of an exported both-eyes grader (``--fused``)."""
    return run_graph(path, fmt, {"images": images, "others": others, "side": side})


def export_fused(
    arm: str,
    fmt: str,
    out: Path,
    checkpoint_path: Path | None = None,
    blend_path: Path | None = None,
    layout: Layout | None = None,
    quality: QualityPolicy | None = None,
) -> float:
    """Write the both-eyes grader to ``out`` and its card ``out.md``; returns the largest difference.

    ``quality``: the thresholds and policy the card states (None: :func:`quality_policy` of ./params.yaml).

    Raises:
        RetinopathyError: a missing checkpoint or blend, a blend of another checkpoint, a missing
            extra, or an export that does not reproduce PyTorch's scores within 1e-4.
    """
    import torch

    from retinopathy.core.files import write_together
    from retinopathy.fusion.blend import BlendRecord
    from retinopathy.fusion.features import blend_width
    from retinopathy.fusion.graph import BothEyes

    layout = layout or Layout()
    quality = quality or quality_policy(None)
    blend_path = blend_path or layout.blend(arm)
    path = checkpoint_path or layout.arm(arm).best
    card = _check_outputs(out, [path, blend_path])
    trained = _load(path, arm, checkpoint_path is not None, layout)
    state = trained.state
    fix = f"run `dvc repro fuse@{arm}` with fuse.method: blend, or pass --blend FILE"
    record = BlendRecord.load(blend_path, fix)
    if not record.learned:
        raise RetinopathyError(f"{blend_path}: holds no blend ({record.selection}); {fix}")
    if record.fingerprint != state.fingerprint:
        raise RetinopathyError(
            f"{blend_path}: learned on the features of run {record.fingerprint}, not of "
            f"{path} (run {state.fingerprint}); {fix}"
        )
    photo = scores_model(trained)
    record.check_fits(blend_width(photo.grader, record.inputs, photo.spec.head()), blend_path, fix)
    model = BothEyes(photo, record).eval()
    size = model.photo.size
    batch = torch.export.Dim("batch", min=1)
    shapes = {
        "images": _image_dims(batch, "images_"),
        "others": _image_dims(batch, "others_"),
        "side": {0: batch},
    }
    with _drafted(out, fmt, model, size, _both_eyes_example, shapes) as (draft, difference):
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
                    *quality_section(quality),
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
    parser.add_argument(
        "--params",
        metavar="FILE",
        help="The quality thresholds and ungradable policy the card states (default: params.yaml when "
        "the current folder has one, else the assessor's defaults and flag, as predict uses them).",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy export --arm scratch|pretrained --format onnx|torchscript --out FILE``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.blend and not args.fused:
        parser.error("--blend belongs to --fused")
    quality = quality_policy(args.params)
    if args.fused:
        difference = export_fused(
            args.arm, args.format, args.out, args.checkpoint, args.blend, quality=quality
        )
    else:
        difference = export(args.arm, args.format, args.out, args.checkpoint, quality=quality)
    print(f"wrote {args.out} ({args.format}; scores within {difference:.1g} of PyTorch's) and {args.out}.md")
    return 0
