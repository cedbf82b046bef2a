"""(b) and (c): training-step throughput, ours against torchvision's and against a plain fp32 loop."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
from torch import Tensor, nn

from retinopathy.commands.bench.inputs import SPLIT
from retinopathy.commands.bench.results import Comparison
from retinopathy.commands.bench.timing import alternate, relabel, sync_for
from retinopathy.core.contract import NUM_GRADES
from retinopathy.core.registry import OWN_MODELS
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.labels import Record
from retinopathy.engine.loops import sgd_step
from retinopathy.engine.optim import make_optimizer
from retinopathy.engine.runtime import Runtime, make_runtime, plain_runtime
from retinopathy.models.build import new_model
from retinopathy.models.grader import Grader, GraderSpec
from retinopathy.models.head import Head


class SGDSettings(TypedDict):
    lr: float
    momentum: float
    weight_decay: float


MODEL_TARGET = 0.95  # ours within 5% of torchvision (faster is fine)
# The lab's SGD settings; a step takes as long whatever the values.
SGD = SGDSettings(lr=1e-3, momentum=0.9, weight_decay=5e-4)
NORMALIZE = "imagenet"
HEAD = Head("cross_entropy")  # the lab's: a step costs the same with the regression head (one fc output)


def image_bank(
    root: str | Path, records: Sequence[Record], size: int, batch: int, device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    """Decoded uint8 batches (and labels) already on ``device``, reused by every step.

    The images come from the JPEGs through our Dataset, so the model sees the
    same pixels as in training, but decoding is outside the timed steps.
    """
    dataset = RetinopathyDataset(root, SPLIT, size, records=records, dtype=torch.uint8)
    decoded = [dataset[i] for i in range(len(dataset))]
    count = math.ceil(max(len(decoded), batch) / batch) * batch  # whole batches, cycling the images
    images = torch.stack([decoded[i % len(decoded)][0] for i in range(count)]).to(device)
    labels = torch.tensor([decoded[i % len(decoded)][1] for i in range(count)], device=device)
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, count, batch)]


@dataclass(frozen=True)
class BackendFlags:
    """The global cuDNN/TF32 switches, set before each step of a side."""

    benchmark: bool
    matmul_tf32: bool
    cudnn_tf32: bool

    @classmethod
    def current(cls) -> BackendFlags:
        return cls(
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        )

    def apply(self) -> None:
        if BackendFlags.current() != self:
            torch.backends.cudnn.benchmark = self.benchmark
            torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
            torch.backends.cudnn.allow_tf32 = self.cudnn_tf32


@contextmanager
def restored_flags() -> Iterator[BackendFlags]:
    """Yield the current backend flags, and set them back however the ``with`` block ends.

    Each timed step applies its side's flags, so without this the fast flags
    would outlive a benchmark (and a later one would take them for PyTorch's
    defaults).
    """
    before = BackendFlags.current()
    try:
        yield before
    finally:
        before.apply()


def fast_flags(runtime: Runtime) -> BackendFlags:
    """What ``Runtime.configure_backends`` sets, without leaving it set."""
    with restored_flags():
        runtime.configure_backends()
        return BackendFlags.current()


def grader(net: nn.Module, model: str, runtime: Runtime) -> Grader:
    """``net`` (architecture ``model``) behind the input transform, placed as ``runtime`` places it."""
    spec = GraderSpec(
        model=model, image_size=None, normalize=NORMALIZE, preprocess="none", loss=HEAD.kind, thresholds=None
    )  # the spec is not read
    return runtime.place(Grader(net, spec))


def train_step_unit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[tuple[Tensor, Tensor]],
    runtime: Runtime,
    flags: BackendFlags,
) -> Callable[[], int]:
    """One training step per call, cycling ``batches``: ``engine.loops.sgd_step``, as training runs it."""
    model.train()
    step = 0

    def run() -> int:
        nonlocal step
        flags.apply()
        images, labels = batches[step % len(batches)]
        step += 1
        sgd_step(model, optimizer, images, labels, runtime, HEAD)
        return labels.numel()

    return run


def _switches(runtime: Runtime) -> str:
    """The runtime's switches in words, with the optimizer ``engine.optim.make_optimizer`` picks."""
    cuda = runtime.device.type == "cuda"
    parts = [
        "bf16 autocast" if runtime.bf16 else "fp32",
        "channels_last" if runtime.channels_last else "contiguous",
    ]
    if cuda:
        parts.append("cudnn.benchmark+TF32")
    parts.append("fused SGD" if cuda else "foreach SGD")
    return ", ".join(parts)


def bench_models(
    batches: Sequence[tuple[Tensor, Tensor]],
    device: torch.device,
    *,
    models: Sequence[str] = OWN_MODELS,
    seconds: float,
    rounds: int,
    warmup: int = 2,
    seed: int = 0,
) -> list[Comparison]:
    """Training images/s of our ResNets against torchvision's, same weights and loop.

    Both sides run with the device's fast-path switches (``auto``), as training would.
    """
    import torchvision.models

    runtime = make_runtime(device, num_workers=0)
    flags = fast_flags(runtime)
    comparisons = []
    for name in models:
        torch.manual_seed(seed)
        ours = new_model(name, NUM_GRADES)
        theirs = getattr(torchvision.models, name)(weights=None, num_classes=NUM_GRADES)
        theirs.load_state_dict(ours.state_dict(), strict=True)
        units = {}
        for side, net in (("torchvision", theirs), ("ours", ours)):
            model = grader(net, name, runtime)
            optimizer = make_optimizer(model, runtime, **SGD)
            units[side] = train_step_unit(model, optimizer, batches, runtime, flags)
        with restored_flags():  # every step sets the fast flags
            timed = alternate(units, seconds=seconds, rounds=rounds, warmup=warmup, sync=sync_for(device))
        images = batches[0][0]
        comparisons.append(
            Comparison(
                "models",
                f"{name}, batch {images.shape[0]}, {images.shape[-1]} px",
                timed["torchvision"],
                timed["ours"],
                MODEL_TARGET,
                f"torchvision.models.{name} loaded with our weights; both {_switches(runtime)}",
            )
        )
        del units, ours, theirs
    return comparisons


def bench_fastpath(
    batches: Sequence[tuple[Tensor, Tensor]],
    device: torch.device,
    *,
    model_name: str = "resnet18",
    seconds: float,
    rounds: int,
    warmup: int = 2,
    runtime: Runtime | None = None,
    seed: int = 0,
) -> Comparison:
    """Training images/s with ``runtime``'s switches against a plain fp32 loop.

    The plain loop: fp32, contiguous tensors, ``torch.optim.SGD`` with its
    default implementation, PyTorch's default cuDNN/TF32 settings. Both start
    from the same weights and see the same batches.

    Args:
        runtime: The fast side's switches (default: ``auto`` for ``device``).
    """
    fast = runtime or make_runtime(device, num_workers=0)
    plain = plain_runtime(device)
    torch.manual_seed(seed)
    base = grader(new_model(model_name, NUM_GRADES), model_name, plain)
    cand = grader(copy.deepcopy(base.net), model_name, fast)
    base_opt = torch.optim.SGD(base.parameters(), **SGD)
    cand_opt = make_optimizer(cand, fast, **SGD)
    with restored_flags() as default_flags:
        units = {
            "plain": train_step_unit(base, base_opt, batches, plain, default_flags),
            "fast": train_step_unit(cand, cand_opt, batches, fast, fast_flags(fast)),
        }
        timed = alternate(units, seconds=seconds, rounds=rounds, warmup=warmup, sync=sync_for(device))
    switches = _switches(fast)
    relabel(timed["plain"], "plain fp32")
    relabel(timed["fast"], "fast path")
    same = not fast.bf16 and not fast.channels_last and device.type != "cuda"
    note = f"{switches}"
    if same:
        note += (
            "; here only the SGD implementation differs from the plain loop, so the ratio "
            "mostly shows the noise (an A/A check)"
        )
    note += "; plain: fp32, contiguous, torch.optim.SGD's default implementation"
    if device.type == "cuda":
        note += ", PyTorch's default cuDNN/TF32 flags"
    images = batches[0][0]
    return Comparison(
        "fastpath",
        f"{model_name}, batch {images.shape[0]}, {images.shape[-1]} px",
        timed["plain"],
        timed["fast"],
        note=note,
    )
