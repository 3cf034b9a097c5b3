"""Argument checks of the public functions: a wrong type is a ``TypeError`` naming the function
and the argument; a bad value (NaN in the example input, an empty batch, meta tensors) is an
:class:`~dmcpfx.errors.InputError` naming it, before any tracing or slicing can blame the model."""
from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from .errors import InputError

__all__ = ["check_module", "check_example", "check_path", "check_number"]


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def check_module(value: Any, func: str, name: str = "model") -> nn.Module:
    """``value`` is an ``nn.Module`` with real (not meta) parameters."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{func}(): {name} must be a torch.nn.Module, got {_kind(value)}")
    for pname, tensor in list(value.named_parameters()) + list(value.named_buffers()):
        if tensor.is_meta:
            raise InputError(f"{func}(): {name} has tensors on the meta device (e.g. {pname!r}); load real weights "
                             f"first (model.to_empty(device='cpu') and initialize, or load a state dict)")
    return value


def check_example(value: Any, func: str, name: str = "example_inputs") -> tuple[torch.Tensor, ...]:
    """``value`` is a tensor or a non-empty tuple/list of tensors: real, a non-empty batch, finite."""
    tensors = (value,) if isinstance(value, torch.Tensor) else tuple(value) if isinstance(value, (tuple, list)) else None
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(f"{func}(): {name} must be a tensor or a tuple of tensors, got {_kind(value)}")
    for i, t in enumerate(tensors):
        which = name if len(tensors) == 1 else f"{name}[{i}]"
        if t.is_meta:
            raise InputError(f"{func}(): {which} is on the meta device; pass a real tensor")
        if t.dim() > 0 and t.shape[0] == 0:
            raise InputError(f"{func}(): {which} is an empty batch (shape {list(t.shape)}); pass at least one sample")
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise InputError(f"{func}(): {which} holds NaN or inf values; pass a finite example input")
    return tensors


def check_path(value: Any, func: str, name: str) -> None:
    """``value`` is a ``str`` or ``os.PathLike``."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{func}(): {name} must be a path (str or os.PathLike), got {_kind(value)}")


def check_number(value: Any, func: str, name: str, *, low: float, integer: bool = False, low_open: bool = False,
                 high: float | None = None) -> None:
    """``value`` is a finite number (an int when ``integer``) ``>= low`` (``> low`` when ``low_open``),
    and ``<= high`` when given."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{func}(): {name} must be {'an integer' if integer else 'a number'}, got {_kind(value)}")
    if not math.isfinite(value) or (value <= low if low_open else value < low):
        raise InputError(f"{func}(): {name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise InputError(f"{func}(): {name} must be <= {high}, got {value!r}")
