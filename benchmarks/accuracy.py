"""Accuracy at equal FLOPs: DMCP (expected and direct) vs uniform width vs Torch-Pruning L1.

Two tasks (``--task``; data and model in :mod:`accuracy_arms`, the defaults of each in ``TASKS``):

- ``digits`` (default, kept for reference): scikit-learn's bundled digits at 16x16 px, "noisy
  digits" (grey Gaussian noise of std 2 in normalized units, fresh on each training sample,
  one fixed draw on the held-out split; random shifts of up to S/8 px on training images;
  val_fraction 0.4: 1,078 training and 719 held-out images), ``small_resnet`` width 16.
  The held-out split depends only on ``--data-seed``. Targets 50% and 25%.
- ``fashion-mnist``: Fashion-MNIST at 28x28 px from the idx files in ``--data-root`` (default:
  Debian's ``dataset-fashion-mnist``, ``apt-get install dataset-fashion-mnist``), a fixed
  stratified ``--train-subset`` of the 60,000 training images (chosen by ``--data-seed``),
  scored on all 10,000 test images; ``small_resnet`` width 10 (at width 8 no uniform ratio
  lands within 2% of 10% of the MACs; at 10 one lands on it). Targets 25% and 10%, 3 random
  in-band archs; recipe R 20 epochs, search 20 epochs, 2,000 training images with random
  shifts of up to 3 px, seeds 0-2 (``benchmarks/task_room.py`` measured why: without shifts
  the unpruned model overfits by 20 epochs, and at 10 epochs the room is the small nets'
  slower training). The results end with one line per goal of issue 18 (MET / NOT MET).

The model is a CIFAR-style ``examples.models:small_resnet`` (blocks (2, 2, 2)). The seeds
change initialization, shuffling, noise, sub-net sampling and the search.

Per seed ``s`` (every knob shared by all arms):

- recipe R = ``dmcpfx.retrain``: SGD nesterov, lr ``--lr`` cosine to 0, wd 5e-4, label
  smoothing 0.1, ``--epochs`` epochs, batch 64; top-1 once, after the last epoch, on
  the held-out split (nothing is selected on it).
- **unpruned**: trained with R from scratch. **plain S**: the same, for ``--search-epochs``
  epochs: the yardstick of the supernet's max width (same epochs as the search).
- **DMCP t**: ``instrument`` a fresh model; ``search`` to ``t`` of the full MACs for
  ``--search-epochs`` (the digits demo's hyper-parameters; first half weights only; official
  Markov schedule; BN isolated in the architecture step) on the training images minus
  ``--holdout`` held-out ones; then ``derive`` ``expected`` and ``direct`` (5 in-band Markov
  samples ranked on the held-out TRAINING images, BN re-estimated on 5 training batches for
  each). The supernet's max width is scored twice: with the search's own BN statistics and
  after re-estimation. E[MACs] at the end of the search and derive's change from it are recorded.
- **uniform t**: one ratio for every group (divisor-respecting), leading channels of the
  trained unpruned model. **TP-L1 t**: Torch-Pruning ``MagnitudePruner`` (L1, local, fc
  ignored) on the trained unpruned model; both ratios by bisection on the exact MACs.
  **random t** (``--random-archs N``): N random in-band architectures (leading channels).
- Two protocols: **inherit** -- every pruned arm fine-tunes its inherited weights with R;
  **paper** -- DMCP, uniform and random are retrained with R from scratch (the DMCP paper),
  TP-L1 fine-tunes (its method; the same numbers as in inherit).
- Exact MACs per image (``count_flops`` on 1x3xSxS); DMCP must lie within 1% of the
  target, uniform/TP within 2% (their step functions cannot always do better).
- ``--device``: cuda when available, else cpu (``--threads`` torch threads per process).

Goals are reported, never tuned for. Figures: see benchmarks/README.md section 1 for the
commands (``--markdown FILE`` also writes ``FILE_widths.png``). Quick check: ``--smoke``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dmcpfx  # noqa: E402
from dmcpfx.counting import count_flops  # noqa: E402
from accuracy_arms import (  # noqa: E402
    dmcp_search, fresh_model, group_widths, make_data, random_compact, record_arm, tp_compact, train_and_score,
    train_arm, uniform_compact,
)
from accuracy_latency import ADDON_SETTINGS, add_latency_arm, latency_arm, latency_share, measure_latency_table  # noqa: E402
from accuracy_report import (  # noqa: E402
    ARMS, PROTOCOLS, Arm, fashion_goal_lines, gap_rows, latency_lines, plot_wider, random_lines,
    supernet_lines, table, tolerance_text, verdict,
)
from dmcpfx.fileio import write_text_atomic  # noqa: E402
from dmcpfx.search.holdout import split_holdout  # noqa: E402

# per-task defaults of the options left unset on the command line (benchmarks/README.md: why these)
TASKS: dict[str, dict[str, Any]] = {
    "digits": dict(seeds=[0, 1, 2, 3, 4], targets=[0.5, 0.25], epochs=20, search_epochs=90, train_subset=0,
                   augment=True, noise=2.0, image_size=16, width=16, random_archs=0),
    # random shifts and 20 epochs: the setting of benchmarks/task_room.py where the room is capacity (without
    # shifts the unpruned net overfits 2,000 images by 20 epochs); 3 seeds fit the 2-hour budget on 2 cores
    "fashion-mnist": dict(seeds=[0, 1, 2], targets=[0.25, 0.1], epochs=20, search_epochs=20, train_subset=2000,
                          augment=True, noise=0.0, image_size=28, width=10, random_archs=3),
}
# settings that do not change a seed's results, left out of a saved seed's record
NOT_RECORDED = ("seeds", "threads", "data_root", "device", "latency_table")


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
    task: str = "digits"
    data_root: str | None = None
    device: str = "cpu"
    alpha_init: str = "budget"
    latency: str | None = None  # backend of the DMCP latency arm (None: no such arm)
    latency_batch: int = 16
    latency_table: str | None = None  # its table's JSON file, measured once by main()


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
    record_arm(arms[("full", None)], full, x, ids)
    for p in PROTOCOLS:
        arms[("full", None)].top1[p].append(top1)
    full = full.cpu().eval()
    plain = fresh_model(s, seed)
    plain_top1 = train_and_score(plain, data, s, seed, init="scratch", epochs=s.search_epochs)
    record_arm(arms[("plain_s", None)], plain, x, ids)
    for p in PROTOCOLS:
        arms[("plain_s", None)].top1[p].append(plain_top1)
    log(f"unpruned {top1:.2f}%, plain {s.search_epochs} epochs {plain_top1:.2f}% ({time.perf_counter() - t0:.0f}s)")
    search_train, holdout = split_holdout(data.train, s.holdout, seed=s.data_seed)
    for target in s.targets:
        t0 = time.perf_counter()
        out = dmcp_search(s, data, search_train, holdout, seed, target, x)
        derived = count_flops(out.expected, x)
        supernet.append(dict(target=target, own=out.own_bn_top1, recal=out.recal_top1, plain=plain_top1,
                             expected_widths=out.expected_widths, e_ratio=out.expected_cost / (target * space.full_flops),
                             derive_change=(derived - out.expected_cost) / out.expected_cost))
        log(f"search {target:.0%}: max width own BN {out.own_bn_top1:.2f}%, re-estimated {out.recal_top1:.2f}%, "
            f"E/T {supernet[-1]['e_ratio']:.3f}, derive(expected) {supernet[-1]['derive_change']:+.2%} from E "
            f"({time.perf_counter() - t0:.0f}s)")
        compacts = {"dmcp": out.expected, "dmcp_direct": out.direct,
                    "uniform": uniform_compact(space, full, target, x),
                    "tp": tp_compact(full, x, space.full_flops, target)}
        draw = torch.Generator().manual_seed(1000 * seed + round(100 * target))
        compacts = list(compacts.items()) + [("random", random_compact(space, full, target, x, draw))
                                             for _ in range(s.random_archs)]
        if s.latency:
            uniform = dict(zip(ids, group_widths(dict(compacts)["uniform"], ids)))
            compacts += [latency_arm(s, data, search_train, holdout, seed, target, x, uniform, log)]
        for kind, compact in compacts:
            arm = arms.setdefault((kind, target), Arm(kind, target))
            record_arm(arm, compact, x, ids)
            if s.latency:
                arm.latency.append(latency_share(s.latency_table, dict(zip(ids, arm.widths[-1]))))
            train_arm(arm, compact, data, s, seed, int(space.full_flops), log)
    # plain data only: a spawned worker's classes live in __mp_main__, which the parent cannot unpickle
    return {"arms": [dataclasses.asdict(a) for a in arms.values()], "supernet": supernet}


def _run_and_save(job: tuple[Settings, int, Path | None, dict | None]) -> tuple[int, dict[str, Any]]:
    """Run one seed, or (with a saved result) add the latency arm to it; save it in the seed folder."""
    s, seed, seed_dir, saved = job
    if saved is None:
        res = run_seed(s, seed)
        res["settings"] = seed_settings(s)
    else:
        res = add_latency_arm(s, seed, saved)
    if seed_dir is not None:
        seed_dir.mkdir(parents=True, exist_ok=True)
        tmp = seed_dir / f"seed{seed}.pt.tmp"
        torch.save(res, tmp)
        tmp.replace(seed_dir / f"seed{seed}.pt")
    return seed, res


def seed_settings(s: Settings) -> dict[str, Any]:
    """The knobs a saved seed depends on (every field but the seed list, the thread count, the
    data folder and the device); the task is one of them."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()
            if k not in NOT_RECORDED}


def load_seed(path: Path, s: Settings) -> dict[str, Any]:
    """A saved seed of ``--seed-dir``, only if it was run with the same settings as ``s``."""
    res = torch.load(path, weights_only=True)  # plain lists and numbers: never unpickle
    want, got = seed_settings(s), res.get("settings") if isinstance(res, dict) else None
    if not isinstance(got, dict):
        raise SystemExit(f"{path}: no settings record (an older accuracy.py wrote it); delete it to run that seed again")
    # records written before --task / --alpha-init existed: digits runs with the official (zero) start
    got = {"task": "digits", "alpha_init": "zero", **got}
    if got.get("latency") is None or not s.latency:  # without the latency arm: main() adds it (or it is not wanted)
        for key in ADDON_SETTINGS:
            got[key] = want[key]
    diff = sorted((k != "task", k) for k in set(want) | set(got) if want.get(k) != got.get(k))  # task first
    if diff:
        k = diff[0][1]
        raise SystemExit(f"{path}: run with {k}={got.get(k)!r}, this run has {k}={want.get(k)!r}; "
                         "use another --seed-dir or delete the file")
    return res


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
            into.latency += arm.get("latency", [])
            for p in PROTOCOLS:
                into.top1[p] += arm["top1"][p]
        supernet += res["supernet"]
    return arms, supernet


# --------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path | None, tuple[int, Path | None, bool]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), default="digits",
                    help="digits (noisy digits, the reference) or fashion-mnist; sets the defaults marked (task)")
    ap.add_argument("--data-root", default=None,
                    help="fashion-mnist: folder of the idx files (default /usr/share/datasets/fashion-mnist)")
    ap.add_argument("--seeds", type=int, nargs="+", help="(task)")
    ap.add_argument("--targets", type=float, nargs="+", help="ratios of the full MACs (task)")
    ap.add_argument("--epochs", type=int, help="recipe R: epochs of every (re)training (task)")
    ap.add_argument("--search-epochs", type=int,
                    help="DMCP search epochs (and of the plain yardstick); shorter searches leave the "
                         "supernet's max width further below plain training (benchmarks/README.md) (task)")
    ap.add_argument("--alpha-init", choices=("budget", "zero"), default="budget",
                    help="search.alpha_init for every search: budget (the default start at the target) or zero "
                         "(the official start)")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-subset", type=int, help="training images kept, a fixed choice (0: all) (task)")
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="random shifts (task)")
    ap.add_argument("--noise", type=float, help="digits: Gaussian noise std in normalized units (task)")
    ap.add_argument("--image-size", type=int, help="(task)")
    ap.add_argument("--width", type=int, help="small_resnet base width (task)")
    ap.add_argument("--val-fraction", type=float, default=0.4, help="digits: held-out share")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--holdout", type=int, default=128, help="training images held out of the search for direct")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where every training runs (default: cuda when available)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in that many processes")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the report there (+ a widths PNG)")
    ap.add_argument("--seed-dir", type=Path, default=None,
                    help="save each finished seed there (seed<N>.pt) and reuse the saved ones (a killed run resumes)")
    ap.add_argument("--report-only", action="store_true", help="with --seed-dir: report the saved seeds, run nothing")
    ap.add_argument("--random-archs", type=int, metavar="N",
                    help="also N random in-band architectures per seed and target (leading channels of the "
                         "trained unpruned model, both protocols): how much the architecture matters (task)")
    ap.add_argument("--latency-arm", choices=("ort-cpu", "cuda"), default=None,
                    help="also DMCP with a latency budget on that backend (table at batch --latency-batch, "
                         "threads --threads), at the uniform arm's predicted latency of each target")
    ap.add_argument("--latency-batch", type=int, default=16)
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test")
    a = ap.parse_args(argv)
    for key, value in TASKS[a.task].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.noise > 0 and a.task != "digits":
        ap.error("--noise applies to the digits task only")
    if a.smoke:
        a.seeds, a.epochs, a.search_epochs, a.train_subset, a.batch_size, a.holdout = a.seeds[:1], 1, 2, 60, 20, 20
    return Settings(
        seeds=tuple(a.seeds), targets=tuple(a.targets), epochs=a.epochs, search_epochs=a.search_epochs, lr=a.lr,
        batch_size=a.batch_size, train_subset=a.train_subset or None, augment=a.augment, noise=a.noise,
        image_size=a.image_size, width=a.width, val_fraction=a.val_fraction, data_seed=a.data_seed,
        threads=a.threads, holdout=a.holdout, random_archs=a.random_archs, task=a.task, data_root=a.data_root,
        device=a.device, alpha_init=a.alpha_init, latency=a.latency_arm, latency_batch=a.latency_batch,
    ), a.markdown, (a.jobs, a.seed_dir, a.report_only)


def describe(s: Settings) -> str:
    """The task's data in words, for the report's first line."""
    if s.task == "digits":
        return f"noisy digits {s.image_size}px"
    subset = f"{s.train_subset:,}" if s.train_subset else "all 60,000"
    shifts = ", random shifts" if s.augment else ", no augmentation"
    return f"Fashion-MNIST {s.image_size}px ({subset} training images{shifts}, 10,000 test images)"


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
    todo = [] if report_only else [(seed, None) for seed in s.seeds if seed not in saved]
    if s.latency and not report_only:  # saved seeds without the latency arm get it added
        todo += [(seed, res) for seed, res in saved.items() if res["settings"].get("latency") is None]
    if s.latency and todo:
        s = dataclasses.replace(s, latency_table=str(measure_latency_table(s, seed_dir)))
    jobs_list = [(s, seed, seed_dir, res) for seed, res in todo]
    added = sum(res is not None for _, res in todo)
    reused = (f" ({len(todo) - added} seeds run, {added} given the latency arm, {len(saved) - added} reused)"
              if saved else "")
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            for seed, res in pool.imap_unordered(_run_and_save, jobs_list):
                saved[seed] = res
    else:
        for job in jobs_list:
            saved[job[1]] = _run_and_save(job)[1]
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
    warn = [f"WARNING: {a.label} NOT within {tolerance_text(a.kind)} of its target" for a in ordered
            if not a.within(full_macs)]
    for line in warn:
        warnings.warn(line, stacklevel=2)
    lines = [
        f"Accuracy at equal MACs, {describe(s)}, small_resnet(width={s.width}), "
        f"full {full_macs / 1e6:.3f} MMACs/image; seeds {list(s.seeds)}; recipe R {s.epochs} epochs lr {s.lr}; "
        f"search {s.search_epochs} epochs (demo hyper-parameters, alpha_init {s.alpha_init}, official Markov "
        f"schedule, BN isolated), "
        f"{s.holdout} training images held out for direct; torch {torch.__version__}, device {s.device}, "
        f"threads {s.threads} x jobs {jobs}, wall {(time.perf_counter() - started) / 60:.1f} min{reused}", "",
    ] + table(ordered, full_macs) + gap_rows(arms, s.targets, len(s.seeds)) + [""] + supernet_lines(supernet) + [""]
    lines += (fashion_goal_lines(arms, supernet, len(s.seeds)) if s.task == "fashion-mnist"
              else verdict(arms, min(s.targets))) + warn
    lines += ([""] + random_lines(arms, s.targets) if s.random_archs else [])
    lines += ([""] + latency_lines(ordered, full_macs, s.latency) if s.latency else [])
    lines += ["", "Widths per group (" + ", ".join(ids) + "), per seed:"]
    lines += [f"- {a.label}: " + "; ".join(str(w) for w in a.widths) for a in ordered if a.target is not None]
    text = "\n".join(lines) + "\n"
    print("\n" + text, end="", flush=True)
    if markdown is not None:
        write_text_atomic(markdown, text)
        full = [int(space.groups[g].width) for g in ids]
        plot_wider(arms, ids, full, s.targets, markdown.with_name(markdown.stem + "_widths.png"))
    return {"arms": {a.label: {"target": a.target, "kind": a.kind, "macs": a.macs, "top1": a.top1, "latency": a.latency,
                               "within": a.within(full_macs)} for a in ordered}, "supernet": supernet}


if __name__ == "__main__":
    main()
