"""The optimizer: SGD with momentum and weight decay, as the lab and the field use it."""

from __future__ import annotations

import torch
from torch import nn

from retinopathy.engine.runtime import Runtime


def make_optimizer(model: nn.Module, runtime: Runtime, *, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.SGD:
    """SGD over ``model``'s parameters; the fused CUDA kernel where there is one, foreach elsewhere."""
    implementation = {"fused": True} if runtime.device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           **implementation)
