"""What a DMCP search reports: :class:`SearchResult`, the running means of its step
statistics (the budget check before the first step is :func:`dmcpfx.search.metric.resolve_budget`).

Budget numbers are in the unit of ``budget_metric``: MACs per image (``"flops"``),
parameters (``"params"``) or milliseconds per batch (``"latency"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .budget import human

__all__ = ["RunningMeans", "SearchResult", "human"]


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
