"""Per-layer latency tables and the expected latency under the Markov gates (DESIGN.md section 4).

A :class:`LatencyTable` holds, for every conv / linear layer of a search space whose width can
change, its measured latency on one backend at a grid of (input channels, output channels)
pairs. Layers of the same geometry (kernel, stride, padding, groups, input size, full widths)
share one grid. Between grid points the latency is interpolated bilinearly; the default grid
is every candidate width of the two gates, so the Markov candidates are measured exactly.

- :meth:`LatencyTable.latency` -- the predicted latency (ms per batch) of concrete widths;
- :meth:`LatencyTable.expected` -- the expected latency under the gates' Markov chains, exact
  under the table and differentiable in every alpha:
  ``E[lat] = sum_layers sum_{i,o} P(c_in = i) P(c_out = o) LUT[i, o]`` with
  ``P(c = candidate_k) = P_k - P_{k+1}`` (``P_0 = 1``, ``P_{n+1} = 0``). A layer whose two sides
  are the same group (a depthwise conv) sums ``P(c = i) LUT[i, i]``. A side made of several
  pruned groups (a concatenation) enters with its expected width (an approximation).

Both are ``overhead_ms + calibration * (sum of the layers)``, in the runtime's milliseconds. A
layer inside a network costs more than alone (activations and additions fused into it, the
dispatch of each node), and relatively more when it is thin, so the two numbers are fitted on
two whole models measured on the backend: the full model and a uniformly thin one (about 25%
of every width); the constant may be negative (see ``latency_build._fit``). Without the thin
model, ``overhead_ms`` is 0 and ``calibration`` is measured whole model / sum of its full-width
layers. Layers that
are not ``nn.Conv2d`` / ``nn.Linear`` modules are not in the table (their time, like the rest,
is in that proportion), and each is listed with the reason.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..errors import ArchError

__all__ = ["Grid", "LayerEntry", "LatencyTable", "side_widths"]


@dataclass
class Grid:
    """Latencies ``ms[a][b]`` (ms per call) at input widths ``cin[a]`` and output widths ``cout[b]``
    (both ascending). ``same_side``: input and output are one group (a depthwise conv), so only
    the diagonal ``cin == cout`` is measured and used."""

    cin: list[int]
    cout: list[int]
    ms: list[list[float]]
    same_side: bool = False

    def at(self, c_in: float, c_out: float) -> float:
        """Bilinear interpolation (clamped to the grid's range) at any widths."""
        if self.same_side:
            return _interp1(self.cin, [self.ms[a][a] for a in range(len(self.cin))], c_in)
        a0, a1, ta = _bracket(self.cin, c_in)
        b0, b1, tb = _bracket(self.cout, c_out)
        top = self.ms[a0][b0] * (1 - tb) + self.ms[a0][b1] * tb
        low = self.ms[a1][b0] * (1 - tb) + self.ms[a1][b1] * tb
        return top * (1 - ta) + low * ta


def _bracket(xs: list[int], x: float) -> tuple[int, int, float]:
    """Indices of the grid points around ``x`` and the weight of the upper one."""
    if len(xs) == 1 or x <= xs[0]:
        return 0, 0, 0.0
    if x >= xs[-1]:
        return len(xs) - 1, len(xs) - 1, 0.0
    hi = bisect.bisect_right(xs, x)
    lo = hi - 1
    return lo, hi, (x - xs[lo]) / (xs[hi] - xs[lo])


def _interp1(xs: list[int], ys: list[float], x: float) -> float:
    lo, hi, t = _bracket(xs, x)
    return ys[lo] * (1 - t) + ys[hi] * t


@dataclass(frozen=True)
class LayerEntry:
    """One timed layer: its geometry key (into :attr:`LatencyTable.grids`) and its two sides.

    A side's width is ``fixed + block * w`` with ``w`` the width of its ``group``; a side whose
    ``group`` is None (frozen, or made of several groups) stays at its ``full`` width.
    """

    module: str
    key: str
    in_full: int
    out_full: int
    in_group: str | None = None
    out_group: str | None = None
    in_fixed: int = 0
    in_block: int = 1
    out_fixed: int = 0
    out_block: int = 1

    def side(self, role: str) -> tuple[str | None, int, int, int]:
        """``(group, fixed, block, full)`` of side ``role`` (``"in"`` or ``"out"``)."""
        if role == "in":
            return self.in_group, self.in_fixed, self.in_block, self.in_full
        return self.out_group, self.out_fixed, self.out_block, self.out_full


def side_widths(graph: Any, layout: Any, groups: Mapping[str, Any]) -> tuple[str | None, int, int]:
    """``(group, fixed, block)`` of a layer side: the side's width is ``fixed + block * w`` with
    ``w`` the width of ``group``; ``group`` is None when no single gated group decides it."""
    if layout is None:
        return None, 0, 1
    pruned = []
    fixed = 0
    for seg in layout.segs:
        g = graph.group_of(seg)
        if g.id in groups and not g.frozen and seg.length == g.width:
            pruned.append(g.id)
        else:
            fixed += seg.length
    if len(pruned) != 1:
        return None, 0, 1
    return pruned[0], fixed * layout.block, layout.block


@dataclass
class LatencyTable:
    """Measured per-layer latencies of one search space on one backend (see the module doc).

    ``meta``: backend, batch, threads, dtype, library versions and the machine; ``full_ms``:
    the whole model measured at full width; ``skipped``: ``{module: reason}`` of the
    conv/linear layers left out.
    """

    layers: dict[str, LayerEntry]
    grids: dict[str, Grid]
    meta: dict[str, Any]
    full_ms: float
    skipped: dict[str, str] = field(default_factory=dict)
    overhead_ms: float = 0.0  # the constant of the fit (ms; may be negative, see the module doc)

    # --- sums -------------------------------------------------------------------------
    @property
    def layers_full_ms(self) -> float:
        """Sum of every timed layer at its full widths (ms)."""
        return sum(self.grids[e.key].at(e.in_full, e.out_full) for e in self.layers.values())

    @property
    def calibration(self) -> float:
        """Milliseconds of the whole model per millisecond of its layers timed alone (the slope)."""
        total = self.layers_full_ms
        return (self.full_ms - self.overhead_ms) / total if total > 0 else 1.0

    def latency(self, widths: Mapping[str, int]) -> float:
        """Predicted latency (ms per batch) at integer ``widths`` (missing groups: full)."""
        total = 0.0
        for entry in self.layers.values():
            c_in, c_out = (_side_width(entry.side(role), widths) for role in ("in", "out"))
            total += self.grids[entry.key].at(c_in, c_out)
        return self.overhead_ms + total * self.calibration

    def expected(self, gates: Mapping[str, Any]) -> torch.Tensor:
        """Expected latency (ms per batch) under the gates' chains: a 0-dim float64 tensor,
        differentiable in every alpha (see the module docstring)."""
        total = torch.zeros((), dtype=torch.float64)
        for entry in self.layers.values():
            p_in, x_in = _distribution(gates, entry.side("in"))
            p_out, x_out = _distribution(gates, entry.side("out"))
            diagonal = entry.in_group is not None and entry.in_group == entry.out_group and entry.in_group in gates
            lut = self._lut(entry.key, tuple(x_in), tuple(x_out), diagonal).to(p_in.device)
            term = (p_in * lut).sum() if diagonal else p_in @ lut @ p_out
            total = total.to(term.device) + term
        return self.overhead_ms + total * self.calibration

    def _lut(self, key: str, x_in: tuple, x_out: tuple, diagonal: bool) -> torch.Tensor:
        """The grid read at the candidate widths (a vector on the diagonal), float64; computed once
        per layer shape and candidate set, since the architecture step asks for it every step."""
        cache = self.__dict__.setdefault("_luts", {})
        ck = (key, x_in, x_out, diagonal)
        if ck not in cache:
            grid = self.grids[key]
            values = ([grid.at(i, o) for i, o in zip(x_in, x_out)] if diagonal
                      else [[grid.at(i, o) for o in x_out] for i in x_in])
            cache[ck] = torch.tensor(values, dtype=torch.float64)
        return cache[ck]

    def check_groups(self, groups: Mapping[str, Any]) -> None:
        """Raise :class:`ArchError` when the table was measured for other groups or widths."""
        mine = self.meta.get("groups", {})
        theirs = {gid: list(info.candidates) for gid, info in groups.items()}
        if mine != theirs:
            diff = sorted(set(mine) ^ set(theirs)) or sorted(g for g in mine if mine[g] != theirs.get(g))
            raise ArchError(f"the latency table was measured for other groups or candidate widths "
                            f"(first differences: {diff[:3]}); measure it again for this search space")


def _side_width(side: tuple[str | None, int, int, int], widths: Mapping[str, int]) -> float:
    gid, fixed, block, full = side
    if gid is None or gid not in widths:
        return float(full)
    return float(fixed + block * int(widths[gid]))


def _distribution(gates: Mapping[str, Any], side: tuple[str | None, int, int, int]) -> tuple[torch.Tensor, list]:
    """``(P(width = x_k), x_k)`` of one side: its gate's Markov candidates, or its full width."""
    gid, fixed, block, full = side
    if gid is None or gid not in gates:
        return torch.ones(1, dtype=torch.float64), [float(full)]
    gate = gates[gid]
    marg = gate.marginals().double()
    one = torch.ones(1, dtype=torch.float64, device=marg.device)
    zero = torch.zeros(1, dtype=torch.float64, device=marg.device)
    probs = torch.cat([one, marg]) - torch.cat([marg, zero])  # P(c = candidate_k) = P_k - P_{k+1}
    return probs, [float(fixed + block * c) for c in gate.candidates]
