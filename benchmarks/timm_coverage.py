"""Coverage of the timm sample, per model and per family, side by side with Torch-Pruning.

For every model of ``tests/zoo_models.py`` (``pretrained=False``, ``num_classes=10``,
96 px unless the architecture fixes its size, seed 0, norm statistics randomized):

- **ours**: ``dmcpfx.analyze`` + ``dmcpfx.materialize`` at random gate widths (seed 0,
  at least one group below full width), timed together; the compact model is
  checked against ``dmcpfx.instrument``'s masked model at the same widths (DESIGN.md
  section 8 property 1, ``max|a-b| / max|b| <= 1e-4``);
- **prunable share**: of the conv / linear output channels, counted once per module,
  the share whose channel group is prunable (ours) or that Torch-Pruning shrank
  (its ``BasePruner`` with L1 magnitude, ratio 0.5, classifier ignored, and its own
  zeroed-channel oracle from ``zoo_vs_tp_arms.py``);
- the most frequent freeze reason, and ``torch.fx.symbolic_trace`` time (the tracer
  the export replaced), or its one-line failure.

A crash, a timeout or a memory blow-up (each model runs in its own forked process,
stopped above ``--max-gb``) is a one-line failure and never stops the run.

Command (the README figures)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/timm_coverage.py --markdown benchmarks/results/timm_coverage.md
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import dmcpfx  # noqa: E402
from dmcpfx.counting import count_flops  # noqa: E402
from dmcpfx.fileio import write_text_atomic  # noqa: E402
from equivalence import TOL, first_tensor, randomize_norms, random_widths, rel_diff  # noqa: E402
from zoo_models import FAMILY_OF, TIMM_MODELS, build_timm  # noqa: E402
from zoo_vs_torch_pruning import time_limit  # noqa: E402
from zoo_vs_tp_arms import one_line, run_torch_pruning  # noqa: E402

CHANNEL_MODULES = (nn.modules.conv._ConvNd, nn.Linear)


def _out_channels(model: nn.Module) -> dict[str, int]:
    return {name: m.weight.shape[0] for name, m in model.named_modules()
            if isinstance(m, CHANNEL_MODULES) and getattr(m, "weight", None) is not None}


def our_share(graph: dmcpfx.ChannelGraph) -> float:
    """Share of conv/linear output channels (once per module) in prunable groups."""
    seen: dict[str, tuple[int, int]] = {}
    for rec in graph.macs:
        if rec.module in seen:
            continue
        if rec.out_layout is None:
            seen[rec.module] = (0, rec.out_channels)
            continue
        prunable = sum(s.length for s in rec.out_layout.segs if graph.group_of(s).prunable)
        seen[rec.module] = (prunable, rec.out_layout.channels)
    total = sum(t for _, t in seen.values())
    return sum(p for p, _ in seen.values()) / total if total else 0.0


def run_ours(model: nn.Module, x: torch.Tensor) -> dict:
    row: dict = {}
    start = time.perf_counter()
    graph = dmcpfx.analyze(model, x)
    row["analyze_s"] = time.perf_counter() - start
    space = dmcpfx.instrument(model, x)  # the masked reference; not part of the timed figure
    widths = random_widths(space, 0) if space.groups else {}
    mark = time.perf_counter()
    compact = dmcpfx.materialize(model, widths, x, graph=graph) if widths else None
    row["materialize_s"] = time.perf_counter() - mark
    row["seconds"] = row["analyze_s"] + row["materialize_s"]
    row["share"] = our_share(graph)
    reasons = collections.Counter(r.split(" in module")[0].split(" (node")[0]
                                  for g in graph.frozen.values() for r in g.frozen_reasons[:1])
    row["reason"] = reasons.most_common(1)[0][0] if reasons else ""
    if compact is None:
        row["equivalent"] = "no group"
        return row
    space.eval()
    space.set_widths(widths)
    with torch.no_grad():
        masked, out = first_tensor(space(x)), first_tensor(compact.eval()(x))
    diff = rel_diff(out, masked)
    row["equivalent"] = "yes" if diff <= TOL else f"NO {diff:.1e}"  # NaN is not <= TOL
    row["class"] = "same" if type(compact) is type(model) else "GraphModule"
    return row


def fx_trace_seconds(model: nn.Module) -> str:
    start = time.perf_counter()
    try:
        torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # noqa: BLE001
        return f"fails: {one_line(exc, 60)}"
    return f"{time.perf_counter() - start:.2f}"


def measure(name: str, with_tp: bool, timeout: float, report=None) -> dict:
    """One model's row; ``report(row)`` (if given) receives the row after our part, before
    Torch-Pruning runs."""
    row = {"model": name, "family": FAMILY_OF[name]}
    try:
        model, x = build_timm(name)
        randomize_norms(model)
        row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"build: {one_line(exc)}"
        return row
    try:
        with time_limit(timeout):
            row.update(run_ours(model, x))
    except Exception as exc:  # noqa: BLE001
        row["error"] = one_line(exc, 200)
    row["fx"] = fx_trace_seconds(model)
    if report is not None:
        report(dict(row))
    if with_tp:
        before = _out_channels(model)
        result = None
        try:
            with time_limit(timeout):
                result = run_torch_pruning(model, x, count_flops(model, x), 10)
            row["tp"] = result.status
            row["tp_seconds"] = result.seconds
        except Exception as exc:  # noqa: BLE001
            row["tp"] = f"FAIL {one_line(exc, 60)}"
        row["tp_share"] = _tp_pruned_share(result.pruned if result else None, before)
    return row


def _rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _child(name: str, with_tp: bool, timeout: float, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    queue.put(("ours", measure(name, with_tp, timeout, report=lambda row: queue.put(("ours", row)))))
    queue.put(("done", None))


def measure_isolated(name: str, with_tp: bool, timeout: float, threads: int, max_gb: float) -> dict:
    """:func:`measure` in a forked child that is stopped above ``max_gb`` of resident memory
    (or when it dies); whatever it reported before stays, the rest is a one-line failure."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, with_tp, timeout, threads, queue), daemon=True)
    proc.start()
    row, done, why = None, False, None
    while not done:
        try:
            kind, value = queue.get(timeout=0.5)
        except Exception:  # noqa: BLE001 - queue.Empty: check on the child
            if not proc.is_alive():
                why = f"the process died (exit code {proc.exitcode})"
                break
            if _rss_gb(proc.pid) > max_gb:
                proc.kill()
                why = f"stopped above {max_gb:.0f} GB of memory"
                break
            continue
        if kind == "done":
            done = True
        else:
            row = value
    proc.join(5)
    if done:
        return row
    if row is None:
        return {"model": name, "family": FAMILY_OF[name], "error": why}
    if with_tp and "tp" not in row:
        row["tp"], row["tp_share"] = f"FAIL {why}", None
    return row


def _tp_pruned_share(pruned: nn.Module | None, before: dict[str, int]) -> float | None:
    """Share of conv/linear output channels (of the model before pruning) in the modules
    that Torch-Pruning shrank; None when its pruning did not run through."""
    if pruned is None:
        return None
    after = _out_channels(pruned)
    total = sum(before.values())
    return sum(c for n, c in before.items() if after.get(n, c) < c) / total if total else None


def family_table(rows: list[dict]) -> list[str]:
    lines = ["| family | models | analyzed | equivalent | ours share (median) | TP share (median) | TP equivalent "
             "| analyze+materialize s (median / max) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_family: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by_family[r["family"]].append(r)

    def median(values):
        values = sorted(v for v in values if v is not None)
        return f"{100 * values[len(values) // 2]:.0f}%" if values else "-"

    for family, rs in by_family.items():
        ok = [r for r in rs if "error" not in r]
        eq = sum(1 for r in ok if r.get("equivalent") == "yes")
        tp_eq = sum(1 for r in rs if r.get("tp") == "yes")
        lines.append(f"| {family} | {len(rs)} | {len(ok)} | {eq} | {median(r.get('share') for r in ok)} | "
                     f"{median(r.get('tp_share') for r in rs)} | {tp_eq if any('tp' in r for r in rs) else '-'} | "
                     f"{_seconds(ok)} |")
    return lines


def _seconds(rows: list[dict]) -> str:
    values = sorted(r["seconds"] for r in rows if "seconds" in r)
    return f"{values[len(values) // 2]:.1f} / {values[-1]:.1f}" if values else "-"


#: the issue's scope of the time figure: models up to ResNet-50 size (its 25.6M parameters)
RESNET50_PARAMS_M = 25.6


def time_summary(rows: list[dict], limit_s: float = 10.0) -> str:
    """One line: how many models up to ResNet-50's parameter count take at most ``limit_s``
    for analyze + materialize, and the slowest of them."""
    timed = [r for r in rows if "seconds" in r and r.get("params_m", float("inf")) <= RESNET50_PARAMS_M]
    if not timed:
        return "Time: no model up to ResNet-50 size was timed."
    fast = [r for r in timed if r["seconds"] <= limit_s]
    slow = sorted((r for r in timed if r["seconds"] > limit_s), key=lambda r: -r["seconds"])
    over = ", ".join(f"{r['model']} {r['seconds']:.1f} s" for r in slow) or "none"
    return (f"Time (analyze + materialize, models with at most {RESNET50_PARAMS_M}M parameters): "
            f"{len(fast)} of {len(timed)} within {limit_s:.0f} s; over it: {over}.")


def model_table(rows: list[dict]) -> list[str]:
    lines = ["| model | family | ours equivalent | class | share | analyze+materialize s | fx trace s | TP | TP share | top freeze reason / error |",
             "|---|---|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        share = f"{100 * r['share']:.0f}%" if "share" in r else "-"
        tps = f"{100 * r['tp_share']:.0f}%" if r.get("tp_share") is not None else "-"
        secs = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        lines.append(f"| {r['model']} | {r['family']} | {r.get('equivalent', 'FAIL')} | {r.get('class', '-')} | {share} | "
                     f"{secs} | {r.get('fx', '-')} | {r.get('tp', '-')} | {tps} | {r.get('error') or r.get('reason', '')} |")
    return lines


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated timm names (default: the whole sample)")
    parser.add_argument("--torch-pruning", action="store_true", help="also run Torch-Pruning on each model")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per tool and model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", default=None, help="write both tables to this markdown file")
    parser.add_argument("--json", default=None, help="write the rows as JSON to this file")
    parser.add_argument("--max-gb", type=float, default=8.0,
                        help="each model runs in its own process, stopped above this resident memory (0: in-process)")
    parser.add_argument("--reuse-tp", default=None,
                        help="a log of an earlier run: its Torch-Pruning columns are taken for the models found "
                             "there (Torch-Pruning does not change with our code), ours is measured again")
    parser.add_argument("--reuse", default=None,
                        help="a log of an earlier run (its JSON lines): models found there are not measured again")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.models.split(",") if n] or TIMM_MODELS
    reused = {}
    if args.reuse:
        for line in Path(args.reuse).read_text().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                reused[row["model"]] = row
    tp_rows = {}
    if args.reuse_tp:
        for line in Path(args.reuse_tp).read_text().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                if "tp" in row:
                    tp_rows[row["model"]] = {k: v for k, v in row.items() if k.startswith("tp")}
    rows = []
    for name in names:
        row = reused.get(name)
        if row is None and name in tp_rows:  # ours only, Torch-Pruning's columns from the log
            row = (measure_isolated(name, False, args.timeout, args.threads, args.max_gb) if args.max_gb > 0
                   else measure(name, False, args.timeout))
            row.update(tp_rows[name])
        if row is None and args.max_gb > 0:
            row = measure_isolated(name, args.torch_pruning, args.timeout, args.threads, args.max_gb)
        elif row is None:
            row = measure(name, args.torch_pruning, args.timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    text = "\n".join(["## Per family", "", *family_table(rows), "", time_summary(rows), "",
                      "## Per model", "", *model_table(rows), ""])
    print(text)
    if args.markdown:
        write_text_atomic(Path(args.markdown), text)
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
