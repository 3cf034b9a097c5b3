"""Logits and labels that a classifier's loss cannot take, each a one-line :class:`ConfigError`:

- a model output that is not one tensor of logits ``(N, K, ...)`` with ``K >= 2`` classes (a
  dict, a tuple, a 1-d tensor, or one output, where cross-entropy is always 0 and nothing learns);
  a mapping with a ``logits`` tensor (Hugging Face's ``ModelOutput``) gives that tensor;
- labels that are not integer class indices of the logits' shape without the class dimension
  (float, one-hot or soft labels, a wrong shape), not torch's ``expected target dtype`` from
  inside the loss; other integer dtypes are cast to int64;
- labels out of the model's class range: the message names ``num_classes``, not torch's
  ``IndexError: Target 9 is out of bounds`` -- nor, on CUDA, a device-side assert that kills the
  process's CUDA context (the labels are checked before the loss kernel is launched)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import torch

from .errors import ConfigError

__all__ = ["IGNORE_INDEX", "checked_loss", "host_labels", "logits_tensor"]


#: the label cross-entropy ignores (a void pixel of a segmentation map): not scored either
IGNORE_INDEX = -100


def logits_tensor(out: object, where: str) -> torch.Tensor:
    """``out`` when it is ONE tensor of logits ``(N, classes, ...)``, or the ``logits`` entry of a
    mapping (Hugging Face's ``ModelOutput``: ``out.logits``); anything else (a dict without
    ``logits`` such as torchvision's FCN returns, a tuple, a 1-d tensor) is a :class:`ConfigError`
    that says what the model returned and how to wrap it."""
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        out = out["logits"]
    if isinstance(out, torch.Tensor) and out.ndim >= 2:
        if out.shape[1] < 2:
            raise ConfigError(
                f"{where} trains and scores a classifier, but the model returns {out.shape[1]} output per "
                f"example (shape {tuple(out.shape)}); cross-entropy needs at least 2 classes in dimension 1"
            )
        return out
    if isinstance(out, dict):
        got = f"a {type(out).__name__} with keys {list(out)[:6]}"
    elif isinstance(out, (tuple, list)):
        got = f"a {type(out).__name__} of {len(out)} values"
    elif isinstance(out, torch.Tensor):
        got = f"a tensor of shape {tuple(out.shape)}"
    else:
        got = type(out).__name__
    raise ConfigError(
        f"{where} trains and scores a classifier on the model's logits, one tensor (N, classes, ...), but the "
        f"model returns {got}; wrap it so that forward returns the logits (for example out['out'] or out[0])"
    )


def host_labels(batch: object) -> torch.Tensor | None:
    """The labels of a loader batch ``(inputs, labels, ...)`` while still on the host (CPU), else None."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        labels = batch[1]
        if isinstance(labels, torch.Tensor) and labels.device.type == "cpu":
            return labels
    return None


def _out_of_range(labels: torch.Tensor, k: int, where: str, ignore_index: int) -> ConfigError | None:
    """The error for the first label outside ``[0, k)`` (``ignore_index`` is allowed); None if all fit.
    A device tensor is copied to the host for this (a sync)."""
    flat = labels.reshape(-1).cpu()
    bad = flat[((flat < 0) | (flat >= k)) & (flat != ignore_index)]
    if bad.numel() == 0:
        return None
    return ConfigError(f"{where}: label {int(bad[0])} is out of range for the model's {k} outputs (num_classes={k}); "
                       f"build the model with num_classes >= the number of classes in the data "
                       f"(a label to ignore, such as a void 255, must be {ignore_index})")


def _check_label_kind(logits: torch.Tensor, labels: torch.Tensor, where: str) -> torch.Tensor:
    """``labels`` as int64 class indices of shape ``logits.shape`` without dimension 1; else a
    ConfigError that shows both shapes and the labels' dtype. Shapes and dtypes only: no sync."""
    want = tuple(logits.shape[:1]) + tuple(logits.shape[2:])
    integer = not labels.is_floating_point() and not labels.is_complex() and labels.dtype != torch.bool
    if not integer or tuple(labels.shape) != want:
        hint = (" (one-hot labels: pass labels.argmax(1); soft or multi-label targets are not supported, the loss is "
                "cross-entropy over classes)") if tuple(labels.shape) == tuple(logits.shape) else ""
        raise ConfigError(
            f"{where}: labels must be integer class indices of shape {want} for logits of shape "
            f"{tuple(logits.shape)}, got {str(labels.dtype).replace('torch.', '')} of shape {tuple(labels.shape)}{hint}"
        )
    return labels if labels.dtype == torch.int64 else labels.long()


def checked_loss(loss_fn: Callable[..., torch.Tensor], logits: torch.Tensor, labels: torch.Tensor, where: str,
                 *, host: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """``loss_fn(logits (N, K), labels (N,), **kwargs)``; a label outside ``[0, K)`` is a
    :class:`ConfigError` naming the model's ``K`` outputs (its num_classes).

    On a device other than the CPU the labels are checked BEFORE the loss runs (a CUDA kernel
    would trip a device-side assert): on ``host``, the same labels still on the CPU (no sync),
    or else on ``labels`` themselves (one host copy)."""
    k = logits.shape[1] if logits.dim() > 1 else 1
    labels = _check_label_kind(logits, labels, where)
    ignore_index = int(kwargs.get("ignore_index", getattr(loss_fn, "ignore_index", IGNORE_INDEX)))
    if labels.device.type != "cpu":
        ref = host if host is not None and host.device.type == "cpu" and host.shape == labels.shape else labels
        error = _out_of_range(ref, k, where, ignore_index)
        if error is not None:
            raise error
    try:
        return loss_fn(logits, labels, **kwargs)
    except IndexError as exc:
        error = _out_of_range(labels, k, where, ignore_index)
        if error is None:
            raise
        raise error from exc
