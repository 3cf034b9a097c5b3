"""How ``benchmarks/latency.py`` times its arms: ONNX Runtime sessions and PyTorch eager runs,
interleaved round robin; the MACs with ORT's NCHWc channel padding; the optional ORT profile
per operator kind. Milliseconds per forward of one batch.
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from latency_arms import Arm, Column, torch_threads
import dmcpfx
from dmcpfx.counting import count_flops
from dmcpfx.product.onnx_export import run_and_compare

# --------------------------------------------------------------------------- timing
def time_interleaved(runners: Sequence[Callable[[], object]], warmup: int, repeats: int,
                     stat: str = "median", pre_runs: int = 1) -> list[float]:
    """Milliseconds per runner (median of the timed calls, or their minimum with
    ``stat="min"``); timed calls are interleaved round robin.

    Every timed call directly follows ``pre_runs`` untimed calls of the SAME runner, so
    that it measures the steady state of that arm: otherwise the previous arm's data
    has evicted this arm's weights and activations from the caches (and, without
    ``session.force_spinning_stop``, its still-spinning worker threads steal the cores).
    Measured here, 6 interleaved ORT sessions of mobilenet_v2 at batch 16 on 2 threads:
    39 ms per run alone, 47 ms interleaved, 40 ms with one untimed run before each.
    """
    for run in runners:
        for _ in range(warmup):
            run()
    samples: list[list[float]] = [[] for _ in runners]
    n = len(runners)
    for r in range(repeats):
        for j in range(n):
            i = (r + j) % n  # rotate the starting arm every round
            for _ in range(pre_runs):
                runners[i]()
            t0 = time.perf_counter()
            runners[i]()
            samples[i].append((time.perf_counter() - t0) * 1e3)
    reduce = min if stat == "min" else statistics.median
    return [reduce(s) for s in samples]


def ort_session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Stop the worker threads spinning once a run returns: otherwise an idle session's pool
    # keeps spinning and steals the cores from the next arm (measured: 6 interleaved
    # mobilenet_v2 sessions at batch 1 took 14 ms per run instead of 2.7 ms). A session's
    # own latency is unchanged (2.71 vs 2.66 ms); it still spins during a run.
    so.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def export_arm(arm: Arm, batch: int, size: int, workdir: Path, exporter: str) -> Path:
    """The arm's ONNX file, checked against PyTorch with onnxruntime.

    ``exporter="dmcpfx"``: ``dmcpfx.export_onnx`` (dynamo exporter first), whose batch
    dimension is STATIC, so one file per batch size; ``"dynamic"``: the torchscript
    exporter with a dynamic batch axis, one file for every batch size (faster to export).
    """
    stem = f"{arm.key}_t{arm.target or 1:g}"
    with torch_threads(1):
        if exporter == "dmcpfx":
            path = workdir / f"{stem}_b{batch}.onnx"
            if not path.exists():
                dmcpfx.export_onnx(arm.model, (torch.randn(batch, 3, size, size),), path)
            return path
        path = workdir / f"{stem}_dynamic.onnx"
        if not path.exists():
            x = torch.randn(2, 3, size, size)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(arm.model.eval(), (x,), str(path), dynamo=False, input_names=["x"],
                                  output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        run_and_compare(arm.model, (torch.randn(batch, 3, size, size),), path)
        return path


def measure_ort(arms: list[Arm], column: Column, args, workdir: Path) -> None:
    sessions = [ort_session(export_arm(a, column.batch, args.size, workdir, args.exporter), args.threads) for a in arms]
    feed_name = sessions[0].get_inputs()[0].name
    x = torch.randn(column.batch, 3, args.size, args.size).numpy()
    runners = [lambda s=s: s.run(None, {feed_name: x}) for s in sessions]
    for arm, ms in zip(arms, time_interleaved(runners, args.warmup, repeats_for(column.batch, args), args.stat,
                                               args.pre_runs)):
        arm.ms[column.name] = ms


def measure_torch(arms: list[Arm], column: Column, args) -> None:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(column.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    models = [a.model.to(device, memory_format=fmt) for a in arms]

    def make_runner(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = m(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out
        return run

    try:
        medians = time_interleaved([make_runner(m) for m in models], args.warmup,
                                   repeats_for(column.batch, args), args.stat, args.pre_runs)
    finally:
        for a in arms:
            a.model.to("cpu", memory_format=torch.contiguous_format)
    for arm, ms in zip(arms, medians):
        arm.ms[column.name] = ms


def repeats_for(batch: int, args) -> int:
    if args.repeats is not None:
        return args.repeats
    return 20 if batch <= 1 or args.device != "cpu" else 10


def columns_for(args) -> list[Column]:
    if args.device == "cpu":
        return [Column(backend, b) for backend in args.backends for b in args.batches]
    return [Column("cuda", b) for b in args.batches]


def measure(arms: list[Arm], args, workdir: Path) -> list[Column]:
    columns = columns_for(args)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for column in columns:
            t0 = time.perf_counter()
            if column.backend == "ort":
                measure_ort(arms, column, args, workdir)
            else:
                measure_torch(arms, column, args)
            medians = ", ".join(f"{a.label}{'' if a.target is None else f' {a.target:g}'} {a.ms[column.name]:.1f}"
                                for a in arms)
            print(f"  measured {column.name} [{time.perf_counter() - t0:.1f}s] ms: {medians}", flush=True)
    finally:
        torch.set_num_threads(torch_threads)
    return columns


# --------------------------------------------------------------------------- ORT's channel padding
def padded_macs(model: nn.Module, x: torch.Tensor, block: int) -> int:
    """MACs when every conv's channels are padded the way ORT's NCHWc kernels pad them.

    A model of MLAS' behaviour: output channels (and depthwise channels) rounded up to
    the block; input channels too when there are at least ``block`` of them (narrower
    inputs, such as the RGB image, are read as NCHW). Linear layers are unchanged.
    """
    if block <= 1:
        return count_flops(model, (x,))

    def up(c: int) -> int:
        return -(-c // block) * block

    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvNd):
            hw = output[0, 0].numel() * output.shape[0]
            k = math.prod(module.kernel_size)
            cin, cout, g = module.in_channels, module.out_channels, module.groups
            if g == 1:
                total += hw * up(cout) * (up(cin) if cin >= block else cin) * k
            elif g == cin == cout:
                total += hw * up(cout) * k
            else:
                total += hw * cout * (cin // g) * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return int(total)


# --------------------------------------------------------------------------- ORT profile (optional)
def _conv_kind(event_args: dict) -> str:
    """Bucket a Conv node by its weight shape: 1x1, kxk, depthwise (from ORT's profile args)."""
    shapes = event_args.get("input_type_shape") or []
    try:
        x_shape = list(shapes[0].values())[0]
        w_shape = list(shapes[1].values())[0]
    except (IndexError, AttributeError):
        return "Conv"
    cin, cout_per, k = x_shape[1], w_shape[1], w_shape[2:]
    if cout_per == 1 and cin > 1:
        return "Conv dw"
    return f"Conv {'x'.join(map(str, k))}"


def _conv_macs(event_args: dict) -> int:
    shapes = event_args.get("input_type_shape") or []
    out = event_args.get("output_type_shape") or []
    try:
        w_shape = list(shapes[1].values())[0]
        y_shape = list(out[0].values())[0]
    except (IndexError, AttributeError):
        return 0
    return math.prod(y_shape) * math.prod(w_shape[1:])


def profile_arm(path: Path, batch: int, size: int, threads: int, runs: int, workdir: Path) -> dict[str, list[float]]:
    """Per operator kind: [ms per run, GMACs per run] from an ONNX Runtime profile.

    Each node's time is its median over ``runs`` profiled runs (after 2 warm-up runs),
    which keeps the figures usable on a noisy machine.
    """
    session = ort_session(path, threads, profile_prefix=str(workdir / "prof"))
    name = session.get_inputs()[0].name
    x = torch.randn(batch, 3, size, size).numpy()
    for _ in range(2 + runs):
        session.run(None, {name: x})
    trace = Path(session.end_profiling())
    events = [e for e in json.loads(trace.read_text())
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    trace.unlink()
    durations: dict[str, list[float]] = collections.defaultdict(list)
    info: dict[str, tuple[str, float]] = {}
    for e in events:
        durations[e["name"]].append(e["dur"] / 1e3)
        if e["name"] not in info:
            op = e.get("args", {}).get("op_name", "?")
            is_conv = op in ("Conv", "FusedConv")
            kind = _conv_kind(e["args"]) if is_conv else op
            info[e["name"]] = (kind, _conv_macs(e["args"]) / 1e9 if is_conv else 0.0)
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for node, ds in durations.items():
        kind, gmacs = info[node]
        totals[kind][0] += statistics.median(ds[-runs:])
        totals[kind][1] += gmacs
    return dict(totals)


def print_profiles(name: str, arms: list[Arm], args, workdir: Path) -> str:
    batch = max(args.batches)
    lines = [f"ONNX Runtime profile, {name}, batch {batch}, {args.threads} threads: ms per run by operator kind "
             f"(GMAC/s achieved for convolutions)"]
    for arm in arms:
        path = export_arm(arm, batch, args.size, workdir, args.exporter)
        prof = profile_arm(path, batch, args.size, args.threads, runs=args.profile_runs, workdir=workdir)
        total = sum(v[0] for v in prof.values())
        parts = []
        for kind, (ms, gmacs) in sorted(prof.items(), key=lambda kv: -kv[1][0]):
            if ms < 0.02 * total:
                continue
            rate = f" {gmacs / (ms / 1e3):.0f}GMAC/s" if gmacs else ""
            parts.append(f"{kind} {ms:.1f}ms{rate}")
        tgt = "" if arm.target is None else f" t={arm.target:g}"
        lines.append(f"  {arm.label + tgt:<16} total {total:7.1f}ms | " + " | ".join(parts))
    text = "\n".join(lines)
    print(text, flush=True)
    return text
