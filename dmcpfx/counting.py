"""Independent FLOPs / parameter counters (forward hooks on the real modules).

MACs (multiply-accumulates) of conv and linear modules, the papers' convention:
``conv: out.numel() * (in_channels / groups) * prod(kernel_size)``,
``linear: out.numel() * in_features``; biases, norms and activations are not
counted. Counts are PER IMAGE: the MACs of one forward pass on ``example_inputs``
divided by its batch size (dim 0); torchvision resnet50 at 224x224 gives about 4.09e9.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .analysis.export import as_tuple


def count_flops(model: nn.Module, example_inputs) -> int:
    """MACs per image of conv/linear modules in an eval-mode forward on ``example_inputs``."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvNd):
            total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    inputs = as_tuple(example_inputs)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(total) // int(inputs[0].shape[0])


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return int(sum(p.numel() for p in model.parameters()))
