"""What a DMCP search reports: :class:`SearchResult`, the running means of its step
statistics, and the budget check that runs before the first step.

Budget numbers are in the unit of ``budget_metric``: MACs per image (``"flops"``) or
parameters (``"params"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .budget import exact_flops, exact_params, min_widths, parse_target
from ..errors import ConfigError

__all__ = ["RunningMeans", "SearchResult", "check_budget", "human"]


def human(n: float) -> str:
    """``1234567 -> '1.23M'`` (powers of 1000)."""
    n = float(n)
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


class RunningMeans:
    """Running sums of detached scalars (kept on device; one host sync per ``means()``)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach().double()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        vals = torch.stack([self.sums[k] for k in keys]).tolist()  # one device->host transfer
        return {k: v / self.counts[k] for k, v in zip(keys, vals)}


@dataclass
class SearchResult:
    """What :func:`search` returns. Budget numbers are in the unit of ``budget_metric``."""

    target: float
    expected: float
    full: int
    budget_metric: str
    expected_widths: dict[str, float]
    epochs: int
    steps: int
    run_dir: Path | None = None
    metrics_path: Path | None = None
    checkpoint_path: Path | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def target_flops(self) -> float:
        return self.target

    @property
    def expected_flops(self) -> float:
        return self.expected


def check_budget(space: Any, target_flops: int | float | str, budget_metric: str) -> tuple[float, int]:
    """``(absolute target, full count)``; the target must lie between the min and the full sub-net."""
    if budget_metric not in ("flops", "params"):
        raise ConfigError(f"budget_metric must be 'flops' or 'params', got {budget_metric!r}")
    unit = "MACs" if budget_metric == "flops" else "params"
    full = int(space.full_flops) if budget_metric == "flops" else int(space.params())
    target = parse_target(target_flops, full, unit=unit)
    exact = exact_flops if budget_metric == "flops" else exact_params
    smallest = exact(space, min_widths(space))
    if target < smallest:
        raise ConfigError(
            f"target {human(target)} {unit} is below the smallest sub-net's {human(smallest)} {unit} "
            f"(every group at its minimum width); raise the target or lower min_ratio in instrument()"
        )
    return target, full
