"""Where the supernet's max width loses to plain training (issue 18's "inherit" protocol).

The accuracy benchmark (``accuracy.py``) compares the supernet's max width after a search with a
plain model trained as long with recipe R. The two differ in more than the sandwich sub-nets, so
this script trains, for each seed, the same model on the same images (the search's training
images: the task's subset minus ``--holdout``) as:

- ``plain R``: recipe R (``dmcpfx.retrain``: lr ``--lr`` cosine to 0, wd 5e-4, label smoothing
  0.1), ``--search-epochs`` epochs: the benchmark's yardstick.
- ``plain, search recipe``: ``dmcpfx.retrain`` with the search's weight hyper-parameters (the
  digits demo's: lr 0.2, wd 4e-5, no label smoothing; cosine to 0 where the search stops at
  ``min_lr`` 0.01).
- ``supernet``: the benchmark's search (``--target`` of the MACs, demo hyper-parameters).
- ``supernet, weights only``: the same with ``warmup_epochs`` = every epoch (no architecture step).
- ``supernet, no random sub-nets``: the same with ``num_random: 0`` (max and min only).

Every arm is scored at full width on the held-out split, supernets after re-estimating BN on 5
training batches (as the benchmark). The differences between rows split the gap into the recipe,
the random sub-nets and the architecture steps. Every setting is a documented option of the search;
nothing here is a recommendation to change the recipe. Example (Fashion-MNIST without shifts, the
table in ``results/supernet_gap_fmnist.md``)::

    python benchmarks/supernet_gap.py --task fashion-mnist --no-augment --seeds 0 1 2 --jobs 2 \\
        --markdown benchmarks/results/supernet_gap_fmnist.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dmcpfx  # noqa: E402
from accuracy import TASKS  # noqa: E402
from accuracy_arms import DEMO_SEARCH, fresh_model, make_data  # noqa: E402
from accuracy_report import fmt  # noqa: E402
from bench_common import add_common_args, map_jobs, publish  # noqa: E402
from dmcpfx.accuracy import evaluate  # noqa: E402
from dmcpfx.search.evaluation import evaluate_space  # noqa: E402
from dmcpfx.search.holdout import split_holdout  # noqa: E402

#: arm -> (label, how it trains): ("plain", retrain options) or ("search", search options)
ARMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "plain_r": ("plain R", "plain", {}),
    "plain_search": ("plain, search recipe", "plain",
                     dict(lr=DEMO_SEARCH["lr"], weight_decay=4e-5, label_smoothing=0.0)),
    "supernet": ("supernet", "search", {}),
    "weights_only": ("supernet, weights only", "search", dict(warmup_epochs="all")),
    "no_random": ("supernet, no random sub-nets", "search", dict(num_random=0)),
}
#: the rows of differences: (label, minuend arm, subtrahend arm)
GAPS = [
    ("plain R minus supernet (the benchmark's gap)", "plain_r", "supernet"),
    ("recipe: plain R minus plain, search recipe", "plain_r", "plain_search"),
    ("random sub-nets: no random sub-nets minus supernet", "no_random", "supernet"),
    ("architecture steps: weights only minus supernet", "weights_only", "supernet"),
    ("plain, search recipe minus no random sub-nets", "plain_search", "no_random"),
]


def run_arm(job: tuple[argparse.Namespace, int, str]) -> tuple[int, str, float, float]:
    """Train one arm for one seed; ``(seed, arm, top-1 %, seconds)``."""
    a, seed, arm = job
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    data = make_data(a)
    train, _ = split_holdout(data.train, a.holdout, seed=a.data_seed)
    _, kind, options = ARMS[arm]
    model = fresh_model(a, seed)
    if kind == "plain":
        dmcpfx.retrain(model, train, epochs=a.search_epochs, seed=seed, device=a.device, progress=False, **options)
        top1 = evaluate(model, data.val, a.device)["top1"]
    else:
        x = torch.randn(1, 3, a.image_size, a.image_size)
        space = dmcpfx.instrument(model, (x,))
        options = {k: (a.search_epochs if v == "all" else v) for k, v in options.items()}
        dmcpfx.search(space, train, target=a.target, epochs=a.search_epochs, seed=seed, device=a.device,
                      progress=False, calib_batches=0, alpha_init="budget", **DEMO_SEARCH, **options)
        top1 = evaluate_space(space, data.val, calib_loader=train, calib_batches=5)["top1"]
    seconds = time.perf_counter() - t0
    print(f"seed {seed}: {ARMS[arm][0]} {top1:.2f}% ({seconds:.0f}s)", flush=True)
    return seed, arm, top1, seconds


def report(a: argparse.Namespace, top1: dict[str, dict[int, float]], minutes: float) -> str:
    seeds = sorted(next(iter(top1.values())))
    subset = f"{a.train_subset:,} images" if a.train_subset else "all images"
    subset += ", random shifts" if a.augment else ", no augmentation"
    lines = [f"Supernet gap, {a.task} {a.image_size}px ({subset} minus {a.holdout} held out), small_resnet "
             f"width {a.width}, {a.search_epochs} epochs, search target {a.target:.0%} of the MACs; seeds {seeds}; "
             f"torch {torch.__version__}, device {a.device}, threads {a.threads} x jobs {a.jobs}, wall {minutes:.1f} min",
             "", "| arm (top-1 % at full width) | mean ± std | per seed |", "|---|---:|---|"]
    for arm, (label, _, _) in ARMS.items():
        if arm not in top1:
            continue
        row = [top1[arm][s] for s in seeds]
        lines.append(f"| {label} | {fmt(row)} | {', '.join(f'{v:.2f}' for v in row)} |")
    for label, plus, minus in GAPS:
        if plus not in top1 or minus not in top1:
            continue
        row = [top1[plus][s] - top1[minus][s] for s in seeds]
        lines.append(f"| *{label}* | {fmt(row)} | {', '.join(f'{v:+.2f}' for v in row)} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, "arms run in that many processes")
    ap.add_argument("--target", type=float, default=0.1, help="the search's MACs target (ratio)")
    ap.add_argument("--search-epochs", type=int, help="epochs of every arm (task's default)")
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                    help="random shifts of the training images (task's default)")
    ap.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=list(ARMS),
                    help="the arms to train (default: all; a difference row needs both of its arms)")
    ap.add_argument("--holdout", type=int, default=128)
    a = ap.parse_args(argv)
    for key, value in TASKS[a.task].items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    a.val_fraction, a.train_subset = 0.4, a.train_subset or None
    if a.smoke:
        a.seeds, a.search_epochs, a.train_subset, a.batch_size, a.holdout = a.seeds[:1], 2, 60, 20, 20
    return a


def main(argv: Sequence[str] | None = None) -> dict[str, dict[int, float]]:
    """Run every arm for every seed; print (and write) the table; return ``{arm: {seed: top-1}}``."""
    a = parse_args(argv)
    started = time.perf_counter()
    jobs = [(a, seed, arm) for seed in a.seeds for arm in a.arms]
    top1: dict[str, dict[int, float]] = {arm: {} for arm in a.arms}
    results = map_jobs(run_arm, jobs, a.jobs)
    for seed, arm, score, _ in results:
        top1[arm][seed] = score
    publish(report(a, top1, (time.perf_counter() - started) / 60), a.markdown)
    return top1


if __name__ == "__main__":
    main()
