"""Derive a concrete architecture from a searched space (DESIGN.md section 5, "derive").

Two modes, both returning ``{group id: width}`` for every prunable group and meeting the
budget (exact count ``<= target * (1 + tolerance)``):

- ``"expected"``: round each gate's ``E[c]`` down or up to a neighbouring multiple of its
  group's divisor, clamped to ``[min_ch, C]``, choosing the side per group so that the exact
  count lands closest to the search's expectation E (clamped into the band;
  :func:`dmcpfx.search.rounding.round_to_count`). The official code rounds every group to its
  nearest width (``round(E[c])``), which on small widths moved the count up to 4.4% from E;
  this rounding keeps it at E up to the grid's granularity (``rounding="nearest"``: the official
  one). When the exact count misses the band
  ``[target * (1 - tolerance), target * (1 + tolerance)]`` -- whose lower edge drops to
  ``E * (1 - tolerance)`` when the search ended inside its budget band ``[budget_band * T, T]``
  (it reached its budget: the arch stays at E, derive only rounds) -- make the SMALLEST change that
  meets it: moves of one divisor step in one group, each time the move that lands in the
  band (closest to E clamped into the band, then to the rounded widths) or else the one that brings
  the count furthest towards the band without jumping over it -- so as few channels as
  possible move;
- ``"direct"``: draw Markov samples from the gates (official rejection sampling) until
  ``samples`` distinct architectures lie within ``tolerance`` of the target, then pick the
  best one on ``val_loader`` (lowest loss; pass HELD-OUT TRAINING data, never the split a
  report scores, see :func:`dmcpfx.search.holdout.split_holdout`) or, without a loader, the one
  closest to the target. Each sample's BatchNorm statistics are re-estimated on
  ``calib_batches`` batches of ``calib_loader`` first.

With ``path`` the arch YAML (DESIGN.md section 6) is written by ``dmcpfx.arch.save_arch``; with
``plot_path`` a kept-vs-full width bar chart (:func:`dmcpfx.plots.plot_widths`).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Iterable, Mapping

import torch

from ..arch import save_arch
from ..errors import ArchError, ConfigError
from ..finite import check_alphas
from ..plots import plot_widths
from .space import check_space
from .budget import exact_flops, expected_width_values, human, parse_target
from .evaluation import evaluate_space
from .metric import BudgetMetric, budget_metric
from .options import DeriveOptions
from .rounding import round_expected, round_to_count, valid_widths

__all__ = ["derive", "fit_widths", "round_expected", "valid_widths"]


class _Adjuster:
    """Greedy one-candidate moves towards ``[lo, hi]`` (DESIGN.md section 5, derive)."""

    def __init__(self, space: Any, count: Callable[[Any, Mapping[str, int]], int], target: float, tolerance: float,
                 preferred: Mapping[str, float]):
        self.space = space
        self.count = count
        self.target = target
        self.lo, self.hi = target * (1.0 - tolerance), target * (1.0 + tolerance)
        self.cands = {gid: list(info.candidates) for gid, info in space.groups.items()}
        self.preferred = preferred

    def _deviation(self, gid: str, width: int) -> float:
        cands = self.cands[gid]
        step = max(1, (cands[-1] - cands[0]) / max(1, len(cands) - 1))
        return abs(width - self.preferred.get(gid, width)) / step

    def _moves(self, widths: dict[str, int], direction: int) -> list[tuple[float, float, dict[str, int], int]]:
        moves = []
        for gid, cands in self.cands.items():
            i = cands.index(widths[gid]) + direction
            if not 0 <= i < len(cands):
                continue
            new = dict(widths)
            new[gid] = cands[i]
            f = self.count(self.space, new)
            moves.append((f, self._deviation(gid, cands[i]), new, i))
        return moves

    def _pick(self, moves: list, current: float) -> tuple[float, dict[str, int]]:
        """Choose a move: landing in the band beats improving the distance to the target,
        which beats anything else; ties go to the widths closest to the searched ``E[c]``."""
        inside = [m for m in moves if self.lo <= m[0] <= self.hi]
        improving = [m for m in moves if abs(m[0] - self.target) < abs(current - self.target)]
        if inside or improving:
            f, _, new, _ = min(inside or improving, key=lambda m: (m[1], abs(m[0] - self.target)))
        else:
            f, _, new, _ = min(moves, key=lambda m: (abs(m[0] - self.target), m[1]))
        return f, new

    def run(self, widths: dict[str, int]) -> tuple[dict[str, int], int]:
        f = self.count(self.space, widths)
        while f > self.hi:  # must meet the budget: step down
            moves = self._moves(widths, -1)
            if not moves:
                raise ArchError(
                    f"cannot meet the target {self.target:.4g}: every group is at its minimum width "
                    f"and the count is still {f}"
                )
            f, widths = self._pick(moves, f)
        while f < self.lo:  # step up without leaving the budget
            moves = [m for m in self._moves(widths, +1) if m[0] <= self.hi]
            if not moves:
                warnings.warn(
                    f"derive: no single-candidate move brings {f} into [{self.lo:.4g}, {self.hi:.4g}] "
                    f"without exceeding the budget; keeping {f} ({f / self.target:.2%} of the target)",
                    stacklevel=3,
                )
                break
            f, widths = self._pick(moves, f)
        return widths, f


class _SmallestChange:
    """Moves of one divisor step in one group towards the band (see the module docstring)."""

    def __init__(self, space: Any, count: Callable[[Any, Mapping[str, int]], int], target: float, tolerance: float,
                 aim: float | None = None, floor: float | None = None):
        self.space, self.count, self.target = space, count, target
        self.lo, self.hi = target * (1.0 - tolerance), target * (1.0 + tolerance)
        if floor is not None:  # a lower edge below the target band (derive(expected) at a searched E)
            self.lo = min(self.lo, floor)
        self.aim = target if aim is None else min(max(aim, self.lo), self.hi)  # in-band landing point
        self.valid = valid_widths(space)
        self.full = {gid: int(info.width) for gid, info in space.groups.items()}

    def run(self, widths: dict[str, int]) -> tuple[dict[str, int], int]:
        start = dict(widths)
        f = self.count(self.space, widths)
        going_up = False
        while not self.lo <= f <= self.hi:
            direction = -1 if f > self.hi else +1
            going_up = going_up or direction > 0
            if going_up and direction < 0:  # cannot happen: up-moves never exceed hi
                break
            moves = []
            for gid, valid in self.valid.items():
                i = valid.index(widths[gid]) + direction
                if 0 <= i < len(valid):
                    new = dict(widths)
                    new[gid] = valid[i]
                    fn = self.count(self.space, new)
                    if direction > 0 and fn > self.hi:
                        continue  # never leave the budget
                    dev = sum(abs(new[g] - start[g]) / self.full[g] for g in new)  # relative change
                    moves.append((fn, dev, new))
            if not moves:
                if direction < 0:
                    raise ArchError(f"cannot meet the target {self.target:.4g}: every group is at its minimum "
                                    f"width and the count is still {f}")
                warnings.warn(f"derive: no move brings {f} into [{self.lo:.4g}, {self.hi:.4g}] without exceeding "
                              f"the budget; keeping {f} ({f / self.target:.2%} of the target)", stacklevel=3)
                break
            inside = [m for m in moves if self.lo <= m[0] <= self.hi]
            if inside:
                f, _, widths = min(inside, key=lambda m: (abs(m[0] - self.aim), m[1]))
                break
            short = [m for m in moves if (m[0] > self.hi if direction < 0 else m[0] < self.lo)]
            if short:  # the biggest step that does not jump over the band
                f, _, widths = max(short, key=lambda m: (abs(m[0] - f), -m[1]))
            elif direction < 0:  # every move jumps below the band: the smallest jump, then step up
                f, _, widths = max(moves, key=lambda m: (m[0], -m[1]))
            else:
                f, _, widths = min(moves, key=lambda m: (self.hi - m[0], m[1]))
        return widths, f


def fit_widths(space: Any, widths: Mapping[str, int], target: float, tolerance: float = 0.01,
               count: Callable[[Any, Mapping[str, int]], int] = exact_flops) -> tuple[dict[str, int], int]:
    """``widths`` (valid widths of every group) moved into ``target * (1 +- tolerance)`` by the
    smallest change that ``derive(expected)`` makes; returns ``(widths, count)``. ``target``:
    absolute, in the unit of ``count`` (default: exact MACs per image)."""
    return _SmallestChange(space, count, float(target), tolerance).run(dict(widths))


def derive(
    space: Any,
    mode: str | None = None,
    options: DeriveOptions | None = None,
    *,
    val_loader: Iterable | None = None,
    calib_loader: Iterable | None = None,
    path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    model_name: str | None = None,
    **option_values: Any,
) -> dict[str, int]:
    """Concrete widths ``{group id: channels}`` for every prunable group of ``space``.

    Args:
        space: a searched SearchSpace.
        mode: ``"expected"`` (``E[c]`` rounded down or up to the divisor so that the count
            tracks E, + the smallest change that meets the band) or ``"direct"`` (Markov samples
            within tolerance, best on held-out training data); None: the options' (default expected).
        options: a :class:`~dmcpfx.search.options.DeriveOptions` (the config's ``derive:``
            section), updated by ``option_values``: ``target`` (required: the search's
            budget, absolute or a ratio, :func:`dmcpfx.search.budget.parse_target`; MACs of one
            forward on the example input, a parameter count when ``budget_metric="params"``;
            ``target_flops=`` still works with a DeprecationWarning), ``rounding`` (expected:
            ``"count"``, the default, or the official ``"nearest"``), ``tolerance`` (relative
            band; the result never exceeds ``target * (1 + tolerance)``; official 0.01),
            ``samples``/``max_draws`` (direct: distinct in-band samples to collect, draws
            before the closest sample is adjusted greedily with a warning), ``val_batches``,
            ``calib_batches`` (direct: BatchNorm re-estimation batches per sample, official 5),
            ``seed`` (the sampling generator), ``budget_metric``.
        val_loader: ``direct`` only -- rank the in-band samples by mean loss on this loader:
            a held-out part of the TRAINING data (:func:`dmcpfx.search.holdout.split_holdout`),
            never the reported split.
        calib_loader: ``direct`` only -- training batches for the BatchNorm re-estimation;
            with a ``val_loader`` and ``calib_batches > 0`` it is required.
        path: write the arch YAML there (``dmcpfx.arch.save_arch``, exact full/pruned/target).
        plot_path: write a PNG bar chart of kept vs full width per group.
        model_name: passed to ``save_arch`` as ``model`` (e.g. ``"torchvision.models.resnet50"``).
    """
    check_space(space, "derive")
    if mode is not None:
        option_values = {**option_values, "mode": mode}
    o = DeriveOptions.build(options, option_values, "derive").resolved()
    if o.target is None:
        raise ConfigError("derive(): target is required (the search's budget: a ratio like 0.5 or absolute MACs)")
    check_alphas(space)  # non-finite alphas: a diverged search, no arch
    metric = budget_metric(space, o.budget_metric, o.latency_table)
    count = metric.exact
    target = parse_target(o.target, metric.full, unit=metric.unit)
    preferred = expected_width_values(space)
    adjuster = _Adjuster(space, count, target, o.tolerance, preferred)

    if o.mode == "expected":
        with torch.no_grad():
            expected = float(metric.expected(space))
        floor = expected * (1.0 - o.tolerance) if o.budget_band * target <= expected else None
        fill = _SmallestChange(space, count, target, o.tolerance, aim=expected, floor=floor)
        rounded = (round_expected(space, preferred) if o.rounding == "nearest"
                   else round_to_count(space, preferred, count, fill.aim, (fill.lo, fill.hi)))
        widths, derived = fill.run(rounded)
        _warn_far_from_expected(expected, derived, target, metric, reached=floor is not None)
    else:
        widths = _direct(space, count, adjuster, samples=o.samples, max_draws=o.max_draws, seed=o.seed,
                         val_loader=val_loader, val_batches=o.val_batches, calib_loader=calib_loader,
                         calib_batches=o.calib_batches)

    if path is not None:
        save_arch(path, widths, space, model=model_name, target_flops=target if metric.name == "flops" else None,
                  latency=_latency_block(space, metric, widths, target))
    if plot_path is not None:
        plot_widths(space, widths, plot_path)
    return widths


EXPECTED_MOVE_LIMIT = 0.02  # derive(expected) moves the count at most this far from the search's E


def _latency_block(space: Any, metric: BudgetMetric, widths: Mapping[str, int], target: float) -> dict | None:
    """The arch file's ``latency`` block under a latency budget: the table's prediction (ms per
    batch) of the full model and of ``widths``, the target and the table's backend and batch."""
    if metric.name != "latency":
        return None
    meta = metric.table.meta
    return {"full": round(float(metric.full), 6), "pruned": round(float(metric.exact(space, widths)), 6),
            "target": round(float(target), 6), "backend": meta.get("backend"), "batch": meta.get("batch"),
            "threads": meta.get("threads")}


def _warn_far_from_expected(expected: float, derived: float, target: float, metric: BudgetMetric,
                            reached: bool) -> None:
    """Warn when the derived count lies more than 2% from the searched expectation: the widths then
    come from the band fill, not from the marginals. ``reached``: E was inside the search's budget
    band (then only coarse candidate widths can move the count that far)."""
    move = derived / expected - 1.0
    if abs(move) > EXPECTED_MOVE_LIMIT:
        why = ("the groups' candidate widths are too coarse to land nearer" if reached else
               "the search did not reach its budget band (longer search, or search.alpha_init=budget)")
        warnings.warn(
            f"derive(expected): the search ended at E = {human(expected)} {metric.unit} ({expected / target:.1%} of the "
            f"target) and meeting the band moved the count by {move:+.1%}; the widths come from that fill more "
            f"than from the search: {why}",
            stacklevel=3,
        )


def _draw(gates: Mapping[str, Any], generator: torch.Generator, count: int) -> list[dict[str, int]]:
    """``count`` Markov samples of every gate at once (same law as ``MarkovGate.sample``)."""
    columns = {}
    for gid, gate in gates.items():
        p = gate.transitions().detach().float().cpu()
        u = torch.rand((count, p.numel()), generator=generator)
        kept = (u < p).to(torch.int64).cumprod(dim=1).sum(dim=1)  # blocks kept before the first failure
        columns[gid] = gate.split.widths_at(kept).tolist()
    return [{gid: int(col[i]) for gid, col in columns.items()} for i in range(count)]


def _direct(space: Any, count, adjuster: _Adjuster, *, samples: int, max_draws: int, seed: int,
            val_loader, val_batches, calib_loader, calib_batches, patience: int = 2000) -> dict[str, int]:
    """Official rejection sampling; stops early once ``patience`` draws brought nothing new."""
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    gen = torch.Generator().manual_seed(seed)
    gates = space.gates()
    seen: dict[tuple[int, ...], int] = {}
    found: list[tuple[dict[str, int], int]] = []
    drawn, since_new, batch = 0, 0, 256
    while drawn < max_draws and len(found) < samples and since_new < patience:
        for widths in _draw(gates, gen, min(batch, max_draws - drawn)):
            drawn += 1
            key = tuple(widths.values())
            if key in seen:
                since_new += 1
                continue
            since_new = 0
            f = count(space, widths)
            seen[key] = f
            if adjuster.lo <= f <= adjuster.hi:
                found.append((widths, f))
                if len(found) >= samples:
                    break
    if not found:
        best = min(seen, key=lambda k: abs(seen[k] - adjuster.target))
        warnings.warn(
            f"derive(direct): none of {len(seen)} distinct Markov samples is within the tolerance of the "
            f"target; adjusting the closest one ({seen[best]}) greedily",
            stacklevel=3,
        )
        widths, _ = adjuster.run(dict(zip(gates, best)))
        return widths
    if val_loader is None or len(found) == 1:
        return min(found, key=lambda wf: abs(wf[1] - adjuster.target))[0]
    scored = []
    for widths, f in found:
        res = evaluate_space(space, val_loader, widths=widths, max_batches=val_batches,
                       calib_loader=calib_loader, calib_batches=calib_batches)
        scored.append((res["loss"], abs(f - adjuster.target), widths))
    return min(scored, key=lambda s: (s[0], s[1]))[2]
