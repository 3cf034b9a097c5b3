"""``report.md``: full vs pruned model, one markdown table (DESIGN.md section 1, last stage).

Rows: MACs (multiply-accumulates of one forward on the example input, exact), parameters,
top-1 accuracy in percent (full: the searched supernet at max width, its BatchNorm
statistics re-estimated; pruned: the retrained compact model, last epoch), and ONNX Runtime
CPU latency in milliseconds (median of ``run.latency_runs`` runs, batch 1, after warm-up).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..fileio import write_json_atomic, write_text_atomic
from .onnx_export import export_onnx

__all__ = ["onnx_latency_ms", "report_table", "write_report"]


def onnx_latency_ms(onnx_path: str | Path, input_shape: tuple[int, ...], runs: int = 50, warmup: int = 5) -> float:
    """Median wall time in ms of one ONNX Runtime CPU inference at ``input_shape`` (batch 1)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "count":
        v = float(value)
        for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= scale:
                return f"{v / scale:.3f}{suffix}"
        return f"{v:.0f}"
    return f"{float(value):.2f}"


def _ratio(full: Any, pruned: Any) -> str:
    if full in (None, 0) or pruned is None:
        return "n/a"
    return f"{float(pruned) / float(full):.1%}"


def report_table(summary: Mapping[str, Any]) -> str:
    """The markdown comparison table of ``summary`` (keys as written by the pipeline)."""
    rows = [
        ("MACs", summary.get("full_macs"), summary.get("pruned_macs"), "count"),
        ("params", summary.get("full_params"), summary.get("pruned_params"), "count"),
        ("top-1 (%)", summary.get("supernet_top1"), summary.get("retrain_top1"), ""),
        ("ONNX Runtime CPU latency, batch 1 (ms)", summary.get("full_latency_ms"), summary.get("compact_latency_ms"), ""),
    ]
    lines = ["| | full | pruned | pruned / full |", "|---|---:|---:|---:|"]
    for name, full, pruned, unit in rows:
        lines.append(f"| {name} | {_fmt(full, unit)} | {_fmt(pruned, unit)} | {_ratio(full, pruned)} |")
    return "\n".join(lines)


_BUDGET_UNITS = (("macs", "MACs"), ("params", "params"), ("latency_ms", "ms per batch (latency table)"))


def _search_lines(summary: Mapping[str, Any]) -> list[str]:
    """Where the search ended (the expected budget vs the target) and how far derive moved it."""
    for key, unit in _BUDGET_UNITS:
        expected, target = summary.get(f"expected_{key}"), summary.get(f"target_{key}")
        if expected and target:
            shown = f"{expected:.3f}" if key == "latency_ms" else _fmt(expected, "count")
            return [f"The search ended at E = {shown} expected {unit} ({expected / target:.1%} of the "
                    f"target); derive moved it by {summary.get('derive_change', 0.0):+.2%} from E.", ""]
    return []


def _latency_budget_lines(summary: dict, full_model: nn.Module, compact: nn.Module, x: torch.Tensor) -> list[str]:
    """Under a latency budget: the table's prediction for the compact model next to its measured
    latency on the table's backend, batch and threads (``summary`` gets the measured figures)."""
    if "target_latency_ms" not in summary:
        return []
    from ..search.latency_measure import time_models

    backend, batch, threads = summary["latency_backend"], int(summary["latency_batch"]), int(summary["latency_threads"])
    where = f"{backend}, batch {batch}, {threads} thread(s)"
    if backend == "cuda" and not torch.cuda.is_available():
        return [f"Latency budget ({where}): not measured here (no CUDA device).", ""]
    xb = x[:1].repeat(batch, *([1] * (x.dim() - 1)))
    ms = time_models({"full": full_model, "pruned": compact}, (xb,), backend=backend, threads=threads, rounds=3)
    full_ms, pruned_ms = ms["full"], ms["pruned"]
    predicted, target = float(summary["pruned_latency_ms"]), float(summary["target_latency_ms"])
    summary.update(measured_full_latency_ms=full_ms, measured_pruned_latency_ms=pruned_ms)
    return [f"Latency budget ({where}): target {target:.3f} ms; the latency table predicts {predicted:.3f} ms "
            f"for the compact model, measured {pruned_ms:.3f} ms (prediction {predicted / pruned_ms - 1:+.1%}, "
            f"measured vs target {pruned_ms / target - 1:+.1%}); full model measured {full_ms:.3f} ms: "
            f"speed-up {full_ms / pruned_ms:.2f}x.", ""]


def _export_batch1(model: nn.Module, x1: torch.Tensor, path: Path) -> Path:
    """Export for timing only (unchecked): the fast TorchScript exporter, else the default one."""
    import contextlib
    import io
    import warnings

    model = model.cpu().eval()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x1,), str(path), dynamo=False)
    except Exception:  # noqa: BLE001 - fall back to dmcpfx's exporter (dynamo first)
        export_onnx(model, x1, path, check=False)
    return path


def write_report(run_dir: str | Path, cfg, summary: dict, full_model: nn.Module, compact: nn.Module,
                 x: torch.Tensor) -> str:
    """Measure both models' ONNX latency, write ``run_dir/report.md`` atomically (last file of a
    run), return the table. ``summary`` is updated with the latencies."""
    run_dir = Path(run_dir)
    shape = (1, *x.shape[1:])
    x1 = torch.randn(*shape)
    runs = int(cfg.run.latency_runs)
    with tempfile.TemporaryDirectory() as tmp:
        summary["full_latency_ms"] = onnx_latency_ms(_export_batch1(full_model, x1, Path(tmp) / "full.onnx"), shape, runs)
        # the same exporter for both models, so the timings compare like with like
        summary["compact_latency_ms"] = onnx_latency_ms(_export_batch1(compact, x1, Path(tmp) / "compact.onnx"),
                                                        shape, runs)
    table = report_table(summary)
    target = summary.get("target_macs")
    pruned = summary.get("pruned_macs")
    hist = summary.get("retrain_top1_history") or []
    lines = [
        f"# dmcpfx run `{cfg.run.name}`",
        "",
        f"Model `{cfg.model.spec}`, input {list(x.shape)}, data `{cfg.data.kind}`; "
        f"target {_fmt(target, 'count')} MACs ({cfg.search.target}), derived arch "
        f"{_fmt(pruned, 'count')} MACs"
        + (f" ({(pruned / target - 1):+.2%} vs target)." if target and pruned else "."),
        "",
        *_search_lines(summary),
        *_latency_budget_lines(summary, full_model, compact, x),
        table,
        "",
        "Full top-1: the searched supernet at max width (BatchNorm re-estimated); pruned top-1: the "
        f"compact model after {summary.get('retrain_epochs', 'n/a')} retraining epochs "
        f"(init `{cfg.retrain.init}`). Latency: median of {runs} ONNX Runtime CPU runs.",
        "",
        "Retrain top-1 per epoch (%): " + ", ".join(f"{v:.1f}" for v in hist if v is not None),
        "",
        "Files (what this report shows, and where it is):",
        "",
        "- `compact.pt`: the retrained compact model (the pruned column), a state dict; rebuild it with "
        "`dmcpfx.load(run_dir)` (factory -> materialize(`arch.yaml`) -> `load_state_dict`).",
        "- `compact.onnx`: the same retrained model in ONNX, dynamic batch, checked against PyTorch with "
        "onnxruntime at batch 1 and 3.",
        "- `arch.yaml`: the widths per group and their exact MACs and params.",
        "- `summary.json`: every number of the table; `retrain_metrics.jsonl`: the pruned top-1 per epoch; "
        "`metrics.jsonl`: the search (the full top-1 is its last `val_top1`).",
        "- `supernet_slice.pt`: the supernet's weights sliced to `arch.yaml`, before retraining (not the product).",
        "- `config.yaml`: the resolved config of this run.",
        "- `search.png`: the search's expected MACs over the target (budget band shaded) and each group's "
        "expected width over its full width, per step (from `metrics.jsonl`).",
        "",
        "![kept vs full channels per group](widths.png)",
        "",
    ]
    if (run_dir / "search.png").is_file():
        lines += ["![the search: expected MACs over the target, and each group's expected width](search.png)", ""]
    write_json_atomic(run_dir / "summary.json", summary)
    write_text_atomic(run_dir / "report.md", "\n".join(lines))
    return table
