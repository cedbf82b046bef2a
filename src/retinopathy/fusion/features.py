"""Each image's features and outputs from a trained grader: one pass, in eval mode, without augmentation.

The features are the input of the network's last linear layer (for a ResNet
the globally pooled output of its last stage, 512 or 2048 numbers); the
outputs are that layer's, exactly the grader's own (5 logits or 1 value).
Both come from one forward pass of a copy of the grader whose last linear
layer is cut off, so the single-eye grades here are the grades `evaluate`
computes, batch for batch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from retinopathy.core.errors import RetinopathyError
from retinopathy.engine import loops
from retinopathy.engine.runtime import Runtime
from retinopathy.models.head import Head


@dataclass(frozen=True)
class Extracted:
    """One split's features [N, D], outputs [N, K] (float32, CPU) and labels [N] (the loader's)."""

    features: Tensor
    outputs: Tensor
    labels: Tensor


def split_last_linear(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """A copy of ``model`` without its last linear layer (an identity there), and that layer.

    Raises:
        RetinopathyError: the model has no linear layer.
    """
    trunk = copy.deepcopy(model)
    names = [name for name, module in trunk.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise RetinopathyError(
            f"{type(model).__name__} has no linear layer whose input could be the "
            "features of both eyes; set fuse.method to none"
        )
    parent_name, _, leaf = names[-1].rpartition(".")
    parent = trunk.get_submodule(parent_name)
    linear = getattr(parent, leaf)
    setattr(parent, leaf, nn.Identity())
    return trunk, linear


def blend_inputs(extracted: Extracted, inputs: str, head: Head) -> Tensor:
    """What the blend reads per image: the ``features``, or the head's ``scores`` ([N, 5] or [N, 1])."""
    if inputs == "features":
        return extracted.features
    return head.scores(extracted.outputs).reshape(len(extracted.outputs), -1)


def blend_width(grader: nn.Module, inputs: str, head: Head) -> int:
    """How many numbers per eye :func:`blend_inputs` gives of ``grader``: a blend must be learned on as many.

    ``features``: the input width of the network's last linear layer (512 for a ResNet18,
    2048 for a ResNet50); ``scores``: the head's outputs (5, or 1 for regression).
    """
    if inputs != "features":
        return head.num_outputs
    linears = [module for module in grader.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise RetinopathyError(
            f"{type(grader).__name__} has no linear layer whose input could be the "
            "features of both eyes; set fuse.method to none"
        )
    return linears[-1].in_features


@torch.no_grad()
def extract(
    grader: nn.Module, batches: Iterable, runtime: Runtime, description: str, lower: str
) -> Extracted:
    """Features, outputs and labels of every image of ``batches``, in their order.

    Raises:
        OutOfMemory: saying to lower ``lower``.
    """
    trunk, linear = split_last_linear(grader)
    trunk.eval()
    features, outputs, labels = [], [], []
    with loops.memory_guard(f"extracting features ({description})", lower):
        for images, batch_labels in loops.progress(batches, description, runtime.process):
            with runtime.autocast():
                batch_features = trunk(images.to(runtime.device, non_blocking=True))
                batch_outputs = linear(batch_features)
            features.append(batch_features.float())
            outputs.append(batch_outputs.float())
            labels.append(batch_labels)
    if not features:
        return Extracted(torch.empty(0, 0), torch.empty(0, 0), torch.empty(0, dtype=torch.int64))
    return Extracted(torch.cat(features).cpu(), torch.cat(outputs).cpu(), torch.cat(labels))
