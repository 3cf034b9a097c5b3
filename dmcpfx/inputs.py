"""Example inputs: a tensor or a tuple of tensors, dim 0 the batch."""
from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["as_tuple"]


def as_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    """Normalize ``example_inputs`` (a tensor or a tuple of tensors) to a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise ConfigError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")
