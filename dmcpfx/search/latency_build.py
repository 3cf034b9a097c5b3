"""Measure, save and reuse a search space's latency table (DESIGN.md section 4, latency budget).

:func:`latency_table` times every conv / linear layer of a search space alone, with its elementwise
tail in the network (:mod:`dmcpfx.search.latency_epilogue`), on a backend
(:mod:`dmcpfx.search.latency_measure`) at each pair of its gates' candidate widths (or a
sampled grid of ``grid`` points per side, interpolated bilinearly) in two passes over the table
(each cell keeps its lower median), and the whole model at full width once. Layers of the same geometry share one measurement. The table is saved as JSON
(format ``dmcpfx-latency/3``) with the backend, batch, threads, dtype, library versions, the
machine and the groups' candidate widths, and reused from that file only when all of those
match; any difference is a one-line error naming it and the file.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..fileio import write_json_atomic
from .latency_epilogue import layer_epilogues
from .latency_measure import LayerGeometry, check_backend, time_layer, time_models
from .latency_table import Grid, LatencyTable, LayerEntry, side_widths

__all__ = ["TABLE_FORMAT", "latency_table", "load_table", "save_table"]

TABLE_FORMAT = "dmcpfx-latency/3"  # /2: ort-cpu cells are kernel times (profiler); /3: a cell times its layer's tail
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _machine(backend: str) -> str:
    if backend == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def _versions(backend: str) -> dict[str, str]:
    out = {"torch": torch.__version__}
    if backend == "ort-cpu":
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    return out


def _geometry(module: nn.Module, kind: str, shape: tuple[int, ...], tail: tuple[str, ...]) -> LayerGeometry | str:
    """The layer's geometry from its module, input shape and tail, or the reason it is not timed."""
    if isinstance(module, nn.Linear):
        rows = max(1, int(torch.Size(shape).numel()) // (shape[0] * module.in_features)) if len(shape) > 1 else 1
        return LayerGeometry(kind="linear", hw=(rows, 1), bias=module.bias is not None, tail=tail)
    if not isinstance(module, nn.Conv2d) or len(shape) != 4:
        return f"a {type(module).__name__} call, not an nn.Conv2d / nn.Linear module: its time is in the calibration"
    k, d = tuple(module.kernel_size), tuple(module.dilation)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            pad = (0, 0, 0, 0)
        else:  # 'same': torch pads the smaller half first
            th, tw = d[0] * (k[0] - 1), d[1] * (k[1] - 1)
            pad = (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    else:
        ph, pw = module.padding
        pad = (ph, pw, ph, pw)
    return LayerGeometry(kind=kind if kind in ("dwconv", "gconv") else "conv", kernel=k, stride=tuple(module.stride),
                         padding=pad, dilation=d, groups=module.groups if kind == "gconv" else 1,
                         hw=(int(shape[2]), int(shape[3])), bias=module.bias is not None, tail=tail)


def _input_shapes(model: nn.Module, names: set[str], example_inputs: tuple) -> dict[str, tuple[int, ...]]:
    """Input shape of each named module in one forward of ``model`` (a copy: hooks are removed)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, tuple(args[0].shape))  # first call only
        return record

    for name, module in model.named_modules():
        if name in names:
            handles.append(module.register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _side_grid(side: tuple, gates: dict, full: int, points: int | None) -> list[int]:
    gid, fixed, block = side
    if gid is None:
        return [full]
    widths = [fixed + block * c for c in gates[gid].candidates]
    if points is None or points >= len(widths):
        return widths
    picks = {round(i * (len(widths) - 1) / (points - 1)) for i in range(points)} if points > 1 else {len(widths) - 1}
    return [widths[i] for i in sorted(picks)]


def _plan(space: Any, points: int | None) -> tuple[dict[str, LayerEntry], dict[str, tuple], dict[str, str]]:
    """Entries, ``{key: (geometry, cin grid, cout grid, same_side)}`` and skipped layers."""
    model = space.to_model().cpu().eval()
    records = list(space.graph.macs)
    shapes = _input_shapes(model, {r.module for r in records}, space.example_inputs)
    modules = dict(model.named_modules())
    gates = space.gates()
    tails = layer_epilogues(space.graph.graph_modules["eval"])
    entries, plans, skipped = {}, {}, {}
    for rec in records:
        if rec.spatial_layout is not None:
            skipped[rec.module] = "its row count follows a channel group: its time is in the calibration"
            continue
        if rec.module not in modules or rec.module not in shapes or rec.module in entries:
            skipped.setdefault(rec.module, "no module of that name runs once in the forward: its time is in the calibration")
            continue
        geo = _geometry(modules[rec.module], rec.kind, shapes[rec.module], tails.get(rec.module, ()))
        if isinstance(geo, str):
            skipped[rec.module] = geo
            continue
        sin = side_widths(space.graph, rec.in_layout, space.groups)
        sout = side_widths(space.graph, rec.out_layout, space.groups)
        if rec.kind == "dwconv":  # one channel in per channel out: the input side is the output side
            sin = sout
        same = sin[0] is not None and sin[0] == sout[0]
        key = f"{geo.key} c{rec.in_channels}x{rec.out_channels}" + (" diag" if same else "")
        cin = _side_grid(sin, gates, rec.in_channels, points)
        cout = _side_grid(sout, gates, rec.out_channels, points)
        if key in plans:  # shared geometry: measure the union of the grids
            _, old_in, old_out, _ = plans[key]
            cin, cout = sorted(set(cin) | set(old_in)), sorted(set(cout) | set(old_out))
        plans[key] = (geo, cin, cout, same)
        entries[rec.module] = LayerEntry(rec.module, key, rec.in_channels, rec.out_channels, sin[0], sout[0],
                                         sin[1], sin[2], sout[1], sout[2])
    return entries, plans, skipped


#: the keep ratio of the thin model that fits the table's overhead and slope (LatencyTable)
THIN_RATIO = 0.25


def thin_widths(space: Any) -> dict[str, int]:
    """Every group at the candidate nearest :data:`THIN_RATIO` of its width."""
    return {gid: min(info.candidates, key=lambda c: abs(c - THIN_RATIO * info.width))
            for gid, info in space.groups.items()}


def _fit(table: LatencyTable, widths: dict[str, int], thin_ms: float) -> None:
    """Set the table's constant and slope from its full model and a thin model measured at
    ``widths`` (``thin_ms``). The constant may be negative (thin layers cost relatively less
    inside the network than alone), down to minus half the thin model's time, so that every
    sub-net from the thin one up is predicted above half its share; a fit outside that, or with
    a slope that is not positive, keeps the proportional calibration (constant 0)."""
    full_sum = table.layers_full_ms
    table.overhead_ms = 0.0
    thin_sum = table.latency(widths) / table.calibration
    if full_sum - thin_sum <= 0:
        return
    slope = (table.full_ms - thin_ms) / (full_sum - thin_sum)
    overhead = table.full_ms - slope * full_sum
    if slope > 0 and overhead >= -0.5 * thin_ms:
        table.overhead_ms = overhead
    table.meta["thin_model"] = {"keep_ratio": THIN_RATIO, "measured_ms": thin_ms, "layers_ms": thin_sum}


#: passes over every cell of the table; a cell keeps its lowest median (see :func:`_time_grids`)
CELL_PASSES = 2


def _time_grids(plans: dict[str, tuple], progress: Callable[[str], None] | None, **kw: Any) -> dict[str, Grid]:
    """Every planned grid timed in :data:`CELL_PASSES` passes over the whole table, each cell
    keeping the lowest of its medians. A shared host has slow spells of seconds; one pass measured
    a MobileNetV2 depthwise cell at 4x its neighbours (8.0 ms between 2.2 and 2.9, 2.0 when timed
    again). A spell rarely covers the same cell in passes minutes apart, and a cell is never
    faster than its kernel, so the lowest median is the robust figure."""
    cells: dict[tuple[str, int, int], float] = {}  # (key, input index, output index) -> ms
    for p in range(CELL_PASSES):
        for n, (key, (geo, cin, cout, same)) in enumerate(plans.items()):
            if progress is not None:
                progress(f"latency table pass {p + 1}/{CELL_PASSES}, {n + 1}/{len(plans)}: {key}")
            pairs = [(a, a) for a in range(len(cin))] if same else [(a, b) for a in range(len(cin))
                                                                     for b in range(len(cout))]
            for a, b in pairs:  # a depthwise layer (same side): its diagonal only
                t = time_layer(geo, cin[a], cin[b] if same else cout[b], **kw)
                cells[key, a, b] = min(t, cells.get((key, a, b), t))
    grids = {}
    for key, (_, cin, cout, same) in plans.items():
        cout = list(cin) if same else list(cout)
        ms = [[cells.get((key, a, b), 0.0) for b in range(len(cout))] for a in range(len(cin))]
        grids[key] = Grid(list(cin), cout, ms, same_side=same)
    return grids


def measure_table(space: Any, backend: str = "ort-cpu", batch: int = 16, *, threads: int = 1, dtype: str = "bf16",
                  grid: int | None = None, runs: int = 7, progress: Callable[[str], None] | None = None,
                  compact: Callable[[dict[str, int]], nn.Module] | None = None) -> LatencyTable:
    """Time every layer of ``space`` (see the module docstring); returns the table, unsaved.
    ``compact(widths)``: the compact model of ``space`` at ``widths`` (``dmcpfx.materialize``),
    for the thin model that fits the table's constant and slope (None: proportional)."""
    check_backend(backend)
    if dtype not in _DTYPES:
        raise ConfigError(f"latency dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    entries, plans, skipped = _plan(space, grid)
    grids = _time_grids(plans, progress, backend=backend, batch=batch, threads=threads, dtype=_DTYPES[dtype],
                        runs=runs)
    x = tuple(t.repeat(batch, *([1] * (t.dim() - 1)))[:batch] for t in space.example_inputs)
    models, thin = {"full": space.to_model().cpu().eval()}, thin_widths(space)
    if compact is not None:  # the thin model of the fit, timed in the same rounds as the full one
        models["thin"] = compact(thin).cpu().eval()
    ms = time_models(models, x, backend=backend, threads=threads, dtype=_DTYPES[dtype], runs=max(runs, 7), rounds=3)
    meta = {"format": TABLE_FORMAT, "backend": backend, "batch": batch, "threads": threads,
            "dtype": dtype if backend == "cuda" else "float32", "grid": grid, "versions": _versions(backend),
            "machine": _machine(backend), "input_shape": [list(t.shape[1:]) for t in space.example_inputs],
            "groups": {gid: list(info.candidates) for gid, info in space.groups.items()}}
    table = LatencyTable(entries, grids, meta, ms["full"], skipped)
    if compact is not None:
        _fit(table, thin, ms["thin"])
    return table


def save_table(table: LatencyTable, path: str | os.PathLike) -> None:
    """Write the table as JSON, atomically."""
    write_json_atomic(Path(path), {
        "meta": table.meta, "full_ms": table.full_ms, "overhead_ms": table.overhead_ms, "skipped": table.skipped,
        "layers": {m: asdict(e) for m, e in table.layers.items()},
        "grids": {k: asdict(g) for k, g in table.grids.items()},
    })


def load_table(path: str | os.PathLike) -> LatencyTable:
    """Read a table written by :func:`save_table`; a malformed file is a one-line error naming it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc["meta"]["format"] != TABLE_FORMAT:
            raise ValueError(f"format {doc['meta']['format']!r}, expected {TABLE_FORMAT!r}: delete it to measure again")
        table = LatencyTable(
            layers={m: LayerEntry(**e) for m, e in doc["layers"].items()},
            grids={k: Grid(**g) for k, g in doc["grids"].items()},
            meta=dict(doc["meta"]), full_ms=float(doc["full_ms"]), skipped=dict(doc.get("skipped", {})),
            overhead_ms=float(doc.get("overhead_ms", 0.0)),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable latency table ({type(exc).__name__}: {exc})") from None
    values = [table.full_ms, abs(table.overhead_ms)] + [v for g in table.grids.values() for row in g.ms for v in row]
    if not all(v == v and 0.0 <= v < float("inf") for v in values):
        raise ConfigError(f"{path}: the latency table holds a negative or non-finite time")
    return table


def latency_table(space: Any, backend: str = "ort-cpu", batch: int = 16, *, threads: int = 1, dtype: str = "bf16",
                  grid: int | None = None, runs: int = 7, path: str | os.PathLike | None = None,
                  progress: Callable[[str], None] | None = None,
                  compact: Callable[[dict[str, int]], nn.Module] | None = None) -> LatencyTable:
    """The latency table of ``space`` on ``backend`` at ``batch`` images (ms per batch).

    With ``path``: an existing file is reused when it was measured for the same backend,
    batch, threads, dtype, grid, library versions, machine, input shape and candidate widths
    (a difference is a :class:`ConfigError` naming it and the file); else the table is measured
    and written there. ``grid``: measure that many widths per side, evenly spread over the
    candidates (None: every candidate). ``compact``: see :func:`measure_table`
    (``dmcpfx.latency_table`` passes ``dmcpfx.materialize``).
    """
    if path is not None and Path(path).exists():
        table = load_table(path)
        want = {"backend": backend, "batch": batch, "threads": threads, "grid": grid,
                "dtype": dtype if backend == "cuda" else "float32", "versions": _versions(backend),
                "machine": _machine(backend), "input_shape": [list(t.shape[1:]) for t in space.example_inputs],
                "groups": {gid: list(info.candidates) for gid, info in space.groups.items()}}
        for key, value in want.items():
            if table.meta.get(key) != value:
                raise ConfigError(f"{path}: the latency table was measured with {key}={table.meta.get(key)!r}, "
                                  f"this run has {value!r}; delete the file or give another path to measure again")
        return table
    table = measure_table(space, backend, batch, threads=threads, dtype=dtype, grid=grid, runs=runs, progress=progress,
                          compact=compact)
    if path is not None:
        save_table(table, path)
    return table
