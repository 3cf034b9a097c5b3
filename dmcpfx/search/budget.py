"""Resource budgets of a search space (DESIGN.md section 4).

FLOPs are multiply-accumulates (MACs) of ONE forward pass on the space's example
input, as counted by ``space.flops``; params are parameter counts (``space.params``).

- :func:`parse_target` turns ``2e9`` / ``"2G"`` / ``"300M"`` / ``0.5`` (a ratio of the full
  model) into an absolute number in the same unit as ``full``;
- :func:`expected_flops` / :func:`expected_params` -- the differentiable expectation under
  the Markov gates: each group's width is replaced by ``E[c]`` (section 3), products of
  expectations for layers with two pruned sides;
- :func:`exact_flops` / :func:`exact_params` -- the integer count of a concrete width
  assignment (equal to what an independent counter measures on the materialized model);
- :func:`budget_loss` -- the official piecewise-log loss, in consistent units.
"""
from __future__ import annotations

import math
import re
import weakref
from typing import Any, Mapping

import torch

from ..errors import ConfigError
from .count_poly import CountPolynomial
from .gates import StackedExpectedWidths

__all__ = [
    "budget_loss",
    "exact_flops",
    "exact_params",
    "expected_flops",
    "expected_params",
    "expected_width_values",
    "expected_widths",
    "human",
    "min_widths",
    "parse_target",
]

_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TARGET_RE = re.compile(
    r"^\s*(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<suffix>ms|[kmgt%]?)\s*"
    r"(?:macs?|flops?|params?)?\s*$",
    re.IGNORECASE,
)


def human(n: float) -> str:
    """``1234567 -> '1.23M'`` (powers of 1000)."""
    n = float(n)
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def _fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.4e}"


def parse_target(target: int | float | str, full: int | float, *, unit: str = "MACs") -> float:
    """Absolute budget from an absolute number or a ratio of the full model.

    Accepted forms (case-insensitive, optional unit word ``MACs``/``FLOPs``/``params``):

    - a ratio ``0 < x <= 1`` (float or string): ``0.5``, ``"0.5"`` -> ``0.5 * full``;
    - a percentage: ``"50%"`` -> ``0.5 * full``;
    - an absolute count ``> 1``: ``2e9``, ``2_000_000_000``, ``"1.5e9"``, ``"2G"``, ``"300M"``,
      ``"2 GMACs"`` (suffixes k, M, G, T are powers of 1000).

    A latency (``unit="ms"``, milliseconds per batch): a ratio or percentage as above, or
    milliseconds ``"12ms"`` (a number above 1 without a suffix also reads as ms); ``"12ms"`` with
    another unit is an error that says to set ``budget_metric: latency``.

    Returns the target in the unit of ``full`` (``unit`` only names it in errors).
    Raises :class:`ConfigError` for unparsable, non-positive or non-finite values and for
    a target above the full model (the message names both numbers).
    """
    full = float(full)
    if isinstance(target, bool) or not isinstance(target, (int, float, str)):
        raise ConfigError(f"target must be a number or a string like '2G' or '0.5', got {target!r}")
    if isinstance(target, str):
        m = _TARGET_RE.match(target.replace("_", ""))
        if m is None:
            raise ConfigError(
                f"cannot parse target {target!r}: expected a ratio like '0.5' or '50%', "
                f"or an absolute count like '2e9', '2G', '300M'"
            )
        value = float(m.group("num"))
        suffix = m.group("suffix").lower()
        if suffix == "ms" and unit != "ms":
            raise ConfigError(f"target {target!r} is a latency but the budget is in {unit}: set budget_metric: "
                              f"latency (and a latency_table)")
        if unit == "ms" and suffix in _SUFFIXES and suffix:
            raise ConfigError(f"target {target!r} does not fit a latency budget: use a ratio, '50%' or '12ms'")
        if suffix == "ms":
            value, is_ratio = value, False
        elif suffix == "%":
            value, is_ratio = value / 100.0, True
        else:
            value, is_ratio = value * _SUFFIXES[suffix], suffix == "" and 0.0 < value <= 1.0
    else:
        value = float(target)
        is_ratio = 0.0 < value <= 1.0
    if not math.isfinite(value) or value <= 0.0:
        raise ConfigError(f"target must be positive and finite, got {target!r}")
    absolute = value * full if is_ratio else value
    if absolute > full * (1.0 + 1e-9):
        raise ConfigError(
            f"target {_fmt(absolute)} {unit} (from {target!r}) is above the full model's "
            f"{_fmt(full)} {unit}; give a smaller count or a ratio in (0, 1]"
        )
    return absolute


# --- expected and exact counts -------------------------------------------------------------
def expected_widths(space: Any) -> dict[str, torch.Tensor]:
    """``{group id: E[c]}`` for every gate, float64 0-dim tensors differentiable wrt alpha."""
    return {gid: gate.expected_width().double() for gid, gate in space.gates().items()}


def min_widths(space: Any) -> dict[str, int]:
    """``{group id: smallest candidate width}`` (the ``min`` sub-net)."""
    return {gid: int(info.candidates[0]) for gid, info in space.groups.items()}


class _ExpectedCounts:
    """A space's counts as polynomials of its stacked ``E[c]`` (:mod:`.count_poly`), built once."""

    def __init__(self, space: Any):
        gates = space.gates()
        self.widths = StackedExpectedWidths(gates.values())
        self.ids = list(gates)
        self.graph = space.graph
        self.polys: dict[str, CountPolynomial | None] = {}

    def __call__(self, space: Any, kind: str) -> torch.Tensor:
        if kind not in self.polys:
            try:
                self.polys[kind] = CountPolynomial(getattr(self.graph, kind), self.ids)
            except TypeError:  # a count that is not a polynomial of the widths: count per step
                self.polys[kind] = None
        poly = self.polys[kind]
        if poly is None:
            return torch.as_tensor(getattr(space, kind)(expected_widths(space)))
        return poly(self.widths())


_COUNTS: "weakref.WeakKeyDictionary[Any, _ExpectedCounts]" = weakref.WeakKeyDictionary()


def _expected_count(space: Any, kind: str) -> torch.Tensor:
    if not hasattr(space, "graph"):  # a stand-in space (tests): the graph-free definition
        return torch.as_tensor(getattr(space, kind)(expected_widths(space)))
    counts = _COUNTS.get(space)
    if counts is None:
        counts = _COUNTS[space] = _ExpectedCounts(space)
    return counts(space, kind)


def expected_flops(space: Any) -> torch.Tensor:
    """Expected MACs under the gates' Markov chains (DESIGN.md section 4).

    ``space.flops`` evaluated with every group's width replaced by ``E[c]``
    (``min_ch + g * sum_k P_k``, section 3); computed in float64 so that the value
    matches the exact integer count to ~1e-12 relative when every marginal is 0 or 1.
    Returns a 0-dim float64 tensor on the alphas' device, differentiable wrt every alpha.
    Evaluated as the count's polynomial in the stacked ``E[c]`` (:mod:`.count_poly`): a few
    kernels per step instead of one per layer and gate.
    """
    return _expected_count(space, "flops")


def expected_params(space: Any) -> torch.Tensor:
    """Expected parameter count (same construction as :func:`expected_flops`)."""
    return _expected_count(space, "params")


def _int_widths(space: Any, widths: Mapping[str, Any]) -> dict[str, int]:
    out = {}
    for gid, w in widths.items():
        if gid not in space.groups:
            raise ConfigError(f"unknown channel group {gid!r}; prunable groups are {sorted(space.groups)}")
        if isinstance(w, torch.Tensor):
            w = w.item()
        if float(w) != int(w):
            raise ConfigError(f"width of group {gid!r} must be an integer, got {w!r}")
        out[gid] = int(w)
    return out


def exact_flops(space: Any, widths: Mapping[str, int]) -> int:
    """Exact MACs of one forward at integer ``widths`` (missing groups at full width)."""
    return int(space.flops(_int_widths(space, widths)))


def exact_params(space: Any, widths: Mapping[str, int]) -> int:
    """Exact parameter count at integer ``widths`` (missing groups at full width)."""
    return int(space.params(_int_widths(space, widths)))


# --- the loss ----------------------------------------------------------------------------
def budget_loss(
    expected: torch.Tensor | float,
    target: float,
    *,
    band: float = 0.95,
    scale: float | None = None,
) -> torch.Tensor:
    """Official piecewise-log budget loss (DESIGN.md section 4), target ``T``, expectation ``E``.

    ``E < band*T: log|E - T|``;  ``band*T <= E < T: 0``;  ``E >= T: log|E - band*T|``.

    Units: ``expected`` and ``target`` must be in the SAME unit (e.g. both MACs). Both are
    divided by ``scale`` (default ``T``) before the log, so the value is the log of a
    relative distance (dimensionless, no float32 overflow); the gradient wrt ``E`` is
    ``1 / (E - T)`` (resp. ``1 / (E - band*T)``) whatever the scale, because
    ``log(x / s) = log x - log s``. The 0.1 weight is applied by the caller.

    Branch-free (``torch.where``; no host sync on GPU); the inactive branches are clamped
    away from ``log 0`` so their (masked) gradients stay finite.
    Returns a 0-dim tensor with ``expected``'s dtype and device.
    """
    t = float(target)
    if not t > 0.0:
        raise ConfigError(f"budget target must be positive, got {target!r}")
    if not 0.0 < band <= 1.0:
        raise ConfigError(f"budget band must be in (0, 1], got {band}")
    s = t if scale is None else float(scale)
    e = torch.as_tensor(expected, dtype=torch.float64 if not isinstance(expected, torch.Tensor) else None)
    if not e.is_floating_point():
        e = e.double()
    e = e / s
    tt, lo_edge = t / s, band * t / s
    eps = 1e-12
    below = torch.log((e - tt).abs().clamp_min(eps))
    above = torch.log((e - lo_edge).abs().clamp_min(eps))
    return torch.where(e < lo_edge, below, torch.where(e < tt, torch.zeros_like(e), above))


def expected_width_values(space: Any) -> dict[str, float]:
    """``{group id: E[c]}`` as plain floats (channels; for records and derive)."""
    with torch.no_grad():
        return {gid: float(g.expected_width()) for gid, g in space.gates().items()}
