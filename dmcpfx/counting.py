"""Independent FLOPs / parameter counters (forward hooks on the real modules).

MACs (multiply-accumulates) of conv and linear modules, the papers' convention:
``conv: out.numel() * (in_channels / groups) * prod(kernel_size)``,
``linear: out.numel() * in_features``; biases, norms and activations are not
counted. The count covers one forward pass on ``example_inputs`` (pass a batch of
one for per-image figures: torchvision resnet50 at 224x224 gives about 4.09e9).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .tracing import as_tuple


def count_flops(model: nn.Module, example_inputs) -> int:
    """MACs of conv/linear modules for one eval-mode forward on ``example_inputs``."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvNd):
            total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*as_tuple(example_inputs))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(total)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return int(sum(p.numel() for p in model.parameters()))
