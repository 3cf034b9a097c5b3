"""A loader's batches as every stage takes them: ``(inputs, labels, ...)`` with tensors, not
empty; and a model that fails on them named in one line instead of torch's stack trace.

- :func:`unpack` -- ``(inputs, labels)`` of a batch; a dict, a bare tensor, numpy arrays or an
  empty batch is a :class:`ConfigError` that says what the loader yielded;
- :func:`model_fails_on` -- around a forward on a loader's inputs: a ``RuntimeError`` from the
  model (a wrong channel count, float64 or uint8 images, a spatial size a flatten cannot take)
  becomes one line that shows the inputs next to the example inputs the model was analyzed with
  (or, without them, says it was the loader's first batch: :func:`first_batch_fails_on`). An
  out-of-memory error stays itself.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from .errors import ConfigError

__all__ = ["describe", "first_batch_fails_on", "model_fails_on", "unpack"]


def describe(t: torch.Tensor) -> str:
    """``float32 of shape (N, C, H, W)``."""
    return f"{str(t.dtype).replace('torch.', '')} of shape {tuple(t.shape)}"


def unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of a loader batch ``(inputs, labels, ...)``, both tensors, at least one example."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ConfigError(f"the loaders must yield (inputs, labels) pairs, got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError(f"the loaders must yield tensors (inputs, labels), got ({type(x).__name__}, "
                          f"{type(y).__name__}); convert them with torch.as_tensor in the dataset")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ConfigError(f"the loader yielded a batch without examples (inputs {describe(x)})")
    return x, y


def _difference(x: torch.Tensor, example: torch.Tensor) -> str | None:
    """How ``x`` differs from ``example`` apart from the batch size, or None."""
    if x.dtype != example.dtype:
        return "dtype"
    if x.dim() != example.dim():
        return "number of dimensions"
    dims = [str(d) for d in range(1, x.dim()) if x.shape[d] != example.shape[d]]
    return f"dimension {', '.join(dims)}" if dims else None


@contextlib.contextmanager
def model_fails_on(where: str, x: torch.Tensor, example: torch.Tensor | None) -> Iterator[None]:
    """Run a forward on the loader's inputs ``x``. A ``RuntimeError`` raised there becomes a
    ConfigError naming ``where``, the inputs and torch's first line, when ``x`` differs from
    ``example`` (dtype, dimensions, any size but the batch's), or when ``example`` is None (the
    caller passes None for its first batch only, and ``contextlib.nullcontext()`` afterwards)."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if example is None:
            raise ConfigError(f"{where}: the model fails on the loader's first batch (inputs {describe(x)}): "
                              f"{said}") from exc
        what = _difference(x, example)
        if what is None:
            raise
        raise ConfigError(f"{where}: the model fails on the loader's inputs ({describe(x)}), which differ in "
                          f"{what} from the example inputs it was analyzed with ({describe(example)}): {said}") from exc


def first_batch_fails_on(where: str, x: torch.Tensor, index: int):
    """:func:`model_fails_on` without example inputs, for the loader's first batch (``index`` 0);
    a no-op context for the later ones."""
    return model_fails_on(where, x, None) if index == 0 else contextlib.nullcontext()
