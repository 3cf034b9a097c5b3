"""Labels out of the model's class range: one line naming ``num_classes``, not torch's
``IndexError: Target 9 is out of bounds``."""
from __future__ import annotations

from typing import Callable

import torch

from .errors import ConfigError

__all__ = ["checked_loss"]


def checked_loss(loss_fn: Callable[..., torch.Tensor], logits: torch.Tensor, labels: torch.Tensor, where: str,
                 **kwargs) -> torch.Tensor:
    """``loss_fn(logits (N, K), labels (N,), **kwargs)``; a label outside ``[0, K)`` is a
    :class:`ConfigError` naming the model's ``K`` outputs (its num_classes)."""
    try:
        return loss_fn(logits, labels, **kwargs)
    except IndexError as exc:
        k = logits.shape[1] if logits.dim() > 1 else 1
        bad = labels[(labels < 0) | (labels >= k)] if labels.dtype != torch.bool else labels[:0]
        shown = f"label {int(bad[0])}" if bad.numel() else "a label"
        raise ConfigError(f"{where}: {shown} is out of range for the model's {k} outputs (num_classes={k}); "
                          f"build the model with num_classes >= the number of classes in the data") from exc
