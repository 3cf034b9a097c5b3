"""Accuracy at equal FLOPs: DMCP (expected and direct) vs uniform width vs Torch-Pruning L1.

Data and model (:mod:`accuracy_arms`): scikit-learn's bundled digits at 16x16 px, "noisy
digits" (grey Gaussian noise of std 2 in normalized units, fresh on each training sample,
one fixed draw on the held-out split; random shifts of up to S/8 px on training images;
val_fraction 0.4: 1,078 training and 719 held-out images), a CIFAR-style
``examples.models:small_resnet`` (width 16, blocks (2, 2, 2)). The held-out split depends
only on ``--data-seed``; the seeds change initialization, shuffling, noise, sub-net
sampling and the search.

Per seed ``s`` (every knob shared by all arms):

- recipe R = ``dmcpfx.retrain``: SGD nesterov, lr ``--lr`` cosine to 0, wd 5e-4, label
  smoothing 0.1, ``--epochs`` (20) epochs, batch 64; top-1 once, after the last epoch, on
  the held-out split (nothing is selected on it).
- **unpruned**: trained with R from scratch. **plain S**: the same, for ``--search-epochs``
  epochs: the yardstick of the supernet's max width (same epochs as the search).
- **DMCP t**: ``instrument`` a fresh model; ``search`` to ``t`` of the full MACs for
  ``--search-epochs`` (first half weights only; official Markov schedule; BN isolated in
  the architecture step) on the training images minus ``--holdout`` held-out ones; then
  ``derive`` ``expected`` and ``direct`` (5 in-band Markov samples ranked on the held-out
  TRAINING images, BN re-estimated on 5 training batches for each). The supernet's max
  width is scored twice: with the search's own BN statistics and after re-estimation.
- **uniform t**: one ratio for every group (divisor-respecting), leading channels of the
  trained unpruned model. **TP-L1 t**: Torch-Pruning ``MagnitudePruner`` (L1, local, fc
  ignored) on the trained unpruned model; both ratios by bisection on the exact MACs.
- Two protocols: **inherit** -- every pruned arm fine-tunes its inherited weights with R;
  **paper** -- DMCP and uniform are retrained with R from scratch (the DMCP paper), TP-L1
  fine-tunes (its method; the same numbers as in inherit).
- Exact MACs per image (``count_flops`` on 1x3xSxS); DMCP must lie within 1% of the
  target, uniform/TP within 2% (their step functions cannot always do better).

Goal: DMCP >= uniform + 1 point at 25% MACs in both protocols (reported, never tuned for).
Figures: ``python benchmarks/accuracy.py --jobs 2 --markdown benchmarks/results/accuracy.md``
(also writes ``accuracy_widths.png`` next to it). Quick check: ``--smoke``.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dmcpfx  # noqa: E402
from dmcpfx.counting import count_flops, count_params  # noqa: E402
from accuracy_arms import (  # noqa: E402
    dmcp_search, fresh_model, make_data, random_compact, tp_compact, train_and_score, uniform_compact,
)
from dmcpfx.fileio import write_text_atomic  # noqa: E402
from dmcpfx.search.holdout import split_holdout  # noqa: E402

ARMS = ("dmcp", "dmcp_direct", "uniform", "tp", "random")
LABELS = {"full": "unpruned", "plain_s": "plain, search epochs", "dmcp": "DMCP expected",
          "dmcp_direct": "DMCP direct", "uniform": "uniform", "tp": "TP-L1", "random": "random archs"}
TOLERANCE = {"dmcp": 0.01, "dmcp_direct": 0.01, "uniform": 0.02, "tp": 0.02, "random": 0.01}
PROTOCOLS = ("inherit", "paper")


@dataclass(frozen=True)
class Settings:
    """Every knob of the protocol; shared by all arms."""

    seeds: tuple[int, ...]
    targets: tuple[float, ...]
    epochs: int
    search_epochs: int
    lr: float
    batch_size: int
    train_subset: int | None
    augment: bool
    noise: float
    image_size: int
    width: int
    val_fraction: float
    data_seed: int
    threads: int
    holdout: int
    random_archs: int = 0


@dataclass
class Arm:
    """One row: per-seed MACs, params, widths and top-1 (%) per protocol."""

    kind: str
    target: float | None
    macs: list[int] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    widths: list[list[int]] = field(default_factory=list)
    top1: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PROTOCOLS})

    @property
    def label(self) -> str:
        return LABELS[self.kind] if self.target is None else f"{LABELS[self.kind]} {self.target:.0%}"

    def within(self, full_macs: int) -> bool:
        if self.target is None:
            return True
        goal, tol = self.target * full_macs, TOLERANCE[self.kind]
        return all(abs(m - goal) <= tol * goal for m in self.macs)


def _record(arm: Arm, model, x, ids) -> None:
    arm.macs.append(count_flops(model, x))
    arm.params.append(count_params(model))
    arm.widths.append([int(model.get_submodule(g).out_channels) for g in ids])


def run_seed(s: Settings, seed: int) -> dict[str, Any]:
    """Every arm of one seed (self-contained: a worker process can run it)."""
    torch.set_num_threads(s.threads)
    data = make_data(s)
    x = torch.randn(1, 3, s.image_size, s.image_size)
    space = dmcpfx.instrument(fresh_model(s, 0), (x,))
    ids = list(space.groups)
    arms: dict[tuple, Arm] = {("full", None): Arm("full", None), ("plain_s", None): Arm("plain_s", None)}
    supernet: list[dict] = []
    log = lambda m: print(f"seed {seed}: {m}", flush=True)  # noqa: E731
    t0 = time.perf_counter()
    full = fresh_model(s, seed)
    top1 = train_and_score(full, data, s, seed, init="scratch")
    _record(arms[("full", None)], full, x, ids)
    for p in PROTOCOLS:
        arms[("full", None)].top1[p].append(top1)
    full = full.cpu().eval()
    plain = fresh_model(s, seed)
    plain_top1 = train_and_score(plain, data, s, seed, init="scratch", epochs=s.search_epochs)
    _record(arms[("plain_s", None)], plain, x, ids)
    for p in PROTOCOLS:
        arms[("plain_s", None)].top1[p].append(plain_top1)
    log(f"unpruned {top1:.2f}%, plain {s.search_epochs} epochs {plain_top1:.2f}% ({time.perf_counter() - t0:.0f}s)")
    search_train, holdout = split_holdout(data.train, s.holdout, seed=s.data_seed)
    for target in s.targets:
        t0 = time.perf_counter()
        out = dmcp_search(s, data, search_train, holdout, seed, target, x)
        supernet.append(dict(target=target, own=out.own_bn_top1, recal=out.recal_top1, plain=plain_top1,
                             expected_widths=out.expected_widths))
        log(f"search {target:.0%}: max width own BN {out.own_bn_top1:.2f}%, re-estimated {out.recal_top1:.2f}% "
            f"({time.perf_counter() - t0:.0f}s)")
        compacts = {"dmcp": out.expected, "dmcp_direct": out.direct,
                    "uniform": uniform_compact(space, full, target, x),
                    "tp": tp_compact(full, x, space.full_flops, target)}
        draw = torch.Generator().manual_seed(1000 * seed + round(100 * target))
        compacts = list(compacts.items()) + [("random", random_compact(space, full, target, x, draw))
                                             for _ in range(s.random_archs)]
        for kind, compact in compacts:
            arm = arms.setdefault((kind, target), Arm(kind, target))
            _record(arm, compact, x, ids)
            for protocol in PROTOCOLS:
                t1 = time.perf_counter()
                if protocol == "paper" and kind == "tp":  # TP-L1 always fine-tunes: same as inherit
                    arm.top1["paper"].append(arm.top1["inherit"][-1])
                    continue
                init = "inherit" if protocol == "inherit" else "scratch"
                model = compact if protocol == "paper" else _copy(compact)
                score = train_and_score(model, data, s, seed, init=init)
                arm.top1[protocol].append(score)
                log(f"{arm.label} [{protocol}]: {arm.macs[-1] / space.full_flops:.2%} MACs, top-1 {score:.2f}% "
                    f"({time.perf_counter() - t1:.0f}s)")
    # plain data only: a spawned worker's classes live in __mp_main__, which the parent cannot unpickle
    return {"arms": [dataclasses.asdict(a) for a in arms.values()], "supernet": supernet}


def _run_and_save(job: tuple[Settings, int, Path | None]) -> tuple[int, dict[str, Any]]:
    s, seed, seed_dir = job
    res = run_seed(s, seed)
    res["settings"] = seed_settings(s)
    if seed_dir is not None:
        seed_dir.mkdir(parents=True, exist_ok=True)
        tmp = seed_dir / f"seed{seed}.pt.tmp"
        torch.save(res, tmp)
        tmp.replace(seed_dir / f"seed{seed}.pt")
    return seed, res


def seed_settings(s: Settings) -> dict[str, Any]:
    """The knobs a saved seed depends on (every field but the seed list and the thread count)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()
            if k not in ("seeds", "threads")}


def load_seed(path: Path, s: Settings) -> dict[str, Any]:
    """A saved seed of ``--seed-dir``, only if it was run with the same settings as ``s``."""
    res = torch.load(path, weights_only=True)  # plain lists and numbers: never unpickle
    want, got = seed_settings(s), res.get("settings") if isinstance(res, dict) else None
    if not isinstance(got, dict):
        raise SystemExit(f"{path}: no settings record (an older accuracy.py wrote it); delete it to run that seed again")
    diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if diff:
        k = diff[0]
        raise SystemExit(f"{path}: run with {k}={got.get(k)!r}, this run has {k}={want.get(k)!r}; "
                         "use another --seed-dir or delete the file")
    return res


def _copy(model):
    import copy

    return copy.deepcopy(model)


def merge(results: Sequence[Mapping[str, Any]]) -> tuple[dict[tuple, Arm], list[dict]]:
    """Per-seed results (seed order) -> one Arm per row, and the supernet records."""
    arms: dict[tuple, Arm] = {}
    supernet: list[dict] = []
    for res in results:
        for arm in res["arms"]:
            into = arms.setdefault((arm["kind"], arm["target"]), Arm(arm["kind"], arm["target"]))
            into.macs += arm["macs"]
            into.params += arm["params"]
            into.widths += arm["widths"]
            for p in PROTOCOLS:
                into.top1[p] += arm["top1"][p]
        supernet += res["supernet"]
    return arms, supernet


# --------------------------------------------------------------------------- reporting
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: Sequence[float]) -> str:
    m, sd = mean_std(values)
    return f"{m:.2f} ± {sd:.2f}"


def table(arms: Sequence[Arm], full_macs: int) -> list[str]:
    rows = ["| arch | MMACs / image | % of full | params (k) | inherit: top-1 % | paper: top-1 % | per seed (inherit; paper) |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for arm in arms:
        macs = statistics.fmean(arm.macs)
        flag = "" if arm.within(full_macs) else " **(MACs off target!)**"
        seeds = "; ".join(", ".join(f"{v:.1f}" for v in arm.top1[p]) for p in PROTOCOLS)
        rows.append(f"| {arm.label}{flag} | {macs / 1e6:.3f} | {macs / full_macs:.2%} | "
                    f"{statistics.fmean(arm.params) / 1e3:.1f} | {fmt(arm.top1['inherit'])} | "
                    f"{fmt(arm.top1['paper'])} | {seeds} |")
    return rows


def supernet_lines(supernet: Sequence[dict]) -> list[str]:
    out = ["Supernet at max width after the search (top-1 %, mean ± std over seeds and targets):"]
    own, recal, plain = ([r[k] for r in supernet] for k in ("own", "recal", "plain"))
    gap_bn = [r["recal"] - r["own"] for r in supernet]
    gap_plain = [r["plain"] - r["recal"] for r in supernet]
    out += [f"- own BN statistics: {fmt(own)}; BN re-estimated (5 batches): {fmt(recal)}; "
            f"re-estimated minus own: {fmt(gap_bn)} (target: within 5 points: "
            f"{'MET' if max(abs(g) for g in gap_bn) <= 5 else 'NOT MET'})",
            f"- plain model trained for the search's epochs: {fmt(plain)}; plain minus supernet (re-estimated): "
            f"{fmt(gap_plain)} (target: within 1 point: {'MET' if statistics.fmean(gap_plain) <= 1 else 'NOT MET'})"]
    return out


def verdict(arms: Mapping[tuple, Arm], target: float) -> list[str]:
    out = []
    u = arms.get(("uniform", target))
    for protocol in PROTOCOLS:
        for kind in ("dmcp", "dmcp_direct"):
            d = arms.get((kind, target))
            if d is None or u is None:
                continue
            dm, um = statistics.fmean(d.top1[protocol]), statistics.fmean(u.top1[protocol])
            out.append(f"Goal at {target:.0%} MACs [{protocol}]: {LABELS[kind]} >= uniform + 1 point: "
                       f"{'MET' if dm >= um + 1.0 else 'NOT MET'} ({dm:.2f} vs {um:.2f}, {dm - um:+.2f})")
    return out


def random_lines(arms: Mapping[tuple, Arm], targets: Sequence[float]) -> list[str]:
    """How much the architecture matters: DMCP and uniform against the spread of random in-band archs."""
    out = []
    for t in targets:
        r = arms.get(("random", t))
        if r is None:
            continue
        for protocol in PROTOCOLS:
            vals = r.top1[protocol]
            others = ", ".join(f"{LABELS[k]} {statistics.fmean(arms[(k, t)].top1[protocol]):.2f}"
                               for k in ("dmcp", "uniform") if (k, t) in arms)
            out.append(f"Random archs at {t:.0%} MACs [{protocol}]: {len(vals)} archs, {fmt(vals)} "
                       f"(min {min(vals):.2f}, max {max(vals):.2f}); {others}")
    return out


def plot_wider(arms: Mapping[tuple, Arm], ids: Sequence[str], full: Sequence[int], targets: Sequence[float],
               path: Path) -> None:
    """Bars: DMCP (expected) width / full width per group, mean over seeds, against uniform."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(targets), 1, figsize=(12, 3.2 * len(targets)), squeeze=False)
    xs = range(len(ids))
    for ax, t in zip(axes[:, 0], targets):
        d = [statistics.fmean(w[i] for w in arms[("dmcp", t)].widths) / full[i] for i in xs]
        u = [statistics.fmean(w[i] for w in arms[("uniform", t)].widths) / full[i] for i in xs]
        ax.bar([i - 0.2 for i in xs], d, 0.4, label="DMCP expected (mean of seeds)",
               color=["tab:green" if a > b + 1e-9 else "tab:red" if a < b - 1e-9 else "tab:blue"
                      for a, b in zip(d, u)])
        ax.bar([i + 0.2 for i in xs], u, 0.4, label="uniform", color="tab:gray")
        ax.set_ylabel(f"kept / full at {t:.0%} MACs")
        ax.set_xticks(list(xs), [f"{g}\n({c})" for g, c in zip(ids, full)], rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=8, title="green: DMCP wider than uniform, red: narrower, blue: equal", title_fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path | None, tuple[int, Path | None, bool]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25], help="ratios of the full MACs")
    ap.add_argument("--epochs", type=int, default=20, help="recipe R: epochs of every (re)training")
    ap.add_argument("--search-epochs", type=int, default=90,
                    help="DMCP search epochs (and of the plain yardstick); shorter searches leave the "
                         "supernet's max width further below plain training (benchmarks/README.md)")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-subset", type=int, default=0, help="training images kept (0: all)")
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--noise", type=float, default=2.0)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--val-fraction", type=float, default=0.4)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--holdout", type=int, default=128, help="training images held out of the search for direct")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in that many processes")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the report there (+ a widths PNG)")
    ap.add_argument("--seed-dir", type=Path, default=None,
                    help="save each finished seed there (seed<N>.pt) and reuse the saved ones (a killed run resumes)")
    ap.add_argument("--report-only", action="store_true", help="with --seed-dir: report the saved seeds, run nothing")
    ap.add_argument("--random-archs", type=int, default=0, metavar="N",
                    help="also N random in-band architectures per seed and target (leading channels of the "
                         "trained unpruned model, both protocols): how much the architecture matters on this task")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test")
    a = ap.parse_args(argv)
    if a.smoke:
        a.seeds, a.epochs, a.search_epochs, a.train_subset, a.batch_size, a.holdout = a.seeds[:1], 1, 2, 60, 20, 20
    return Settings(
        seeds=tuple(a.seeds), targets=tuple(a.targets), epochs=a.epochs, search_epochs=a.search_epochs, lr=a.lr,
        batch_size=a.batch_size, train_subset=a.train_subset or None, augment=a.augment, noise=a.noise,
        image_size=a.image_size, width=a.width, val_fraction=a.val_fraction, data_seed=a.data_seed,
        threads=a.threads, holdout=a.holdout, random_archs=a.random_archs,
    ), a.markdown, (a.jobs, a.seed_dir, a.report_only)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run; print the report; return ``{"arms": {label: {...}}, "supernet": [...]}``."""
    s, markdown, (jobs, seed_dir, report_only) = parse_args(argv)
    torch.set_num_threads(s.threads)
    started = time.perf_counter()
    saved = {}
    if seed_dir is not None:
        for seed in s.seeds:
            f = seed_dir / f"seed{seed}.pt"
            if f.is_file():
                saved[seed] = load_seed(f, s)
    todo = [] if report_only else [seed for seed in s.seeds if seed not in saved]
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            for seed, res in pool.imap_unordered(_run_and_save, [(s, seed, seed_dir) for seed in todo]):
                saved[seed] = res
    else:
        for seed in todo:
            saved[seed] = _run_and_save((s, seed, seed_dir))[1]
    if not saved:
        raise SystemExit("no seed finished")
    results = [saved[seed] for seed in s.seeds if seed in saved]
    s = dataclasses.replace(s, seeds=tuple(seed for seed in s.seeds if seed in saved))
    arms, supernet = merge(results)
    x = torch.randn(1, 3, s.image_size, s.image_size)
    space = dmcpfx.instrument(fresh_model(s, 0), (x,))
    full_macs, ids = int(space.full_flops), list(space.groups)
    ordered = sorted(arms.values(), key=lambda a: (a.target is not None, -(a.target or 0), ARMS.index(a.kind)
                                                     if a.kind in ARMS else -1))
    warn = [f"WARNING: {a.label} NOT within {TOLERANCE[a.kind]:.0%} of its target" for a in ordered
            if not a.within(full_macs)]
    for line in warn:
        warnings.warn(line, stacklevel=2)
    lines = [
        f"Accuracy at equal MACs, noisy digits {s.image_size}px, small_resnet(width={s.width}), "
        f"full {full_macs / 1e6:.3f} MMACs/image; seeds {list(s.seeds)}; recipe R {s.epochs} epochs lr {s.lr}; "
        f"search {s.search_epochs} epochs (demo hyper-parameters, official Markov schedule, BN isolated), "
        f"{s.holdout} training images held out for direct; torch {torch.__version__}, threads {s.threads} x jobs {jobs}, "
        f"wall {(time.perf_counter() - started) / 60:.1f} min", "",
    ] + table(ordered, full_macs) + [""] + supernet_lines(supernet) + [""]
    lines += verdict(arms, min(s.targets)) + warn
    lines += ([""] + random_lines(arms, s.targets) if s.random_archs else [])
    lines += ["", "Widths per group (" + ", ".join(ids) + "), per seed:"]
    lines += [f"- {a.label}: " + "; ".join(str(w) for w in a.widths) for a in ordered if a.target is not None]
    text = "\n".join(lines) + "\n"
    print("\n" + text, end="", flush=True)
    if markdown is not None:
        write_text_atomic(markdown, text)
        full = [int(space.groups[g].width) for g in ids]
        plot_wider(arms, ids, full, s.targets, markdown.with_name(markdown.stem + "_widths.png"))
    return {"arms": {a.label: {"target": a.target, "kind": a.kind, "macs": a.macs, "top1": a.top1,
                               "within": a.within(full_macs)} for a in ordered}, "supernet": supernet}


if __name__ == "__main__":
    main()
