"""``dmcpfx.latency_table``: the search space's latency table, fitted on compact models.

:func:`dmcpfx.search.latency_build.latency_table` times each layer alone; a layer inside a
network costs more, and relatively more when it is thin. This wrapper gives it
:func:`dmcpfx.materialize`, so that the table's constant and slope are fitted on the full model
and on a real compact model at about 25% of every width (see
:class:`~dmcpfx.search.latency_table.LatencyTable`).
"""
from __future__ import annotations

import os
from typing import Any, Callable

from ..materialize import materialize
from ..search.latency_build import latency_table as _measured_table
from ..search.latency_table import LatencyTable

__all__ = ["latency_table"]


def latency_table(space: Any, backend: str = "ort-cpu", batch: int = 16, *, threads: int = 1, dtype: str = "bf16",
                  grid: int | None = None, runs: int = 7, path: str | os.PathLike | None = None,
                  progress: Callable[[str], None] | None = None) -> LatencyTable:
    """The latency table of ``space`` on ``backend`` (ms per batch of ``batch`` images).

    ``backend``: ``ort-cpu`` (ONNX Runtime, ``threads`` threads) or ``cuda`` (PyTorch in
    ``dtype``, channels_last). ``grid``: widths measured per side (None: every candidate).
    ``runs``: timed calls per cell (median). ``path``: a JSON file reused when it was measured
    the same way (else measured and written there). ``space`` is not changed.
    """
    def compact(widths: dict[str, int]):
        return materialize(space, widths, space.example_inputs)

    return _measured_table(space, backend, batch, threads=threads, dtype=dtype, grid=grid, runs=runs, path=path,
                           progress=progress, compact=compact)
