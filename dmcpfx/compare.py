"""NaN-aware output comparison, shared by every check (materialize, ONNX, slimmable).

``nan > tol`` is False and ``max(0.0, nan)`` is 0.0, so a naive check passes a NaN
output. Here any NaN, or an infinity that the other side does not have at the same
place with the same sign, makes the difference ``inf``: a mismatch.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["max_abs_diff", "module_matches", "output_scale", "outputs_match", "run_eval"]


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float64)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest ``|a - b|`` (tensors or arrays); ``inf`` for a NaN or an unmatched infinity.

    Raises ``ValueError`` when the shapes differ. Empty inputs give 0.0.
    """
    x, y = _array(a), _array(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if x.size == 0:
        return 0.0
    if np.isnan(x).any() or np.isnan(y).any():
        return math.inf
    xinf, yinf = np.isinf(x), np.isinf(y)
    if (xinf != yinf).any() or (x[xinf] != y[yinf]).any():
        return math.inf
    finite = ~xinf
    return float(np.abs(x[finite] - y[finite]).max()) if finite.any() else 0.0


def output_scale(b: Any) -> float:
    """``max |b|`` over the finite entries (0.0 when there are none)."""
    y = _array(b)
    y = y[np.isfinite(y)]
    return float(np.abs(y).max()) if y.size else 0.0


def outputs_match(got: Any, want: Any, rtol: float, *, floor: float = 1.0) -> bool:
    """``max_abs_diff(got, want) <= rtol * max(output_scale(want), floor)``; False on a shape
    mismatch, a NaN or an unmatched infinity."""
    try:
        diff = max_abs_diff(got, want)
    except ValueError:
        return False
    return diff <= rtol * max(output_scale(want), floor)


def run_eval(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """``module(*inputs)`` in eval mode without autograd; every submodule's train flag is restored."""
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            return module(*inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _flatten(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _flatten(v)]
    return []


def module_matches(module: nn.Module, inputs: tuple[torch.Tensor, ...], reference: Any, rtol: float) -> bool:
    """Whether ``module``'s eval output on ``inputs`` matches ``reference`` (tensor, or nested
    tuples / lists / dicts of tensors) within ``rtol`` (:func:`outputs_match`, floor 1e-6);
    a crash, a different structure or shape, a NaN or an unmatched inf is a mismatch."""
    try:
        out = run_eval(module, inputs)
    except Exception:  # noqa: BLE001 - a crash is a mismatch; the caller falls back or raises
        return False
    return nested_outputs_match(out, reference, rtol)


def nested_outputs_match(out: Any, reference: Any, rtol: float) -> bool:
    """Whether ``out`` and ``reference`` (tensors, or nested tuples / lists / dicts of them) have
    the same structure and shapes and every tensor matches within ``rtol`` (floor 1e-6)."""
    got, want = _flatten(out), _flatten(reference)
    if len(got) != len(want):
        return False
    return all(a.shape == b.shape and outputs_match(a, b, rtol, floor=1e-6) for a, b in zip(got, want))
