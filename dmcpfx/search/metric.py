"""The budget of a search and of derive, in one of three units (``budget_metric``):

- ``flops``: MACs per image (one forward of the example input, batch 1);
- ``params``: parameters;
- ``latency``: milliseconds per batch on one backend, predicted by a
  :class:`~dmcpfx.search.latency_table.LatencyTable` measured for this search space
  (``latency_table``: the table or its JSON file). The search's budget loss then uses the
  table's exact expected latency under the Markov marginals, and derive meets the band on the
  table's latency of concrete widths.

:func:`budget_metric` gives the three things every user of a budget needs: the full model's
amount, the differentiable expectation under the gates, and the exact amount of given widths.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..errors import ConfigError
from .budget import (exact_flops, exact_params, expected_flops, expected_params, human, min_widths,
                     parse_target)
from .options import BUDGET_METRICS

__all__ = ["BUDGET_METRICS", "BudgetMetric", "budget_metric", "resolve_budget"]


@dataclass(frozen=True)
class BudgetMetric:
    """One budget unit for one search space.

    ``name``: flops | params | latency; ``unit``: how numbers read (``MACs``, ``params``, ``ms``);
    ``full``: the full model's amount; ``expected(space)``: a 0-dim float64 tensor, differentiable
    in the alphas; ``exact(space, widths)``: the amount of integer widths (missing groups: full).
    """

    name: str
    unit: str
    full: float
    expected: Callable[[Any], torch.Tensor]
    exact: Callable[[Any, Mapping[str, int]], float]
    table: Any = None


def _table(latency_table: Any, space: Any) -> Any:
    from .latency_build import load_table
    from .latency_table import LatencyTable

    if latency_table is None:
        raise ConfigError("budget_metric 'latency' needs latency_table: a table measured for this search space "
                          "(dmcpfx.latency_table(space, backend, batch, path=...)) or its JSON file")
    table = latency_table
    if isinstance(latency_table, (str, os.PathLike)):
        if not os.path.isfile(latency_table):
            raise ConfigError(f"latency table {latency_table} not found: measure it first with "
                              f"dmcpfx.latency_table(space, backend, batch, path=...) (a pipeline run does this itself "
                              f"from search.latency_backend, latency_batch and latency_threads)")
        table = load_table(latency_table)
    if not isinstance(table, LatencyTable):
        raise ConfigError(f"latency_table must be a LatencyTable or the path of its JSON file, got "
                          f"{type(latency_table).__name__}")
    table.check_groups(space.groups)
    return table


def budget_metric(space: Any, name: str, latency_table: Any = None) -> BudgetMetric:
    """The :class:`BudgetMetric` ``name`` (one of :data:`BUDGET_METRICS`) of ``space``."""
    if name == "flops":
        return BudgetMetric("flops", "MACs", int(space.full_flops), expected_flops, exact_flops)
    if name == "params":
        return BudgetMetric("params", "params", int(space.params()), expected_params, exact_params)
    if name == "latency":
        table = _table(latency_table, space)
        full = float(table.latency({}))

        def expected(s: Any) -> torch.Tensor:
            return table.expected(s.gates())

        def exact(s: Any, widths: Mapping[str, int]) -> float:
            return float(table.latency(widths))

        return BudgetMetric("latency", "ms", full, expected, exact, table)
    raise ConfigError(f"budget_metric must be one of {', '.join(BUDGET_METRICS)}, got {name!r}")


def resolve_budget(space: Any, target: int | float | str, name: str,
                   latency_table: Any = None) -> tuple[float, BudgetMetric]:
    """``(absolute target, metric)``: ``target`` parsed against the full model in the metric's unit
    (:func:`~dmcpfx.search.budget.parse_target`); below the smallest sub-net is a ConfigError."""
    metric = budget_metric(space, name, latency_table)
    absolute = parse_target(target, metric.full, unit=metric.unit)
    smallest = metric.exact(space, min_widths(space))
    if absolute < smallest:
        raise ConfigError(
            f"target {human(absolute)} {metric.unit} is below the smallest sub-net's {human(smallest)} "
            f"{metric.unit} (every group at its minimum width); raise the target or lower min_ratio in instrument()"
        )
    return absolute, metric
