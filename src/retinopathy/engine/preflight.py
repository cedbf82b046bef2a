"""Checks that can fail before any stage removes an output: the device, writable folders, the cache.

The `weights` stage runs them: it always runs, and before the stages that
train and evaluate, so a setting that would fail an hour later (a GPU that is
not there, a read-only folder) stops `dvc repro` before anything is removed
or trained. The stages whose outputs git tracks also keep them (``persist``
in dvc.yaml) if they fail anyway.
"""

from __future__ import annotations

from retinopathy.core.contract import ARMS, Layout
from retinopathy.core.files import check_writable
from retinopathy.data.cache import private_folder
from retinopathy.engine.runtime import check_device


def preflight(device: str, cache_dir: str | None, layout: Layout) -> None:
    """Check ``train.device`` (``device``), the folders every later stage writes, and ``data.cache_dir``.

    Raises:
        RetinopathyError: naming the setting or folder and the fix.
    """
    check_device(device)
    folders = {layout.manifests: "the weights manifests", layout.plots: "the report"}
    for arm in ARMS:
        files = layout.arm(arm)
        folders[files.model_dir] = f"the {arm} arm's checkpoints"
        folders[files.history.parent] = "the training history"
        folders[files.metrics.parent] = "the metrics"
        folders[files.confusion_counts.parent] = "the confusion matrices"
        folders[files.predictions.parent] = "the predictions"
        folders[files.screening_files.roc_image.parent] = "the ROC curves"
        folders[files.screening_files.reliability.parent] = "the reliability diagrams"
        fused = layout.fused(arm)
        folders[layout.fused_metrics(arm).parent] = "the figures graded with both eyes"
        folders[fused.roc_image.parent] = "the ROC curves graded with both eyes"
        folders[fused.reliability.parent] = "the reliability diagrams graded with both eyes"
    for folder, what in folders.items():
        check_writable(folder, what)
    if cache_dir:
        private_folder(cache_dir)
