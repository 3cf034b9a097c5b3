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

The tools' runs and oracles are in ``zoo_vs_tp_arms.py``, the table and totals in
``zoo_vs_tp_report.py``.

Command (the official figures: all 80 models)::

    .venv/bin/python benchmarks/zoo_vs_torch_pruning.py --threads 2 --markdown zoo_vs_tp.md
    .venv/bin/python benchmarks/zoo_vs_torch_pruning.py --models resnet18,mobilenet_v2 --size 32 --threads 1
    .venv/bin/python benchmarks/zoo_vs_torch_pruning.py --ours instrument   # time the search-side path
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import importlib.metadata
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the sibling modules zoo_vs_tp_arms / zoo_vs_tp_report

import dmcpfx  # noqa: E402
from dmcpfx.counting import count_flops  # noqa: E402
from dmcpfx.fileio import write_text_atomic  # noqa: E402
from zoo_vs_tp_arms import RATIO, build, one_line, run_eval, run_ours, run_torch_pruning  # noqa: E402
from zoo_vs_tp_report import (  # noqa: E402
    COLUMNS, Row, ToolResult, markdown, print_warnings, row_cells, text_line, totals,
)

# Input sizes the architecture requires; others run at --size (default 64).
# The same dict as tests/test_zoo.py INPUT_SIZE (the smoke test checks they agree).
INPUT_SIZE = {
    "inception_v3": 299,
    "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224,
    "maxvit_t": 224,
}


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
