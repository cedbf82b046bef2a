"""Grading with both eyes: the blend learned on the training split, each split graded, fuse's files.

:func:`extract_splits` runs the arm's grader once over each opened split (its
features and outputs, checked finite); :func:`learn_blend` learns the blend from
the training split's two-eyed patients (a validation split picks its epoch);
:func:`grade_split` grades one split with it, each image whose other eye is in
the split by the blend and every other image by the network alone, saying which
(:data:`~retinopathy.core.contract.FUSION_SOURCES`); :func:`fused` scores the test
split and gives the text of every file the `fuse` stage writes, :func:`skipped`
those of an arm that was not trained, and :func:`unfused` those of an arm whose
training split has no two-eyed patient (:func:`has_pairs`: a user training on APTOS
or IDRiD), so that the default pipeline runs on such data and says why nothing was fused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retinopathy.core.config import FuseParams
from retinopathy.core.contract import (
    FUSED_METRIC_KEYS,
    METRIC_DECIMALS,
    REFERABLE_GRADE,
    Layout,
)
from retinopathy.core.contract import fused_prediction_columns as columns
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import csv_text, json_text
from retinopathy.core.records import FusedScreeningRecord, FusionFacts, UnfusedRecord
from retinopathy.data.labels import Record, patient_of
from retinopathy.engine.batches import eval_batches
from retinopathy.engine.evaluation import Opened, overflow_fix
from retinopathy.evaluation.scoring import confusion_tables, scores
from retinopathy.evaluation.screening import Scored, record, scored
from retinopathy.evaluation.screening_files import screening_contents
from retinopathy.fusion.blend import BlendRecord, Pairs, fused_scores, learn, state_of, thresholds_for
from retinopathy.fusion.features import Extracted, blend_inputs, extract
from retinopathy.fusion.pairs import partners
from retinopathy.models.head import Head, require_finite

# What to do when the arm's blend gives scores that are not finite (its weights are finite: checked).
BLEND_FIX = "lower fuse.lr in params.yaml and run the `fuse` stage again"
# Why an arm's fusion is skipped when its training split has no two-eyed patient.
NO_PAIRS = (
    "no patient has both eyes in the training split (EyePACS names `<id>_left` and `<id>_right`), "
    "so the blend has nothing to learn; each photograph is graded alone (the Screening section). "
    "Set fuse.method to none in params.yaml to say so, or name the images by patient"
)


def has_pairs(names: list[str]) -> bool:
    """Whether any patient has both eyes among ``names`` (a split's images): the blend learns from them."""
    partner, _ = partners(names)
    return any(p >= 0 for p in partner)


def no_blend(inputs: str, loss: str, fingerprint: str, selection: str) -> BlendRecord:
    """The record of no blend (``method: none``): every image is graded by the network alone."""
    return BlendRecord("none", inputs, loss, None, 0, 0, fingerprint, 0, selection, 0, 0)


def referable(scores: torch.Tensor, head: Head) -> np.ndarray:
    """P(grade >= 2) per image (regression: the value itself, a score)."""
    return (scores if head.regression else scores[:, REFERABLE_GRADE:].sum(1)).numpy().astype(np.float64)


def extract_splits(
    opened: Opened, records: Mapping[str, list[Record]], batch_size: int, best: Path, arm: str
) -> dict[str, Extracted]:
    """Every opened split's features and outputs (eval mode, no augmentation), checked finite.

    Raises:
        RetinopathyError: an output or feature is NaN or infinite (naming the checkpoint ``best``
            and the images).
    """
    runtime = opened.runtime
    lower = f"train.batch_size in params.yaml (now {batch_size}; these batches are twice it)"
    extracted = {
        split: extract(
            opened.grader, eval_batches(source, batch_size, runtime), runtime, f"features {split}", lower
        )
        for split, source in opened.sources.items()
    }
    for split, found in extracted.items():  # before any of them is blended or graded
        require_finite(
            torch.cat([found.features, found.outputs], 1),
            best,
            overflow_fix(arm),
            [record.image for record in records[split]],
        )
    return extracted


def learn_blend(
    extracted: dict[str, Extracted],
    names: dict[str, list[str]],
    settings: FuseParams,
    head: Head,
    loss: str,
    fingerprint: str,
    index: Path,
) -> tuple[BlendRecord, dict[str, Pairs]]:
    """The blend of ``fuse.method: blend``, learned on the training split's two-eyed patients only.

    Args:
        extracted: Each split's features and outputs (:func:`extract_splits`).
        names: Each split's image names, in the same order.
        settings: params.yaml's ``fuse`` section.
        head: The arm's head (the blend's outputs are its).
        loss: The arm's head, in params' words (recorded with the blend).
        fingerprint: The run of the checkpoint whose features the blend reads.
        index: The prepared index (for messages).

    Returns:
        The blend's record (``method: none`` when fusion is off) and each split's pairs of eyes.

    Raises:
        RetinopathyError: no patient has both eyes in the training split, or the blend diverged.
    """
    if settings.method != "blend":
        return no_blend(
            settings.inputs, loss, fingerprint, "none: fuse.method is none, every image graded alone"
        ), {}
    pairs = {
        split: Pairs.of(
            blend_inputs(extracted[split], settings.inputs, head),
            extracted[split].labels,
            *partners(names[split]),
        )
        for split in extracted
    }
    val = pairs.get("val")
    if not len(pairs["train"]):  # the stage skips such an arm first (has_pairs, unfused)
        raise RetinopathyError(f"{index}: {NO_PAIRS}")
    model, epoch, rule = learn(
        pairs["train"],
        val,
        head,
        hidden=settings.hidden,
        epochs=settings.epochs,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    blend = BlendRecord(
        "blend",
        settings.inputs,
        loss,
        thresholds_for(model, val, head),
        pairs["train"].this.shape[1],
        settings.hidden,
        fingerprint,
        epoch,
        rule,
        len(pairs["train"]),
        len(val) if val is not None else 0,
        state_of(model),
    )
    return blend, pairs


def grade_split(
    outputs: torch.Tensor, head: Head, names: list[str], blend: BlendRecord, pairs: Pairs | None, path: Path
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split's scores, grades and sources: the blend's where the other eye is in the split, else alone.

    Args:
        outputs: The network's outputs of the split's images.
        head: The arm's head.
        names: The images' names (their patients and eyes pair them).
        blend: The blend (``method: none``: every image alone, ``single``).
        pairs: The split's pairs of eyes (:class:`~retinopathy.fusion.blend.Pairs`); None without a blend.
        path: The blend's file (for messages).

    Raises:
        RetinopathyError: the blend's scores are NaN or infinite (:data:`BLEND_FIX`).
    """
    scores_, grades = head.scores(outputs), head.grades(outputs)
    partner, _ = partners(names)
    if not blend.learned or pairs is None:
        return scores_, grades, ["single"] * len(names)
    rows = [i for i, p in enumerate(partner) if p >= 0]
    if rows:
        fused_s, fused_g = fused_scores(blend, pairs.this, pairs.other, pairs.side, path, BLEND_FIX)
        index = torch.tensor(rows)
        scores_, grades = scores_.clone(), grades.clone()
        scores_[index], grades[index] = fused_s, fused_g
    return scores_, grades, ["fused" if p >= 0 else "single-no-partner" for p in partner]


def prediction_rows(
    names: list[str],
    actual: np.ndarray,
    grades: np.ndarray,
    scores: torch.Tensor,
    sources: list[str],
    head: Head,
) -> list[list]:
    """The fused predictions CSV's rows (:func:`~retinopathy.core.contract.fused_prediction_columns`)."""
    refer = referable(scores, head)
    rows = []
    for i, name in enumerate(names):
        values = [f"{float(scores[i]):.6f}"] if head.regression else [f"{p:.6f}" for p in scores[i].tolist()]
        rows.append(
            [name, patient_of(name), int(actual[i]), int(grades[i]), *values, f"{refer[i]:.6f}", sources[i]]
        )
    return rows


@dataclass(frozen=True)
class Fused:
    """What `fuse` writes for one arm: the blend, and the test split graded with both eyes.

    Attributes:
        blend: The blend's record (``method: none`` without one).
        metrics: ``metrics/fused/<arm>.json`` (:data:`~retinopathy.core.contract.FUSED_METRIC_KEYS`;
            empty for a skipped arm).
        outputs: The content of every file fuse writes, by file: they change together.
    """

    blend: BlendRecord
    metrics: dict[str, float]
    outputs: dict[Path, str | bytes]


def skipped(layout: Layout, arm: str, inputs: str, loss: str, reason: str) -> Fused:
    """A skipped arm: no blend, no numbers, header-only predictions and screening files."""
    return _empty(layout, arm, no_blend(inputs, loss, "", f"arm skipped: {reason}"), loss)


def unfused(layout: Layout, arm: str, inputs: str, loss: str, fingerprint: str) -> Fused:
    """A trained arm whose fusion is skipped (:data:`NO_PAIRS`): no blend and no numbers, as a skipped
    arm's, but the screening file's ``fusion`` entry says why (the report shows it)."""
    blend = no_blend(inputs, loss, fingerprint, f"fusion skipped: {NO_PAIRS}")
    result = _empty(layout, arm, blend, loss)
    facts = FusionFacts(
        method=blend.method,
        selection=blend.selection,
        epoch=0,
        images=0,
        fused=0,
        single_no_partner=0,
        val_images=0,
    )
    path = layout.fused(arm).screening
    return Fused(blend, {}, {**result.outputs, path: json_text(path, UnfusedRecord(facts).to_dict())})


def _empty(layout: Layout, arm: str, blend: BlendRecord, loss: str) -> Fused:
    """``blend``'s record with header-only predictions, ROC and reliability files, and empty metrics."""
    outputs: dict[Path, str | bytes] = {
        layout.blend(arm): blend.to_bytes(layout.blend(arm)),
        layout.fused_predictions(arm): csv_text(list(columns(loss == "regression")), []),
        **screening_contents(layout.fused(arm), None, None, probabilities=False),
        layout.fused_metrics(arm): json_text(layout.fused_metrics(arm), {}),
    }
    return Fused(blend, {}, outputs)


def _scored(
    names: list[str], actual: np.ndarray, grades: torch.Tensor, scores_: torch.Tensor, head: Head
) -> Scored:
    return scored(
        [patient_of(name) for name in names], actual, grades.numpy(), scores_.numpy(), head.regression
    )


def fused(
    layout: Layout,
    arm: str,
    blend: BlendRecord,
    pairs: dict[str, Pairs],
    extracted: dict[str, Extracted],
    names: dict[str, list[str]],
    head: Head,
    operating_points: Mapping[str, float],
    bootstrap: int,
    seed: int,
) -> Fused:
    """Grade the test split (and the validation split, for the operating points) with ``blend``; score it.

    Args:
        layout: Where fuse writes.
        arm: The arm.
        blend: :func:`learn_blend`'s record; ``pairs`` its splits' pairs of eyes.
        pairs: Each split's pairs of eyes (empty without a blend).
        extracted: Each split's features and outputs (:func:`extract_splits`).
        names: Each split's image names.
        head: The arm's head.
        operating_points: ``evaluate.operating_points``, as evaluate's.
        bootstrap: ``evaluate.bootstrap``: the resamples of patients for the intervals.
        seed: ``evaluate.seed``: seeds the bootstrap.

    Raises:
        RetinopathyError: the blend's scores are not finite, or the blend diverged (its file is refused).
    """
    graded = {
        split: grade_split(
            extracted[split].outputs, head, names[split], blend, pairs.get(split), layout.blend(arm)
        )
        for split in ("test", "val")
        if split in extracted and len(names[split])
    }
    test_scores, test_grades, test_sources = graded["test"]
    actual = extracted["test"].labels.numpy()
    test = _scored(names["test"], actual, test_grades, test_scores, head)
    val_scored = (
        _scored(names["val"], extracted["val"].labels.numpy(), graded["val"][1], graded["val"][0], head)
        if "val" in graded
        else None
    )
    screening = record(
        test,
        val_scored,
        operating_points,
        bootstrap,
        seed,
        probabilities=not head.regression,
    )
    fused_record = FusedScreeningRecord.of(
        screening,
        FusionFacts(
            method=blend.method,
            selection=blend.selection,
            epoch=blend.epoch,
            images=len(test_sources),
            fused=test_sources.count("fused"),
            single_no_partner=test_sources.count("single-no-partner"),
            val_images=len(val_scored) if val_scored is not None else 0,
        ),
    )
    numbers = scores(actual, test_grades.numpy(), confusion_tables(actual, test_grades.numpy()))
    metrics = {
        key: round(float(numbers[key]), METRIC_DECIMALS) for key in FUSED_METRIC_KEYS if key in numbers
    }
    rows = prediction_rows(names["test"], actual, test_grades.numpy(), test_scores, test_sources, head)
    # All four outputs change together, or none does (a full disk must not leave a new blend
    # beside the old metrics, which then no longer describe it).
    outputs: dict[Path, str | bytes] = {
        layout.blend(arm): blend.to_bytes(layout.blend(arm)),
        layout.fused_predictions(arm): csv_text(list(columns(head.regression)), rows),
        **screening_contents(layout.fused(arm), fused_record, test, probabilities=not head.regression),
        layout.fused_metrics(arm): json_text(layout.fused_metrics(arm), metrics),
    }
    return Fused(blend, metrics, outputs)
