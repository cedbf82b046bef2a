"""The blend: a small network from [this eye, the other eye, which eye] to this eye's grade.

Kaggle 2015's second place (team o_O) fed each image's network features, its
partner eye's and a left/right flag to a small per-patient network and raised
the private kappa from 0.824 to 0.845; Huang et al. 2023 fuse eye pairs on a
ResNet-50 the same way. Here both eyes' inputs are standardised with the
training images' mean and spread, then one hidden ReLU layer (``fuse.hidden``
wide; 0: linear) gives the arm's head: 5 logits trained with cross-entropy,
or 1 value trained with MSE and graded by thresholds.

:func:`learn` fits it with Adam on the training split's two-eyed patients
only, seeded; with a validation split it keeps the epoch of the lowest
validation loss, else the last one. It is never given test images.
:class:`BlendRecord` is what the `fuse` stage stores: the weights, the
settings, the thresholds and the fingerprint of the checkpoint whose features
it reads, so a blend is never used with another network's features.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from torch import Tensor, nn

from retinopathy.core.contract import FUSION_INPUTS, FUSION_METHODS, LOSSES, ROUNDING_THRESHOLDS
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import atomic_file
from retinopathy.core.schema import Invalid, OneOf, parse
from retinopathy.core.torchload import load_tensors
from retinopathy.evaluation.scoring import tune_thresholds
from retinopathy.models.head import Head, require_finite

FORMAT = "retinopathy-fuse-blend-1"


class Blend(nn.Module):
    mean: Tensor  # buffers (register_buffer): the training features' standardisation
    std: Tensor
    """(this [N, D], other [N, D], side [N]) -> the head's outputs [N, K]."""

    def __init__(self, size: int, hidden: int, outputs: int, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, size).float().clone())
        self.register_buffer("std", std.reshape(1, size).float().clone())
        width = 2 * size + 1
        self.layers = (
            nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
            if hidden
            else nn.Sequential(nn.Linear(width, outputs))
        )

    def forward(self, this: Tensor, other: Tensor, side: Tensor) -> Tensor:
        joined = torch.cat(
            [
                (this - self.mean) / self.std,
                (other - self.mean) / self.std,
                side.reshape(-1, 1).to(this.dtype),
            ],
            1,
        )
        return self.layers(joined)


@dataclass(frozen=True)
class Pairs:
    """The blend's rows: each two-eyed image and its partner (``this``, ``other`` [M, D]), side, labels."""

    this: Tensor
    other: Tensor
    side: Tensor
    labels: Tensor

    @classmethod
    def of(cls, inputs: Tensor, labels: Tensor, partner: Sequence[int], side: Sequence[float]) -> Pairs:
        rows = [i for i, p in enumerate(partner) if p >= 0]
        index, other = (
            torch.tensor(rows, dtype=torch.long),
            torch.tensor([partner[i] for i in rows], dtype=torch.long),
        )
        return cls(
            inputs[index].float(),
            inputs[other].float(),
            torch.tensor([side[i] for i in rows], dtype=torch.float32),
            labels[index].long(),
        )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class BlendRecord:
    """What the `fuse` stage stores beside the arm's network (``models/<arm>.fuse.pt``).

    ``method`` ``none``: no blend (``state`` empty); every image is graded alone.
    """

    method: Annotated[str, OneOf(FUSION_METHODS)]
    inputs: Annotated[str, OneOf(FUSION_INPUTS)]  # what it reads per eye
    loss: Annotated[str, OneOf(LOSSES)]  # the arm's head
    thresholds: list[float] | None  # regression: the blend's own grade thresholds
    size: int  # numbers per eye
    hidden: int
    fingerprint: str  # of the checkpoint whose features the blend reads
    epoch: int  # the kept epoch (0: none)
    selection: str  # how it was kept, in words
    train_pairs: int  # images of two-eyed patients it learned from
    val_pairs: int
    state: dict[str, Tensor] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def learned(self) -> bool:
        return self.method == "blend" and bool(self.state)

    def head(self) -> Head:
        return Head(self.loss, self.thresholds)

    def model(self) -> Blend:
        outputs = self.head().num_outputs
        blend = Blend(self.size, self.hidden, outputs, torch.zeros(self.size), torch.ones(self.size))
        blend.load_state_dict(self.state)
        return blend.eval()

    def broken(self) -> str | None:
        """Which weight (or threshold) is NaN or infinite; None when every number is finite."""
        bad = [key for key, value in self.state.items() if not bool(torch.isfinite(value).all())]
        if bad:
            return f"its weights hold NaN or infinite numbers (`{bad[0]}`)"
        if self.thresholds is not None and not bool(torch.isfinite(torch.tensor(self.thresholds)).all()):
            return f"its grade thresholds {self.thresholds} are not all finite"
        return None

    def to_bytes(self, path: Path) -> bytes:
        """The file ``path`` (torch's format): never a blend with a NaN or infinite number.

        Raises:
            RetinopathyError: naming ``path``, what is not finite and the fix (a lower ``fuse.lr``).
        """
        problem = self.broken()
        if problem:
            raise RetinopathyError(
                f"{path}: not written: {problem}, so the blend diverged while it learned; "
                "lower fuse.lr in params.yaml and run the `fuse` stage again"
            )
        buffer = io.BytesIO()
        torch.save(asdict(self), buffer)
        return buffer.getvalue()

    def save(self, path: Path) -> None:
        """Write atomically (a killed run leaves the previous file, never half of this one)."""
        content = self.to_bytes(path)
        with atomic_file(path, "wb") as stream:
            stream.write(content)

    def check_fits(self, width: int, source: str | Path, fix: str) -> None:
        """Refuse inputs of ``width`` numbers per eye unless the blend was learned on such.

        Raises:
            RetinopathyError: naming ``source`` and ``fix``: the blend was learned on another network's
                features or scores (another architecture, or another head).
        """
        if self.learned and width != self.size:
            raise RetinopathyError(
                f"{source}: the blend reads {self.size} {self.inputs} per eye, but this "
                f"network gives {width}: it was learned on another network's outputs; "
                f"{fix}"
            )

    @classmethod
    def load(cls, path: Path, fix: str) -> BlendRecord:
        """Read a blend back, checking every field and that every weight is finite.

        Raises:
            RetinopathyError: missing, damaged, not a blend of this version, or NaN or infinite
                weights; naming ``path`` and ``fix``.
        """
        raw = load_tensors(path, "a readable blend written by `retinopathy fuse`", fix)
        names = set(cls.__dataclass_fields__)
        if not isinstance(raw, dict) or set(raw) != names or raw.get("format") != FORMAT:
            raise RetinopathyError(
                f"{path}: not a blend written by this version of `retinopathy fuse`; {fix}"
            )
        try:
            record = parse(cls, raw)
        except Invalid as error:
            raise RetinopathyError(f"{path}: damaged: {error}; {fix}") from None
        problem = record.broken()
        if problem:
            raise RetinopathyError(
                f"{path}: {problem}: the `fuse` stage that wrote it diverged (or the file "
                f"was altered), and no grade can come from it; {fix}"
            )
        try:
            if record.learned:
                record.model()
        except (RuntimeError, ValueError, TypeError) as error:
            raise RetinopathyError(f"{path}: its weights do not fit its settings ({error}); {fix}") from None
        return record


def _loss(model: Blend, pairs: Pairs, head: Head) -> float:
    with torch.no_grad():
        return float(head.loss(model(pairs.this, pairs.other, pairs.side), pairs.labels, weighted=False))


def learn(
    train: Pairs,
    val: Pairs | None,
    head: Head,
    *,
    hidden: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> tuple[Blend, int, str]:
    """Fit a blend on ``train`` (Adam, seeded minibatches); keep the best validation epoch, else the last.

    Returns:
        The blend (eval mode), the kept epoch, and how it was kept, in words.

    Raises:
        RetinopathyError: ``train`` is empty.
    """
    if not len(train):
        raise RetinopathyError("no two-eyed patient in the training split: the blend has nothing to learn")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    joined = torch.cat([train.this, train.other])
    mean, std = joined.mean(0), joined.std(0, unbiased=False).clamp_min(1e-6)
    model = Blend(train.this.shape[1], hidden, head.num_outputs, mean, std)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    use_val = val is not None and len(val) > 0
    best_loss, best_epoch, best_state = float("inf"), epochs, None
    for epoch in range(1, epochs + 1):
        model.train()
        for rows in torch.randperm(len(train), generator=generator).split(batch_size):
            loss = head.loss(
                model(train.this[rows], train.other[rows], train.side[rows]),
                train.labels[rows],
                weighted=False,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if use_val and val is not None:
            model.eval()
            val_loss = _loss(model, val, head)
            if val_loss < best_loss:
                best_loss, best_epoch = val_loss, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None and val is not None:
        model.load_state_dict(best_state)
        rule = (
            f"epoch {best_epoch} of {epochs}, the lowest validation loss ({best_loss:.4f}) over "
            f"{len(val)} two-eyed validation images (test unseen)"
        )
    else:
        rule = (
            f"the last of {epochs} epochs (fixed: no two-eyed patient in a validation split to choose "
            "by; set data.val_fraction > 0 to choose); test unseen"
        )
    if not all(bool(torch.isfinite(value).all()) for value in model.state_dict().values()):
        # A NaN blend grades every image 0; the kept epoch is the last, or no epoch had a finite loss.
        raise RetinopathyError(
            f"params.yaml: the blend diverged while it learned (fuse.lr {lr:g}, "
            f"{epochs} epochs): its weights became NaN or infinite; lower fuse.lr (Adam's "
            "usual 0.001, say) and run the `fuse` stage again. Nothing was written"
        )
    return model.eval(), best_epoch, rule


def thresholds_for(model: Blend, val: Pairs | None, head: Head) -> list[float] | None:
    """Regression: the arm's rule for the blend's thresholds; tuned on ``val`` when the arm's were tuned.

    The arm's thresholds differ from rounding only when training tuned them on
    a validation split; the blend's are then tuned the same way on that split's
    two-eyed images, else they are rounding.
    """
    if not head.regression:
        return None
    assert head.thresholds is not None  # a regression head has them
    tuned = list(head.thresholds) != list(ROUNDING_THRESHOLDS)
    if not tuned or val is None or not len(val):
        return list(ROUNDING_THRESHOLDS)
    with torch.no_grad():
        values = model(val.this, val.other, val.side).squeeze(1).numpy()
    return tune_thresholds(values, val.labels.numpy())


def fused_scores(
    record: BlendRecord, this: Tensor, other: Tensor, side: Tensor, source: str | Path, fix: str
) -> tuple[Tensor, Tensor]:
    """The blend's scores ([M, 5] or [M]) and grades [M] of two-eyed images (CPU, float32).

    Raises:
        RetinopathyError: naming ``source`` (the blend's file) and ``fix``: the inputs are not
            as wide as those the blend learned on, or its scores are NaN or infinite.
    """
    record.check_fits(this.shape[1], source, fix)
    head = record.head()
    with torch.no_grad():
        outputs = record.model()(this.float(), other.float(), side.float())
    scores = head.scores(outputs)
    require_finite(scores, source, fix)
    return scores, head.grades(outputs)


def state_of(model: Blend) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}
