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
import contextlib
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latency_arms import (  # noqa: E402
    ALL_ARMS, ARM_LABELS, ARM_RE, DEFAULT_ARCH_DIR, EXTRA_ARMS, Arm, Column, build_arms, torch_threads, within_band,
)
from latency_timing import measure, padded_macs, print_profiles  # noqa: E402
from dmcpfx.fileio import write_text_atomic  # noqa: E402
from dmcpfx.search.latency_measure import runtime_divisor  # noqa: E402

__all__ = ["ALL_ARMS", "ARM_LABELS", "main"]
GOAL = 0.95  # the goal: latency ratio / MACs ratio at 50% MACs, ORT, batch 16


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
