"""Real speed-up of pruned models: does the latency drop as much as the MACs do?

Table 2 of the benchmark issue. For each model (default resnet50 and mobilenet_v2 at
224x224) and each MACs target ``t`` (default 50% and 25% of the full model) it builds
these arms, all from the same randomly initialised model (``weights=None``, fixed seed;
latency does not depend on the weight values; BatchNorm in eval mode):

- ``full``: the unpruned model;
- ``dmcp d8``: a *searched-style* non-uniform arch from dmcpfx itself, with every
  candidate width a multiple of 8: ``dmcpfx.instrument(divisor=8)`` at a small
  resolution (``--search-size``), a short ``dmcpfx.search`` (``--search-steps``
  iterations, half weight warm-up, half architecture steps; weight lr ``--search-lr``
  0.02 because the official 0.5 diverges on a few random images) on ``synthetic_loaders``
  data (random images and labels), seeds fixed, the learned alphas copied into a space instrumented
  at ``--size``, then ``dmcpfx.derive(space, "expected", target=t)``. HONEST LABEL:
  this is the shape the DMCP search gives WITHOUT a data signal and after only a few
  steps (the alphas barely leave their initial value, so the shape comes mostly from
  the gate splits and derive's greedy adjustment); it stands in for an ImageNet search.
  Accuracy is table 1's job, not this script's;
- ``dmcp d1``: the same with ``divisor=1`` (any channel count);
- ``uniform d8``: one keep ratio ``r`` for every prunable group, each width the nearest
  multiple of 8 (and of the group's own divisor) in ``[8, C]``; ``r`` solved for the
  target (safeguarded secant on ``MACs ~ r**2``, falling back to bisection);
- ``TP L1 r8``: Torch-Pruning's ``MagnitudePruner`` (L1 magnitude importance, local
  per-layer ranking, ``round_to=8``, the classifier ignored), ``pruning_ratio`` solved
  the same way. Its MACs are a staircase in the ratio (``round_to`` floors every layer
  at once; on ResNet-50 the MACs jump from 25.7% to 21.6% at ratio 0.5), so it can miss
  the band; the closest ratio is kept and flagged;
- ``TP L1``: the same without ``round_to`` (reference).

Every arm's MACs are counted with ``count_flops`` on the compact model at
``1x3xSxS`` and must lie within 2% of ``t * full`` (printed; a miss is flagged, never
hidden). The derived dmcp widths are cached as arch YAML under
``benchmarks/results/archs/`` (the file name holds the search settings; ``--research``
redoes the search).

Protocol (CPU, the default):

- every arm is exported with ``dmcpfx.export_onnx`` (dynamo exporter, torchscript as a
  fallback; checked against PyTorch with onnxruntime). That export has a STATIC batch
  dimension, so each arm is exported once per batch size;
- ONNX Runtime ``CPUExecutionProvider``, ``intra_op_num_threads=--threads``,
  ``inter_op_num_threads=1``, sequential execution, graph optimizations ALL,
  ``session.force_spinning_stop=1`` (see ``ort_session``) -- identical for every arm;
- PyTorch eager on CPU, ``torch.set_num_threads(--threads)``, ``inference_mode``;
- batches ``--batches`` (1 and 16); for each (backend, batch) all arms of a model are
  loaded together, each is warmed up, then the timed runs are INTERLEAVED (round robin,
  the starting arm rotating every round) so that drifting machine load hits every arm
  alike; each timed run directly follows an untimed run of the same arm (``--pre-runs``),
  so that the previous arm's cache footprint is not charged to it (interleaving 6
  mobilenet_v2 sessions at batch 16: 47 ms per run instead of 39 ms alone, 40 ms with
  the untimed run); the figure is the median of ``--repeats`` timed runs (default 20 at
  batch 1, 10 above; ``--stat min`` for the minimum);
- printed per arm: MACs, MACs ratio (full / arm) and, per column, the median latency,
  the latency ratio (full / arm) and the quotient ``latency ratio / MACs ratio``
  (1.0: the speed-up equals the MACs cut; the issue's goal is >= 0.95 at batch 16 with
  ONNX Runtime at 50% MACs).

GPU mode (``--device cuda --amp bf16|fp16``): PyTorch eager only (no ONNX Runtime), at
batches 64 and 256 unless ``--batches`` is given, timed with a CUDA synchronize after
each forward.

Run (the figures of the issue; about 10 minutes on 2 quiet cores, plus about 5 minutes of
short searches the first time, whose archs are then read from the cache)::

    .venv/bin/python benchmarks/latency.py --models resnet50,mobilenet_v2 --size 224 \\
        --targets 0.5,0.25 --batches 1,16 --threads 2 \\
        --markdown benchmarks/results/latency.md

    .venv/bin/python benchmarks/latency.py --smoke          # tiny, for the test
    .venv/bin/python benchmarks/latency.py --device cuda --amp bf16 --models resnet50

Add ``--profile`` to print, for the largest batch, where ONNX Runtime spends its time per
arm (per operator kind, with the achieved GMAC/s of the convolutions), and e.g.
``--arms dmcp-d8,dmcp-d16,uniform-d16,tp-l1-r16`` for widths in multiples of 16.

Reading the table: ``pad16 q`` (CPU only) is the quotient predicted if ONNX Runtime's time
were proportional to the MACs after MLAS pads every conv's channels to its NCHWc block,
probed at start-up (16 channels with AVX-512, 8 with AVX2): a width of 8 mod 16 costs as
much as the next multiple of 16 there. Widths that are not multiples of the block at all
(``dmcp d1``, ``TP L1``) also lose the NCHWc fast path in places (reorder nodes, unfused
Add/Relu, slow depthwise kernels), which ``pad16 q`` does not model.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import io
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dmcpfx  # noqa: E402
from dmcpfx.arch import load_arch  # noqa: E402
from dmcpfx.counting import count_flops  # noqa: E402
from dmcpfx.data import synthetic_loaders  # noqa: E402
from dmcpfx.fileio import write_text_atomic  # noqa: E402
from dmcpfx.product.onnx_export import run_and_compare  # noqa: E402
from dmcpfx.search.latency_measure import runtime_divisor  # noqa: E402

DEFAULT_ARCH_DIR = REPO / "benchmarks" / "results" / "archs"
MACS_BAND = 0.02  # every arm's exact MACs within 2% of the target
ALL_ARMS = ("dmcp-d8", "dmcp-d1", "uniform-d8", "tp-l1-r8", "tp-l1")  # the arms (default)
EXTRA_ARMS = ("dmcp-d16", "uniform-d16", "tp-l1-r16")  # multiples of 16: ORT's NCHWc block on AVX-512
ARM_RE = re.compile(r"^(dmcp-d|uniform-d|tp-l1-r)(\d+)$|^tp-l1$")


def arm_label(key: str) -> str:
    """``dmcp-d8`` -> ``dmcp d8``, ``tp-l1-r8`` -> ``TP L1 r8``."""
    if key == "full":
        return "full"
    if key.startswith("tp-l1"):
        return "TP L1" + ("" if key == "tp-l1" else " r" + key.rsplit("-r", 1)[1])
    return key.replace("-", " ")


ARM_LABELS = {k: arm_label(k) for k in ("full", *ALL_ARMS, *EXTRA_ARMS)}
GOAL = 0.95


# --------------------------------------------------------------------------- data types
@dataclass
class Arm:
    """One model variant to time."""

    key: str                      # e.g. "dmcp-d8", "full"
    target: float | None          # MACs ratio asked for (None: the full model)
    model: nn.Module
    macs: int                     # exact, count_flops at 1x3xSxS
    note: str = ""
    ms: dict[str, float] = field(default_factory=dict)  # column -> median milliseconds
    padded: int | None = None     # MACs with channels padded to ORT's NCHWc block

    @property
    def label(self) -> str:
        return arm_label(self.key)


@dataclass(frozen=True)
class Column:
    backend: str  # "ort", "eager" or "cuda"
    batch: int

    @property
    def name(self) -> str:
        return f"{self.backend} b{self.batch}"


# --------------------------------------------------------------------------- models
def build_model(name: str, seed: int) -> nn.Module:
    """A torchvision classifier with random weights (fixed seed), eval mode."""
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).eval()


def last_linear(model: nn.Module) -> nn.Module:
    """The classifier: the last ``nn.Linear`` in module order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


def within_band(macs: float, target: float, band: float = MACS_BAND) -> bool:
    return abs(macs - target) <= band * target


@contextlib.contextmanager
def torch_threads(n: int):
    """Temporarily set torch's intra-op threads (the untimed work runs on one thread:
    OpenMP threads of small ops slow down by orders of magnitude on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- dmcp arms
def arch_cache_path(arch_dir: Path, name: str, size: int, divisor: int, target: float, args) -> Path:
    """The cache file of one searched arch; its name holds every setting that shapes it."""
    return arch_dir / (
        f"{name}_{size}px_d{divisor}_t{target:g}_search{args.search_size}px-b{args.search_batch}"
        f"-{args.search_steps}steps-lr{args.search_lr:g}-seed{args.seed}.yaml"
    )


def short_search(model: nn.Module, divisor: int, target: float, args) -> dict[str, torch.Tensor]:
    """A short DMCP search on random data at ``--search-size``; returns the alphas per group.

    The weight learning rate is ``--search-lr`` (0.02), not the official 0.5: that value is
    meant for ImageNet batch sizes, and on a batch of a few random images it makes the
    weights diverge (NaN alphas were seen)."""
    x = torch.randn(1, 3, args.search_size, args.search_size)
    space = dmcpfx.instrument(model, (x,), divisor=divisor)
    half = max(1, args.search_steps // 2)
    data = synthetic_loaders(num_classes=last_linear(model).out_features, image_size=args.search_size,
                             batch_size=args.search_batch, steps=half, seed=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dmcpfx.search(space, data.train, target=target, epochs=2, warmup_epochs=1, device="cpu",
                               seed=args.seed, progress=False, lr=args.search_lr, min_lr=0.16 * args.search_lr)
    bad = [gid for gid, gate in space.gates().items() if not torch.isfinite(gate.alpha).all()]
    if bad:
        raise RuntimeError(f"the short search diverged: non-finite alphas in {len(bad)} groups (e.g. {bad[0]}); "
                           "lower --search-lr")
    print(f"  search d{divisor} t={target:g}: {result.steps} steps at {args.search_size}px, "
          f"E[MACs] {result.expected / result.full:.3f} of full (target {target:g})", flush=True)
    return {gid: gate.alpha.detach().clone() for gid, gate in space.gates().items()}


def derive_at_size(model: nn.Module, x: torch.Tensor, divisor: int, alphas: dict[str, torch.Tensor],
                   target: float, path: Path, model_name: str) -> dict[str, int]:
    """Copy searched alphas into a space instrumented at the benchmark size and derive there.

    The gate splits depend only on the channel counts and the divisor, not on the input
    size, so the alphas transfer one to one; deriving at the benchmark size makes the
    ratio target exact there (the classifier's MACs share does depend on the size).
    """
    space = dmcpfx.instrument(model, (x,), divisor=divisor)
    gates = space.gates()
    if set(gates) != set(alphas):
        raise RuntimeError("the search space at the search size has other groups than at the benchmark size")
    with torch.no_grad():
        for gid, gate in gates.items():
            gate.alpha.copy_(alphas[gid])
    return dmcpfx.derive(space, "expected", target=target, path=path, model_name=model_name)


def dmcp_widths(model: nn.Module, name: str, x: torch.Tensor, divisor: int, target: float, args) -> dict[str, int]:
    """Searched-style widths: from the arch cache, or a short search + derive (then cached)."""
    size = x.shape[-1]
    path = arch_cache_path(Path(args.arch_dir), name, size, divisor, target, args)
    if path.exists() and not args.research:
        arch = load_arch(path)
        if arch.input_shape and list(arch.input_shape) != list(x.shape):
            raise RuntimeError(f"{path} was derived for input {arch.input_shape}, not {list(x.shape)}")
        print(f"  dmcp d{divisor} t={target:g}: arch from {path.relative_to(REPO) if path.is_relative_to(REPO) else path}",
              flush=True)
        return arch.widths
    torch.manual_seed(args.seed)
    alphas = short_search(model, divisor, target, args)
    return derive_at_size(model, x, divisor, alphas, target, path, f"torchvision.models.{name}")


# --------------------------------------------------------------------------- uniform arm
def uniform_widths(graph, keep: float, multiple: int = 8) -> dict[str, int]:
    """One keep ratio for every prunable group, each width the valid one nearest to
    ``keep * C``: a multiple of ``lcm(multiple, group divisor)`` in ``[q, C]``, or ``C`` itself."""
    widths = {}
    for gid, group in graph.prunable.items():
        q = math.lcm(multiple, group.divisor)
        valid = [*range(q, group.width + 1, q), group.width]
        widths[gid] = min(valid, key=lambda w: (abs(w - keep * group.width), w))
    return widths


def solve_keep(macs_of: Callable[[float], tuple[int, object]], target_macs: float, guess: float, *,
               lo: float = 0.02, hi: float = 1.0, iters: int = 16, stop: float = 0.005,
               power: float = 2.0) -> tuple[float, int, object]:
    """Find a keep ratio whose MACs (growing with it) hit ``target_macs``; return the closest
    ``(keep, macs, payload)`` seen.

    Safeguarded secant on ``MACs ~ keep**power`` (channel pruning cuts both sides of most
    layers), falling back to bisection of the bracket; stops once within ``stop`` (relative)
    of the target. MACs are a staircase in ``keep`` (widths are integers), so the caller
    checks the result against its band.
    """
    best: tuple[float, int, object] | None = None
    keep = min(max(guess, lo), hi)
    for _ in range(iters):
        macs, payload = macs_of(keep)
        if best is None or abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (keep, macs, payload)
        if abs(macs - target_macs) <= stop * target_macs:
            break
        if macs > target_macs:
            hi = keep
        else:
            lo = keep
        proposal = keep * (target_macs / max(macs, 1)) ** (1.0 / power)
        keep = proposal if lo < proposal < hi and abs(proposal - keep) > 1e-6 else 0.5 * (lo + hi)
    assert best is not None
    return best


def uniform_arm(model: nn.Module, x: torch.Tensor, target: float, full_macs: int,
                multiple: int = 8) -> tuple[dict[str, int], str]:
    graph = dmcpfx.analyze(model, (x,))

    def macs_of(keep: float) -> tuple[int, dict[str, int]]:
        widths = uniform_widths(graph, keep, multiple)
        return int(graph.flops(widths)), widths

    keep, _, widths = solve_keep(macs_of, target * full_macs, guess=math.sqrt(target))
    return widths, f"keep ratio {keep:.4f}"


# --------------------------------------------------------------------------- Torch-Pruning arms
def tp_prune(model: nn.Module, x: torch.Tensor, pruning_ratio: float, round_to: int | None) -> nn.Module:
    """A pruned deep copy: Torch-Pruning L1 magnitude, local ranking, classifier ignored."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        pruner_cls = getattr(tp.pruner, "MagnitudePruner", None) or tp.pruner.BasePruner  # alias in 1.6
        pruner = pruner_cls(
            pruned, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=pruning_ratio, ignored_layers=[last_linear(pruned)], round_to=round_to,
        )
        pruner.step()
    return pruned.eval()


def tp_arm(model: nn.Module, x: torch.Tensor, target: float, full_macs: int,
           round_to: int | None) -> tuple[nn.Module, str]:
    def macs_of(keep: float) -> tuple[int, nn.Module]:
        pruned = tp_prune(model, x, 1.0 - keep, round_to)
        return count_flops(pruned, (x,)), pruned

    keep, _, pruned = solve_keep(macs_of, target * full_macs, guess=math.sqrt(target), lo=0.05)
    return pruned, f"pruning_ratio {1.0 - keep:.4f}"


# --------------------------------------------------------------------------- building all arms
def build_arms(name: str, args) -> list[Arm]:
    """The full model and every requested arm at every target, MACs verified."""
    model = build_model(name, args.seed)
    x = torch.randn(1, 3, args.size, args.size)
    full_macs = count_flops(model, (x,))
    arms = [Arm("full", None, model, full_macs)]
    for target in args.targets:
        for key in args.arms:
            t0 = time.perf_counter()
            compact, note = make_arm(key, model, name, x, target, full_macs, args)
            macs = count_flops(compact, (x,))
            ok = within_band(macs, target * full_macs)
            note = note + ("" if ok else f"; MACs MISS the {MACS_BAND:.0%} band")
            arms.append(Arm(key, target, compact.eval(), macs, note))
            print(f"  {arm_label(key):<11} t={target:g}: {macs / 1e9:.4f} GMACs = {macs / full_macs:.4f} of full "
                  f"({'within' if ok else 'OUTSIDE'} {MACS_BAND:.0%} of {target:g}); {note} "
                  f"[{time.perf_counter() - t0:.1f}s]", flush=True)
    return arms


def make_arm(key: str, model: nn.Module, name: str, x: torch.Tensor, target: float, full_macs: int,
             args) -> tuple[nn.Module, str]:
    m = ARM_RE.match(key)
    if m is None:
        raise ValueError(f"unknown arm {key!r}; choose from {', '.join(ALL_ARMS + EXTRA_ARMS)}")
    kind, n = m.group(1), int(m.group(2)) if m.group(2) else None
    if kind == "dmcp-d":
        widths = dmcp_widths(model, name, x, n, target, args)
        return dmcpfx.materialize(model, widths, (x,)), f"derive expected, divisor {n}"
    if kind == "uniform-d":
        widths, note = uniform_arm(model, x, target, full_macs, multiple=n)
        return dmcpfx.materialize(model, widths, (x,)), note
    return tp_arm(model, x, target, full_macs, n)


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


# --------------------------------------------------------------------------- report
def result_rows(name: str, arms: list[Arm], columns: list[Column]) -> list[dict]:
    full = arms[0]
    rows = []
    for arm in arms:
        target_macs = None if arm.target is None else arm.target * full.macs
        row = {
            "model": name, "arm": arm.label, "key": arm.key, "target": arm.target, "macs": arm.macs,
            "macs_share": arm.macs / full.macs, "macs_ratio": full.macs / arm.macs,
            "macs_ok": True if target_macs is None else within_band(arm.macs, target_macs), "note": arm.note,
            "columns": {},
        }
        if arm.padded is not None and full.padded:
            row["padded_macs"] = arm.padded
            row["padded_ratio"] = full.padded / arm.padded
            row["padded_quotient"] = row["padded_ratio"] / row["macs_ratio"]
        for col in columns:
            ms = arm.ms[col.name]
            lat_ratio = full.ms[col.name] / ms
            row["columns"][col.name] = {"ms": ms, "lat_ratio": lat_ratio, "quotient": lat_ratio / row["macs_ratio"]}
        rows.append(row)
    return rows


def format_table(name: str, rows: list[dict], columns: list[Column], markdown: bool = False,
                 block: int = 0) -> str:
    head = ["arm", "target", "GMACs", "MACs share", "MACs x"]
    padded = block > 1 and all("padded_quotient" in r for r in rows)
    if padded:
        head += [f"pad{block} q"]
    for col in columns:
        head += [f"{col.name} ms", f"{col.name} lat x", f"{col.name} q"]
    body = []
    for r in rows:
        cells = [r["arm"] + ("" if r["macs_ok"] else " (MACs miss)"),
                 "-" if r["target"] is None else f"{r['target']:.0%}",
                 f"{r['macs'] / 1e9:.3f}", f"{r['macs_share']:.3f}", f"{r['macs_ratio']:.2f}"]
        if padded:
            cells += [f"{r['padded_quotient']:.2f}"]
        for col in columns:
            c = r["columns"][col.name]
            cells += [f"{c['ms']:.2f}", f"{c['lat_ratio']:.2f}", f"{c['quotient']:.2f}"]
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([f"== {name} ==", fmt(head), *(fmt(b) for b in body)])


def goal_lines(rows: list[dict], columns: list[Column]) -> list[str]:
    """The issue's goal: quotient >= 0.95 at 50% MACs, ONNX Runtime, batch 16."""
    col = next((c for c in columns if c.backend == "ort" and c.batch == 16), None)
    if col is None:
        return []
    lines = []
    for r in rows:
        if r["target"] is not None and abs(r["target"] - 0.5) < 1e-9:
            q = r["columns"][col.name]["quotient"]
            lines.append(f"- {r['model']} {r['arm']}: quotient {q:.3f} at 50% MACs, {col.name} "
                         f"({'meets' if q >= GOAL else 'MISSES'} the {GOAL} goal)")
    return lines


def environment_line(args) -> str:
    import onnxruntime as ort

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"torch {torch.__version__}, onnxruntime {ort.__version__}, device {args.device}"
            f"{'' if args.amp is None else ' amp ' + args.amp}, threads {args.threads}, cpu '{cpu}' "
            f"({os.cpu_count()} logical), size {args.size}, seed {args.seed}, warm-up {args.warmup}, "
            f"repeats {args.repeats or 'default (20 at batch 1, 10 above)'}, pre-runs {args.pre_runs}, "
            f"statistic {args.stat}, exporter {args.exporter}")


def write_markdown(path: str, args, argv: Sequence[str], tables: list[str], goals: list[str], profiles: list[str],
                   block: int = 0) -> None:
    text = [
        "# Latency of pruned models vs their MACs (benchmarks/latency.py)", "",
        f"Command: `python benchmarks/latency.py {' '.join(argv)}`", "",
        environment_line(args), "",
        "Quotient q = latency ratio / MACs ratio (1.0: the speed-up equals the MACs cut). "
        "`dmcp d8`/`dmcp d1` are searched-style archs from a short DMCP search on random data "
        "(no data signal), a stand-in for an ImageNet search. An arm marked `(MACs miss)` could not be "
        "brought within 2% of the target (its exact MACs are in the table and its quotient uses them).",
        *([f"`pad{block} q`: the quotient expected if ONNX Runtime's time were proportional to the MACs "
           f"with every conv's channels padded to its NCHWc block ({block} on this CPU), as MLAS does."]
          if block > 1 else []), "",
        *[t + "\n" for t in tables],
    ]
    if goals:
        text += ["## Goal (q >= 0.95, ONNX Runtime, batch 16, 50% MACs)", "", *goals, ""]
    if profiles:
        text += ["## ONNX Runtime profiles", "", "```", *profiles, "```", ""]
    write_text_atomic(path, "\n".join(text))


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated torchvision names (resnet50,mobilenet_v2)")
    ap.add_argument("--size", type=int, default=None, help="input height = width (224)")
    ap.add_argument("--targets", default=None, help="MACs ratios (0.5,0.25)")
    ap.add_argument("--batches", default=None, help="batch sizes (CPU: 1,16; CUDA: 64,256)")
    ap.add_argument("--arms", default=",".join(ALL_ARMS),
                    help=f"comma-separated arms (default {','.join(ALL_ARMS)}; also {','.join(EXTRA_ARMS)}, "
                         "any dmcp-dN, uniform-dN, tp-l1-rN)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per arm (20 at batch 1, 10 above)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs per arm (3)")
    ap.add_argument("--pre-runs", type=int, default=1,
                    help="untimed runs of the same arm right before each timed run (1; see time_interleaved)")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="statistic of the timed runs (median; min is steadier on a machine shared with others)")
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads and torch threads (2)")
    ap.add_argument("--exporter", choices=["dmcpfx", "dynamic"], default=None,
                    help="dmcpfx.export_onnx per batch (static shapes, default) or torchscript, dynamic batch")
    ap.add_argument("--device", default="cpu", help="cpu (ORT + eager) or cuda (eager only)")
    ap.add_argument("--backends", default="ort,eager", help="CPU backends to time: ort, eager or both")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype (cuda)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC for PyTorch eager")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-size", type=int, default=None, help="input size of the short search (64)")
    ap.add_argument("--search-steps", type=int, default=None, help="search iterations, half warm-up (16)")
    ap.add_argument("--search-batch", type=int, default=None, help="search batch size (8)")
    ap.add_argument("--search-lr", type=float, default=0.02, help="search weight lr (cosine to 0.16x)")
    ap.add_argument("--arch-dir", default=str(DEFAULT_ARCH_DIR), help="cache of derived dmcp archs (YAML)")
    ap.add_argument("--research", action="store_true", help="redo the dmcp searches even if cached")
    ap.add_argument("--markdown", default=None, help="also write the tables to this file (atomically)")
    ap.add_argument("--profile", action="store_true", help="ORT per-operator profile of every arm (largest batch)")
    ap.add_argument("--profile-runs", type=int, default=5, help="profiled runs per arm (median per node)")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test (mobilenet_v2, 64px, one target)")
    args = ap.parse_args(argv)
    cuda = args.device != "cpu"
    defaults = dict(models="resnet50,mobilenet_v2", size=224, targets="0.5,0.25",
                    batches="64,256" if cuda else "1,16", warmup=3, threads=2, exporter="dmcpfx", search_size=64, search_steps=16, search_batch=8)
    if args.smoke:
        defaults.update(models="mobilenet_v2", size=64, targets="0.5", batches="8,32" if cuda else "1,2",
                        warmup=1, repeats=2, threads=1, exporter="dynamic", search_size=32, search_steps=2,
                        search_batch=4)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = [m for m in args.models.split(",") if m]
    args.targets = [float(t) for t in args.targets.split(",") if t]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.arms = [a for a in args.arms.split(",") if a]
    args.backends = [b for b in args.backends.split(",") if b]
    if not args.backends or set(args.backends) - {"ort", "eager"}:
        ap.error("--backends is a comma-separated subset of ort,eager")
    unknown = [a for a in args.arms if not ARM_RE.match(a)]
    if unknown:
        ap.error(f"unknown arms {unknown}; choose from {','.join(ALL_ARMS + EXTRA_ARMS)}")
    if any(not 0.0 < t < 1.0 for t in args.targets):
        ap.error("targets are MACs ratios in (0, 1)")
    if cuda and not torch.cuda.is_available():
        ap.error(f"--device {args.device} asked but CUDA is not available")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the benchmark; print the tables; return one row dict per (model, arm)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    print(environment_line(args), flush=True)
    all_rows, tables, goals, profiles = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="dmcpfx_latency_") as tmp:
        block = runtime_divisor("ort-cpu") if args.device == "cpu" else 0  # the NCHWc block, probed
        if args.device == "cpu":
            print(f"ONNX Runtime NCHWc channel block on this CPU: {block or 'not used'}", flush=True)
        for name in args.models:
            print(f"[{name}] building arms", flush=True)
            with torch_threads(1):
                arms = build_arms(name, args)
            workdir = Path(tmp) / name
            workdir.mkdir()
            if args.device == "cpu":
                with torch_threads(1):
                    for arm in arms:
                        arm.padded = padded_macs(arm.model, torch.randn(1, 3, args.size, args.size), block)
            columns = measure(arms, args, workdir)
            rows = result_rows(name, arms, columns)
            print(format_table(name, rows, columns, block=block), flush=True)
            notes = [f"- {r['arm']} {r['target']:.0%}: {r['note']}" for r in rows if r["note"]]
            tables.append(f"## {name}\n\n" + format_table(name, rows, columns, markdown=True, block=block)
                          + "\n\nHow each arm was made:\n\n" + "\n".join(notes))
            goals += goal_lines(rows, columns)
            if args.profile and args.device == "cpu":
                profiles.append(print_profiles(name, arms, args, workdir))
            all_rows += rows
    if goals:
        print("Goal: quotient >= 0.95 at 50% MACs, ONNX Runtime, batch 16\n" + "\n".join(goals))
    if args.markdown:
        write_markdown(args.markdown, args, argv, tables, goals, profiles, block)
        print(f"wrote {args.markdown}")
    return all_rows


if __name__ == "__main__":
    main()
