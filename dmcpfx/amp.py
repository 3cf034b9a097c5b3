"""Mixed precision and device placement shared by the search, the retraining and the benchmarks.

``amp`` is spelled the same everywhere (search, derive, retrain, config): ``None`` (float32),
``"bf16"`` / ``"bfloat16"`` or ``"fp16"`` / ``"float16"`` (:data:`AMP_CHOICES`).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from .batches import unpack
from .errors import ConfigError

__all__ = ["AMP_CHOICES", "amp_dtype", "autocast", "autocast_for", "to_device"]

_AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
               "float16": torch.float16}
#: every accepted spelling of ``amp``
AMP_CHOICES = tuple(_AMP_DTYPES)


def amp_dtype(amp: str | None) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (None: float32); an unknown spelling is a ConfigError."""
    if amp not in _AMP_DTYPES:
        raise ConfigError(f"amp must be one of 'bf16', 'fp16' or None, got {amp!r}")
    return _AMP_DTYPES[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` to ``dtype``; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def autocast_for(amp: str | None, device: torch.device):
    """Autocast to ``amp`` (``"bf16"``, ``"fp16"`` or None: float32) on ``device``."""
    return autocast(device, amp_dtype(amp))


def to_device(batch: Any, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of a loader batch on ``device``; 4-d inputs ``(N, C, H, W)`` in
    channels-last memory format when ``channels_last``."""
    x, y = unpack(batch)  # a one-line ConfigError for a dict, numpy arrays or an empty batch
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)
