"""The optimizer and its learning-rate schedule, stepped once per batch.

SGD with momentum and weight decay, as the lab and the field use it (the field
adds Nesterov momentum). The schedule is ``constant`` (the lab) or ``cosine``
(Huang et al. 2023: from the base rate down to 0 at the last step), either
after a linear warm-up from 0. It is a function of the step alone, so its state
in the checkpoint is one integer and a resumed run continues it exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from retinopathy.core.contract import SCHEDULES
from retinopathy.engine.runtime import Runtime


def make_optimizer(
    model: nn.Module,
    runtime: Runtime,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool = False,
) -> torch.optim.SGD:
    """SGD over ``model``'s parameters; the fused CUDA kernel where there is one, foreach elsewhere."""
    implementation = {"fused": True} if runtime.device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
        **implementation,
    )


def lr_factor(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of step ``step`` (0-based) as a fraction of the base rate.

    Warm-up: (step + 1) / warmup_steps for the first ``warmup_steps`` steps, so
    the first step already moves. Then constant 1, or a half cosine from 1 at the
    end of the warm-up to 0 after the last of ``total_steps`` steps.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-batch scheduler following :func:`lr_factor` (call ``step()`` after each optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, schedule, warmup_steps, total_steps)
    )
