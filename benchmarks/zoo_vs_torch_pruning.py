"""Analysis speed and coverage against Torch-Pruning over the torchvision classification zoo.

For every model of ``torchvision.models.list_models(module=torchvision.models)``
(``weights=None``, seed 0, eval mode, norm statistics randomized with
``tests/equivalence.randomize_norms``, batch 1, the input sizes of
``tests/test_zoo.py``) both tools prune about half of the channels of every group
they can prune, and the script reports time, exactness and the MACs kept.

What is timed (``time.perf_counter``, a ``gc.collect()`` before each timed part,
one warm-up of both tools on a tiny network before the first model):

- **ours** (``--ours analyze``, the default: what a user runs to prune at fixed
  widths): ``dmcpfx.analyze(model, x)``, per prunable group the gate candidate
  (``split_channels``, the widths ``instrument`` offers; groups too narrow
  for a gate are left whole, as ``instrument`` does) nearest 0.5 x width, and
  ``dmcpfx.materialize(model, widths, x, graph=graph)`` (reusing that analysis)
  with its default ``verify=True``: it deep-copies, slices the weights and checks
  the compact model against the masked model with two forward passes. The copy
  and the built-in check are work Torch-Pruning does not do; they are timed anyway. ``--ours instrument`` times the search-side path instead:
  ``dmcpfx.instrument(model, x)`` (copy + analysis + gate insertion) and
  ``dmcpfx.materialize(space, widths, x)``, with the same widths.
- **Torch-Pruning** (``tp.pruner.BasePruner``, the class ``MagnitudePruner``
  aliases): construction on a deep copy of the model (it builds the
  ``DependencyGraph`` by tracing the example input) with
  ``tp.importance.MagnitudeImportance(p=1)``, ``pruning_ratio=0.5`` (local, per
  group) and ``ignored_layers`` = the classifier layers (Linear / Conv with
  ``num_classes`` outputs), then the pruning step. The step runs as
  ``for group in pruner.step(interactive=True): group.prune()`` (what
  ``pruner.step()`` does) so the oracle can record each group; the recording
  itself is excluded from the time.

The deep copies made before a timed part, the oracles and the MACs counts are
not timed.

Oracle (DESIGN.md section 8 property 1, applied to each tool's own choice of
channels): the pruned model's output must equal the output of the UNPRUNED model
with the removed channels zeroed, within ``max|a - b| / max|b| <= 1e-4``.

- ours: ``dmcpfx.instrument(model, x)`` (built outside the timed part) with hard
  masks at the same widths (``space.set_widths``) vs the compact model;
- Torch-Pruning: for every group it prunes, each item whose handler removes INPUT
  channels of a Conv, Linear or MultiheadAttention (the consumers) is recorded,
  mapped back to the consumer's original channel numbers (TP prunes group after
  group, so later indices refer to already-pruned layers). The reference is a deep
  copy of the unpruned model whose consumers get a forward pre-hook multiplying
  their input by a 0/1 mask (channel dim 1 for conv, last dim otherwise).
  Torch-Pruning also prunes LayerNorm / GroupNorm channels, whose statistics then
  change: the oracle reports those models as not equivalent (the notes say so).

A crash of a tool (build, prune or running the pruned model) is a failure with a
one-line reason; one model or tool failing never stops the run. So does running
past ``--timeout`` seconds (per tool and model, default 600) or past the
``--max-memory-gb`` address-space cap (default 75% of RAM + 3 GiB: Torch-Pruning's
index mapping grows without bound on Swin and MaxViT). MACs are counted
with ``count_flops`` (conv + linear modules) for both tools, pruned / full.
Warnings are collected and summarized at the end.

Command (the official figures: all 80 models)::

    .venv/bin/python benchmarks/zoo_vs_torch_pruning.py --threads 2 --markdown zoo_vs_tp.md
    .venv/bin/python benchmarks/zoo_vs_torch_pruning.py --models resnet18,mobilenet_v2 --size 32 --threads 1
    .venv/bin/python benchmarks/zoo_vs_torch_pruning.py --ours instrument   # time the search-side path
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import gc
import importlib.metadata
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the section 8 oracle helpers (tests/equivalence.py)

import dmcpfx  # noqa: E402
from dmcpfx.counting import count_flops  # noqa: E402
from dmcpfx.search.gates import split_channels  # noqa: E402
from dmcpfx.fileio import write_text_atomic  # noqa: E402
from equivalence import TOL, first_tensor, randomize_norms, rel_diff  # noqa: E402

try:
    import torch_pruning as tp
except ImportError as exc:  # pragma: no cover - the bench/dev extras install it
    raise SystemExit("this benchmark needs Torch-Pruning: pip install -e '.[bench]'") from exc

# Input sizes the architecture requires; others run at --size (default 64).
# The same dict as tests/test_zoo.py INPUT_SIZE (the smoke test checks they agree).
INPUT_SIZE = {
    "inception_v3": 299,
    "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224,
    "maxvit_t": 224,
}
RATIO = 0.5  # fraction of each group's channels that both tools remove (about)
CONSUMERS = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)
STATS_NORMS = (nn.LayerNorm, nn.GroupNorm)


# --- results -----------------------------------------------------------------------------
@dataclass
class ToolResult:
    """One tool on one model: ``seconds`` is None when the timed part crashed."""

    seconds: float | None = None
    diff: float | None = None  # oracle relative difference; None when not measured
    macs_ratio: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    pruned: nn.Module | None = field(default=None, repr=False)  # the model after pruning (when it ran)

    @property
    def equivalent(self) -> bool:
        return self.error is None and self.diff is not None and self.diff <= TOL

    @property
    def status(self) -> str:
        if self.error is not None:
            return "FAIL"
        if self.diff is None:
            return "?"
        return "yes" if self.diff <= TOL else f"NO {self.diff:.1e}"


@dataclass
class Row:
    model: str
    ours: ToolResult
    tp: ToolResult

    @property
    def speed_ratio(self) -> float | None:
        """ours seconds / TP seconds (< 1: ours faster); None if a tool has no time."""
        if self.ours.seconds is None or self.tp.seconds is None:
            return None
        return self.ours.seconds / max(self.tp.seconds, 1e-12)

    def notes(self) -> str:
        parts = [f"ours: {n}" for n in self.ours.notes] + [f"TP: {n}" for n in self.tp.notes]
        return "; ".join(parts)


def one_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ("address space above --max-memory-gb" if isinstance(exc, MemoryError) else "")
    message = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."


# --- model and input ---------------------------------------------------------------------
def build(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """The zoo model as tests/test_zoo.py builds it (seed 0, eval, random norm stats)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    randomize_norms(model)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, x


def run_eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return first_tensor(model(x))


def macs_ratio(pruned: nn.Module, x: torch.Tensor, full_macs: int) -> float:
    return count_flops(pruned, x) / max(full_macs, 1)


# --- ours --------------------------------------------------------------------------------
def nearest_half(candidates: Sequence[int], width: int) -> int:
    """The candidate nearest RATIO x width (the smaller one on ties)."""
    return min(candidates, key=lambda c: (abs(c - RATIO * width), c))


def half_widths_from_graph(graph: dmcpfx.ChannelGraph) -> dict[str, int]:
    """Widths from the analysis alone: the gate candidates ``instrument`` would offer."""
    widths = {}
    for gid, group in graph.prunable.items():
        split = split_channels(group.width, divisor=group.divisor)
        if split.n:  # instrument skips groups too narrow to prune
            widths[gid] = nearest_half(split.candidates, group.width)
    return widths


def half_widths(space: dmcpfx.SearchSpace) -> dict[str, int]:
    return {gid: nearest_half(info.candidates, info.width) for gid, info in space.groups.items()}


def prune_ours(model: nn.Module, x: torch.Tensor, path: str) -> tuple[nn.Module, dict[str, int]]:
    """The timed user path: ``analyze`` + ``materialize(model)`` or ``instrument`` + ``materialize(space)``."""
    if path == "analyze":
        graph = dmcpfx.analyze(model, x)
        widths = half_widths_from_graph(graph)
        return dmcpfx.materialize(model, widths, x, graph=graph), widths
    space = dmcpfx.instrument(model, x)
    widths = half_widths(space)
    return dmcpfx.materialize(space, widths, x), widths


def run_ours(model: nn.Module, x: torch.Tensor, full_macs: int, path: str = "analyze") -> ToolResult:
    result = ToolResult()
    gc.collect()
    start = time.perf_counter()
    try:
        compact, widths = prune_ours(model, x, path)
    except Exception as exc:  # noqa: BLE001 - any crash is a reported failure
        result.error = one_line(exc)
        result.notes.append(result.error)
        return result
    result.seconds = time.perf_counter() - start
    if not widths:
        result.notes.append("no prunable group")
    try:
        space = dmcpfx.instrument(model, x)  # the masked ("zeroed-channel") model, untimed
        space.set_widths(widths)
        result.diff = rel_diff(run_eval(compact, x), run_eval(space, x))
        result.macs_ratio = macs_ratio(compact, x, full_macs)
    except Exception as exc:  # noqa: BLE001
        result.error = f"oracle: {one_line(exc)}"
        result.notes.append(result.error)
    return result


# --- Torch-Pruning -----------------------------------------------------------------------
def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Linear / Conv layers that emit the class scores (kept whole by both tools)."""
    return [
        m for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == num_classes)
        or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == num_classes)
    ]


def input_width(module: nn.Module) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.embed_dim  # nn.MultiheadAttention


class RemovedInputs:
    """Original input-channel numbers that Torch-Pruning removes from each consumer."""

    def __init__(self, model: nn.Module, is_in_channel_fn: Callable[[Callable], bool]):
        self._names = {m: n for n, m in model.named_modules()}
        self._is_in_channel_fn = is_in_channel_fn
        self._alive: dict[str, list[int]] = {}  # consumer -> original numbers of its current inputs
        self.removed: dict[str, list[int]] = collections.defaultdict(list)
        self.stats_norms: collections.Counter[str] = collections.Counter()

    def record(self, group) -> None:
        """Record a group before ``group.prune()``, item by item in pruning order."""
        for dep, idxs in group:
            module = dep.target.module
            if isinstance(module, STATS_NORMS):
                self.stats_norms[type(module).__name__] += 1
            if not isinstance(module, CONSUMERS) or not self._is_in_channel_fn(dep.handler):
                continue
            name = self._names[module]
            alive = self._alive.setdefault(name, list(range(input_width(module))))
            drop = {int(getattr(i, "idx", i)) for i in idxs}  # TP's hybrid index -> plain
            self.removed[name].extend(alive[i] for i in sorted(drop))
            self._alive[name] = [c for k, c in enumerate(alive) if k not in drop]


def _input_mask_hook(mask: torch.Tensor, dim: int, count: int):
    """Forward pre-hook multiplying the first ``count`` tensor arguments by ``mask`` on ``dim``."""

    def hook(_module, args):
        masked = []
        for k, arg in enumerate(args):
            if k < count and isinstance(arg, torch.Tensor) and arg.is_floating_point():
                shape = [1] * arg.dim()
                shape[dim] = -1
                arg = arg * mask.to(arg.dtype).view(shape)
            masked.append(arg)
        return tuple(masked)

    return hook


def zeroed_reference(model: nn.Module, removed: dict[str, list[int]]) -> nn.Module:
    """A copy of the unpruned ``model`` whose consumers see the removed inputs as zeros."""
    reference = copy.deepcopy(model)
    modules = dict(reference.named_modules())
    for name, channels in removed.items():
        module = modules[name]
        mask = torch.ones(input_width(module))
        mask[channels] = 0.0
        if isinstance(module, nn.modules.conv._ConvNd):
            hook = _input_mask_hook(mask, 1, 1)  # grouped/depthwise too: masking the input is exact
        elif isinstance(module, nn.MultiheadAttention):
            hook = _input_mask_hook(mask, -1, 3)  # query, key, value
        else:
            hook = _input_mask_hook(mask, -1, 1)
        module.register_forward_pre_hook(hook)
    return reference


def run_torch_pruning(model: nn.Module, x: torch.Tensor, full_macs: int, num_classes: int) -> ToolResult:
    result = ToolResult()
    work = copy.deepcopy(model)
    ignored = classifier_layers(work, num_classes)
    excluded = 0.0
    phase = "build"
    gc.collect()
    start = time.perf_counter()
    try:
        pruner = tp.pruner.BasePruner(
            work, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=RATIO, ignored_layers=ignored,
        )
        phase = "prune"
        mark = time.perf_counter()
        recorder = RemovedInputs(work, pruner.DG.is_in_channel_pruning_fn)
        excluded += time.perf_counter() - mark
        for group in pruner.step(interactive=True):
            mark = time.perf_counter()
            recorder.record(group)
            excluded += time.perf_counter() - mark
            group.prune()
    except Exception as exc:  # noqa: BLE001 - any crash is a reported failure
        result.error = f"{phase}: {one_line(exc)}"
        result.notes.append(result.error)
        return result
    result.seconds = time.perf_counter() - start - excluded
    result.pruned = work
    if not recorder.removed:
        result.notes.append("pruned nothing")
    if recorder.stats_norms:
        pruned = ", ".join(f"{n} x{c}" for n, c in sorted(recorder.stats_norms.items()))
        result.notes.append(f"pruned {pruned} (statistics change)")
    try:
        pruned_out = run_eval(work, x)
        reference = zeroed_reference(model, recorder.removed)
        result.diff = rel_diff(pruned_out, run_eval(reference, x))
        result.macs_ratio = macs_ratio(work, x, full_macs)
    except Exception as exc:  # noqa: BLE001
        result.error = f"run: {one_line(exc)}"
        result.notes.append(result.error)
    return result


# --- guards ------------------------------------------------------------------------------
@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the block after ``seconds`` (0: no limit; main thread only)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(_signum, _frame):
        raise TimeoutError(f"stopped after the {seconds:.0f} s limit (--timeout)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_limit(gib: float) -> Iterator[None]:
    """Cap the address space (RLIMIT_AS, soft limit) so a runaway allocation raises
    MemoryError in this process instead of waking the kernel's OOM killer (0: no cap)."""
    try:
        import resource
    except ImportError:  # not on Windows
        resource = None
    if gib <= 0 or resource is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = int(gib * 2**30)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def default_memory_gib() -> float:
    """75% of the physical memory + 3 GiB: a torch process maps ~3 GiB of libraries it never touches."""
    try:
        return round(0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 + 3, 1)
    except (ValueError, OSError, AttributeError):
        return 0.0


# --- driver ------------------------------------------------------------------------------
def warm_up(ours_path: str) -> None:
    """One untimed pass of both tools on a tiny network: first-call costs stay out of row 1."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    full = count_flops(net, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_ours(net, x, full, ours_path)
        run_torch_pruning(net, x, full, 10)


def warning_key(w: warnings.WarningMessage) -> str:
    text = str(w.message).strip().splitlines()
    head = text[0] if text else ""
    return f"{w.category.__name__}: {head[:100]}"


def compare_model(name: str, size: int, ours_path: str, timeout: float, warned: dict[str, collections.Counter]) -> Row:
    """Both tools on one model; every failure is caught and reported in the row."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's init notices (GoogLeNet, Inception)
            model, x = build(name, size)
            full_out = run_eval(model, x)
            full_macs = count_flops(model, x)
    except Exception as exc:  # noqa: BLE001
        reason = f"model build/run: {one_line(exc)}"
        return Row(name, ToolResult(error=reason, notes=[reason]), ToolResult(error=reason, notes=[reason]))
    num_classes = full_out.shape[-1]
    del full_out
    runs = {
        "ours": lambda: run_ours(model, x, full_macs, ours_path),
        "TP": lambda: run_torch_pruning(model, x, full_macs, num_classes),
    }
    results = {}
    for tool, run in runs.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with time_limit(timeout):
                    results[tool] = run()
            except Exception as exc:  # noqa: BLE001 - a limit hit outside the tool's own guards
                results[tool] = ToolResult(error=one_line(exc), notes=[one_line(exc)])
        for w in caught:
            warned[tool][warning_key(w)] += 1
        gc.collect()
    del model, x, runs
    gc.collect()
    return Row(name, results["ours"], results["TP"])


def _fmt_seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f}"


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def _fmt_pct(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:.1f}"


COLUMNS = ("model", "ours s", "TP s", "ours/TP", "ours equiv", "TP equiv", "ours MACs %", "TP MACs %", "notes")


def row_cells(row: Row) -> list[str]:
    return [
        row.model, _fmt_seconds(row.ours.seconds), _fmt_seconds(row.tp.seconds), _fmt_ratio(row.speed_ratio),
        row.ours.status, row.tp.status, _fmt_pct(row.ours.macs_ratio), _fmt_pct(row.tp.macs_ratio), row.notes(),
    ]


WIDTHS = (20, 7, 7, 7, 11, 11, 11, 9)


def text_line(cells: Sequence[str]) -> str:
    first = f"{cells[0]:<{WIDTHS[0]}s}"
    middle = " ".join(f"{c:>{w}s}" for c, w in zip(cells[1:-1], WIDTHS[1:]))
    return f"{first} {middle}  {cells[-1]}"


def totals(rows: list[Row]) -> list[str]:
    n = len(rows)
    compared = [r for r in rows if r.speed_ratio is not None]
    faster = sum(r.speed_ratio < 1.0 for r in compared)
    lines = [
        f"ours faster: {faster}/{n} models ({len(compared)} timed by both tools; "
        f"{n - len(compared)} not comparable because a tool failed)",
        f"total seconds over the {len(compared)} models timed by both: ours {sum(r.ours.seconds for r in compared):.1f}, "
        f"TP {sum(r.tp.seconds for r in compared):.1f}",
    ]
    for label, get in (("ours", lambda r: r.ours), ("TP", lambda r: r.tp)):
        results = [get(r) for r in rows]
        equivalent = sum(t.equivalent for t in results)
        failed = sum(t.error is not None for t in results)
        timed = [t.seconds for t in results if t.seconds is not None]
        lines.append(
            f"{label}: equivalent {equivalent}/{n}, not equivalent {n - equivalent - failed}, failed {failed}; "
            f"total {sum(timed):.1f} s over {len(timed)} timed models"
        )
    for label, get in (("ours", lambda r: r.ours), ("TP", lambda r: r.tp)):
        for r in rows:
            if get(r).error is not None:
                lines.append(f"{label} failed on {r.model}: {get(r).error}")
    return lines


def markdown(rows: list[Row], total_lines: list[str], header: str) -> str:
    out = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * 7 + ["---"]) + "|"]
    for row in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in row_cells(row)) + " |")
    out += [""] + [f"- {line}" for line in total_lines]
    return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: all 80 classification models)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--size", type=int, default=64, help="input size where the architecture allows it (default 64)")
    parser.add_argument("--ours", choices=("analyze", "instrument"), default="analyze",
                        help="our timed path: analyze + materialize(model) (default) or instrument + materialize(space)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per tool and model before it counts as failed (default 600, 0: none)")
    parser.add_argument("--max-memory-gb", type=float, default=default_memory_gib(),
                        help="address-space cap of the process; above it an allocation fails with MemoryError "
                        "(a reported failure) instead of an OOM kill (default 75%% of RAM + 3 GiB, 0: none)")
    parser.add_argument("--markdown", default=None, help="also write the table as markdown to this path")
    return parser.parse_args(argv)


def print_warnings(warned: dict[str, collections.Counter]) -> None:
    for tool, counter in warned.items():
        if counter:
            print(f"{tool} warnings ({sum(counter.values())} in all), most frequent:")
            for key, count in counter.most_common(5):
                print(f"  {count:5d}x {key}")


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the comparison, print the table and totals; returns the rows."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    header = (
        f"dmcpfx {dmcpfx.__version__} vs Torch-Pruning {importlib.metadata.version('torch-pruning')}, "
        f"torch {torch.__version__}, {args.threads} thread(s), batch 1, {len(names)} models, "
        f"~{RATIO:.0%} channels removed per group, ours timed as {args.ours} + materialize, "
        f"limits {args.timeout:.0f} s / {args.max_memory_gb:.1f} GiB per tool (0: none)"
    )
    print(header)
    warned: dict[str, collections.Counter] = {"ours": collections.Counter(), "TP": collections.Counter()}
    rows = []
    with memory_limit(args.max_memory_gb):
        warm_up(args.ours)
        print(text_line(COLUMNS), flush=True)
        for name in names:
            rows.append(compare_model(name, INPUT_SIZE.get(name, args.size), args.ours, args.timeout, warned))
            print(text_line(row_cells(rows[-1])), flush=True)
    total_lines = totals(rows)
    print("\n" + "\n".join(total_lines))
    print_warnings(warned)
    if args.markdown:
        write_text_atomic(args.markdown, markdown(rows, total_lines, header))
    return rows


if __name__ == "__main__":
    main()
