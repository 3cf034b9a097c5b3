"""Where the architecture parameters start (DESIGN.md section 5: the search reaches its budget).

The official code starts every ``alpha`` at 0: every transition is 0.5, the marginals are
``0.5^k`` and ``E[c]`` is about ``0.2 C`` per group, so the expected MACs start near 4% of the
full model. The budget loss then has to pull them up to the target, which takes the tens of
thousands of architecture steps of an ImageNet search; a small dataset gives a few hundred,
and the search ends far below its budget (derive's fill then picks the widths, not the search).

``"budget"`` (this project's default, a documented deviation): every alpha starts at ONE common
value ``a``, found by bisection, such that the expected count is ``START_FRACTION`` of the
target (just inside the top of the budget band, where derive's +-1% band also holds). All
groups then start at the same relative expected width -- the uniform network of that budget --
and the architecture steps only have to redistribute it, however many there are.
``"zero"`` keeps the official start.

``E(a)`` is monotone in ``a`` (every marginal grows with every alpha, and a count is a sum of
products of non-negative widths), so the bisection converges to the unique crossing.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import ConfigError

__all__ = ["ALPHA_INITS", "START_FRACTION", "budget_alpha", "check_alpha_init", "init_alphas"]

ALPHA_INITS = ("budget", "zero")
START_FRACTION = 0.99  # E[count] at the start, as a fraction of the target
_LOW, _HIGH, _ITERS = -16.0, 16.0, 60  # bisection bracket (sigmoid(+-16) is 1e-7 from 0 / 1) and steps


def check_alpha_init(mode: str) -> None:
    """Raise :class:`ConfigError` unless ``mode`` is one of :data:`ALPHA_INITS`."""
    if mode not in ALPHA_INITS:
        raise ConfigError(f"alpha_init must be one of {', '.join(ALPHA_INITS)}, got {mode!r}")


@torch.no_grad()
def budget_alpha(space: Any, goal: float, expected: Callable[[Any], torch.Tensor]) -> float:
    """The common alpha ``a`` with ``expected(space) == goal`` when every alpha is ``a``.

    ``goal`` is in the unit of ``expected`` (MACs per image, or parameters). Clamped to the
    bracket ``[-16, 16]``: a goal below the all-minimum count gives ``-16``, one above the full
    count ``16``. Leaves every alpha at the returned value.
    """
    alphas = list(space.arch_parameters())

    def count_at(a: float) -> float:
        for p in alphas:
            p.fill_(a)
        return float(expected(space))

    lo, hi = _LOW, _HIGH
    if count_at(hi) <= goal:
        return hi
    if count_at(lo) >= goal:
        return lo
    for _ in range(_ITERS):
        mid = 0.5 * (lo + hi)
        if count_at(mid) < goal:
            lo = mid
        else:
            hi = mid
    a = 0.5 * (lo + hi)
    count_at(a)
    return a


def init_alphas(space: Any, mode: str, target: float, expected: Callable[[Any], torch.Tensor]) -> float | None:
    """Set the starting alphas of ``space`` for ``mode`` (:data:`ALPHA_INITS`); returns the common
    value for ``"budget"`` (None for ``"zero"``, which leaves the alphas as instrument made them)."""
    check_alpha_init(mode)
    if mode == "zero":
        return None
    return budget_alpha(space, START_FRACTION * float(target), expected)
