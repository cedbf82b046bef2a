"""`retinopathy export`: a trained arm as one self-contained file another program can run.

``retinopathy export --arm scratch --format onnx|torchscript --out FILE`` writes
the arm's ``best.pt`` as a model that takes a uint8 batch [N, 3, H, W] (H = W
= the image size it was trained at) and returns its scores: the five grade
probabilities [N, 5], or the regression value [N] (grade = how many of the
thresholds in the card lie below it). Scaling, the optional Graham
preprocessing and the normalisation are inside the graph. Beside it,
``FILE.md`` is a short model card: architecture, initialisation, data, image
size, test metrics, and what it is not for.

ONNX goes through ``torch.onnx.export`` (the dynamo exporter, with a dynamic
batch dimension) and needs the ``export`` extra (onnx, onnxscript); TorchScript
is ``torch.jit.trace``. Both are checked against PyTorch before they are
published (scores within 1e-4), and written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from retinopathy import checkpoint
from retinopathy.contract import ARMS, METRIC_KEYS, Layout
from retinopathy.errors import RetinopathyError
from retinopathy.files import atomic_file, check_output_file, draft_folder, write_text_atomic
from retinopathy.models.grader import Grader, GraderSpec, load_grader
from retinopathy.models.head import Head

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
EXTRA = "pip install -e '.[export]'"
MISSING_FIX = "train the arm first (`dvc repro`), or pass another --checkpoint"


class Scores(nn.Module):
    """The grader and its head's scores as one module: uint8 images in, probabilities (or values) out."""

    def __init__(self, grader: Grader, head: Head) -> None:
        super().__init__()
        self.grader, self.regression = grader, head.regression
        self.spec = grader.spec

    def forward(self, images: Tensor) -> Tensor:
        outputs = self.grader(images).float()
        return outputs.squeeze(1) if self.regression else outputs.softmax(1)


def load_scores_model(path: Path) -> Scores:
    """The checkpoint's grader and head as the exported model computes them (eval mode, fp32, CPU)."""
    state = checkpoint.load(path, "best", fix=MISSING_FIX)
    spec = GraderSpec.from_dict(state["spec"], str(path))
    return Scores(load_grader(spec, state["model"], str(path)), spec.head()).eval()


def _example(spec: GraderSpec, count: int = 2) -> Tensor:
    side = spec.image_size or 512
    return torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def _export_onnx(model: Scores, example: Tensor, path: Path) -> None:
    try:
        import onnxruntime  # noqa: F401  (checked here so the error names the extra)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RetinopathyError(f"ONNX export needs {error.name}, which is not installed; install the "
                               f"export extra: {EXTRA}") from None
    batch = torch.export.Dim("batch", min=1)
    chatter = io.StringIO()  # the exporter prints its progress; it is shown only if it fails
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                              input_names=["images"], output_names=["scores"],
                              dynamic_shapes={"images": {0: batch}}, verbose=False)
    except Exception:
        print(chatter.getvalue(), file=sys.stderr)
        raise


def _run_onnx(path: Path, images: Tensor) -> Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def _export_torchscript(model: Scores, example: Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing notes that the input's size is baked in: it is
        traced = torch.jit.trace(model, example)
        traced.save(str(path))


def _run_torchscript(path: Path, images: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))(images)


EXPORTERS = {"onnx": (_export_onnx, _run_onnx), "torchscript": (_export_torchscript, _run_torchscript)}


def model_card(spec: GraderSpec, arm: str, state: dict[str, Any], info: dict[str, Any],
               metrics: dict[str, float], fmt: str, file: Path) -> str:
    """The text of ``FILE.md``."""
    lines = [f"# {file.name}: diabetic retinopathy grader ({spec.model}, {arm} arm)", "",
             "**For research, not for diagnosis.** It has not been validated on patients and must not "
             "be used to decide anyone's care.", ""]
    if info.get("synthetic"):
        lines += ["> **Trained on SYNTHETIC demo data** (drawn by `retinopathy demo-data`, no photograph of "
                  "a person): it says nothing about real fundus photographs.", ""]
    output = ("the regression value [N], float32; the grade is how many thresholds lie below it: "
              f"{spec.thresholds}" if spec.loss == "regression"
              else "the probabilities of grades 0-4 [N, 5], float32 (softmax of the logits)")
    side = spec.image_size or 512
    lines += [
        "| | |", "|---|---|",
        f"| format | {fmt} |",
        f"| architecture | {spec.model} (torchvision layout), head: {spec.loss} |",
        f"| initialisation | {info.get('weights', arm)} |",
        f"| data | `{info.get('data', 'unknown')}` |",
        f"| selected epoch | {state['epoch']} of {info.get('epochs', '?')} "
        f"({info.get('selection_rule', 'see the run')}) |",
        f"| input | uint8 RGB [N, 3, {side}, {side}], 0-255 (the fundus cropped and squared as "
        "`import-kaggle` does) |",
        f"| inside the graph | scaling to [0, 1], preprocessing `{spec.preprocess}`, normalisation "
        f"`{spec.normalize}` |",
        f"| output | {output} |",
        f"| run fingerprint | `{state['fingerprint']}` |", "",
        "## Test metrics (`metrics/" + f"{arm}.json`)", "", "| metric | value | meaning |", "|---|---|---|",
    ]
    lines += [f"| `{key}` | {value} | {METRIC_KEYS[key]} |" for key, value in metrics.items()]
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


def export(arm: str, fmt: str, out: Path, checkpoint_path: Path | None = None,
           layout: Layout | None = None) -> float:
    """Write ``out`` and ``out.md``; returns the largest difference from PyTorch's scores.

    Raises:
        RetinopathyError: a missing or damaged checkpoint, a missing extra, or an
            export that does not reproduce PyTorch's scores within 1e-4.
    """
    layout = layout or Layout()
    files = layout.arm(arm)
    path = checkpoint_path or files.best
    card = out.with_name(out.name + ".md")
    ours = _our_export(out, card)  # replace only an earlier export: never the checkpoint, nor others' files
    check_output_file(out, "export", ours, inputs=[path])
    check_output_file(card, "export", ours, inputs=[path])
    state = checkpoint.load(path, "best", fix=MISSING_FIX)
    spec = GraderSpec.from_dict(state["spec"], str(path))
    model = load_scores_model(path)
    example = _example(spec)
    write, run = EXPORTERS[fmt]
    with draft_folder(out) as folder:  # a killed export's draft is removed by the next export to `out`
        draft = folder / out.name
        write(model, example, draft)
        check = _example(spec, 3)  # another batch size than the one traced
        with torch.no_grad():
            difference = float((run(draft, check) - model(check)).abs().max())
        if difference > TOLERANCE:
            raise RetinopathyError(f"{out}: the {fmt} model's scores differ from PyTorch's by "
                                   f"{difference:.2g} (more than {TOLERANCE:g}); nothing was written")
        with atomic_file(out, "wb") as stream:
            stream.write(draft.read_bytes())
    own = checkpoint_path is None  # the arm's own files describe only its own best.pt
    info = json.loads(files.info.read_text()) if own and files.info.is_file() else {}
    metrics = json.loads(files.metrics.read_text()) if own and files.metrics.is_file() else {}
    write_text_atomic(card, model_card(spec, arm, state, info, metrics, fmt, out))
    return difference


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy export --arm scratch|pretrained --format onnx|torchscript --out FILE``."""
    parser = argparse.ArgumentParser(prog="retinopathy export", description=__doc__.split("\n")[0])
    parser.add_argument("--arm", choices=ARMS, default="scratch", help="export models/<arm>/best.pt")
    parser.add_argument("--checkpoint", type=Path,
                        help="export this checkpoint instead (its card then has no test metrics)")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the model file; FILE.md is its card")
    args = parser.parse_args(argv)
    difference = export(args.arm, args.format, args.out, args.checkpoint)
    print(f"wrote {args.out} ({args.format}; scores within {difference:.1g} of PyTorch's) and {args.out}.md")
    return 0
