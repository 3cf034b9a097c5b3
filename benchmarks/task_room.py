"""How much room a task leaves for a width choice (issue 18: "full minus uniform").

A search can only beat uniform width where the width matters. This script measures that for
several training settings of one task, before any search: per seed and setting, recipe R
(``dmcpfx.retrain`` from scratch, lr ``--lr`` cosine to 0, wd 5e-4, label smoothing 0.1) trains

- the unpruned ``small_resnet`` (the task's width), and
- the uniform-width compact model at each ``--targets`` ratio of the full MACs (the accuracy
  benchmark's uniform arm: one width ratio for every group, bisected to the target),

and scores each on the task's held-out split (Fashion-MNIST: all 10,000 test images). The room
at a target is the unpruned top-1 minus the uniform one, paired by seed. A setting is
``SUBSET:EPOCHS:AUG``: training images kept (0: all), recipe-R epochs, ``aug`` (random shifts
of up to 1/8 of the image) or ``plain``. Example (the table in ``results/task_room_fmnist.md``)::

    python benchmarks/task_room.py --task fashion-mnist --seeds 0 1 --jobs 2 \\
        --settings 2000:10:plain 2000:20:plain 2000:10:aug 2000:20:aug \\
        --markdown benchmarks/results/task_room_fmnist.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dmcpfx  # noqa: E402
from accuracy import TASKS  # noqa: E402
from accuracy_arms import fresh_model, make_data, train_and_score, uniform_compact  # noqa: E402
from accuracy_report import fmt  # noqa: E402
from bench_common import add_common_args, map_jobs, publish  # noqa: E402

Setting = tuple[int, int, bool]  # (training images kept, 0: all; epochs; random shifts)


def parse_setting(text: str) -> Setting:
    """``"2000:20:aug"`` -> ``(2000, 20, True)``; a one-line error names a malformed setting."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or parts[2] not in ("aug", "plain") \
            or int(parts[1]) < 1:
        raise argparse.ArgumentTypeError(f"setting {text!r}: expected SUBSET:EPOCHS:aug|plain, e.g. 2000:20:aug")
    return int(parts[0]), int(parts[1]), parts[2] == "aug"


def label(setting: Setting) -> str:
    subset, epochs, augment = setting
    images = f"{subset:,} images" if subset else "all images"
    return f"{images}, {epochs} epochs, {'random shifts' if augment else 'no augmentation'}"


def run_job(job: tuple[argparse.Namespace, int, Setting]) -> tuple[int, Setting, dict[str, float]]:
    """Train the unpruned model and uniform at each target for one seed and setting;
    ``(seed, setting, {"full" | target as text: top-1 %})``."""
    a, seed, setting = job
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    subset, epochs, augment = setting
    s = SimpleNamespace(**{**vars(a), "train_subset": subset or None, "epochs": epochs, "augment": augment})
    data = make_data(s)
    x = torch.randn(1, 3, a.image_size, a.image_size)
    space = dmcpfx.instrument(fresh_model(s, seed), (x,))
    top1 = {"full": train_and_score(fresh_model(s, seed), data, s, seed, init="scratch")}
    for target in a.targets:
        compact = uniform_compact(space, fresh_model(s, seed), target, x)
        top1[f"{target:g}"] = train_and_score(compact, data, s, seed, init="scratch")
    rooms = ", ".join(f"room {t:.0%} {top1['full'] - top1[f'{t:g}']:+.2f}" for t in a.targets)
    print(f"seed {seed}, {label(setting)}: full {top1['full']:.2f}, {rooms} ({time.perf_counter() - t0:.0f}s)",
          flush=True)
    return seed, setting, top1


def report(a: argparse.Namespace, top1: dict[Setting, dict[int, dict[str, float]]], minutes: float) -> str:
    seeds = sorted(a.seeds)
    head = " | ".join(f"uniform {t:.0%}" for t in a.targets) + " | " + " | ".join(f"room {t:.0%}" for t in a.targets)
    lines = [f"Room for a width choice, {a.task} {a.image_size}px, small_resnet width {a.width}, recipe R lr {a.lr} "
             f"batch {a.batch_size}, everything from scratch; seeds {seeds}; torch {torch.__version__}, device "
             f"{a.device}, threads {a.threads} x jobs {a.jobs}, wall {minutes:.1f} min", "",
             "top-1 % mean ± std over the seeds; room = unpruned minus uniform, paired by seed (per seed in brackets)",
             "", f"| setting | unpruned | {head} |", "|---|" + "---:|" * (1 + 2 * len(a.targets))]
    for setting in a.settings:
        runs = top1[setting]
        full = [runs[s]["full"] for s in seeds]
        cells = [fmt(full)] + [fmt([runs[s][f"{t:g}"] for s in seeds]) for t in a.targets]
        for t in a.targets:
            room = [runs[s]["full"] - runs[s][f"{t:g}"] for s in seeds]
            cells.append(f"{fmt(room)} ({', '.join(f'{v:+.1f}' for v in room)})")
        lines.append(f"| {label(setting)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap, "(seed, setting) runs in that many processes")
    ap.add_argument("--settings", type=parse_setting, nargs="+", help="SUBSET:EPOCHS:aug|plain (default: the task's)")
    ap.add_argument("--targets", type=float, nargs="+", help="ratios of the full MACs (task's default)")
    a = ap.parse_args(argv)
    task = TASKS[a.task]
    for key in ("targets", "width", "image_size", "noise"):
        if getattr(a, key, None) is None:
            setattr(a, key, task[key])
    a.val_fraction = 0.4
    if a.settings is None:
        a.settings = [(task["train_subset"], task["epochs"], task["augment"])]
    if a.smoke:
        a.seeds, a.settings, a.batch_size = a.seeds[:1], [(60, 1, False), (60, 1, True)], 20
    return a


def main(argv: Sequence[str] | None = None) -> dict[Setting, dict[int, dict[str, float]]]:
    """Run every (seed, setting); print (and write) the table; return
    ``{setting: {seed: {"full" | target: top-1 %}}}``."""
    a = parse_args(argv)
    started = time.perf_counter()
    jobs = [(a, seed, setting) for setting in a.settings for seed in a.seeds]
    results = map_jobs(run_job, jobs, a.jobs)
    top1: dict[Setting, dict[int, dict[str, float]]] = {setting: {} for setting in a.settings}
    for seed, setting, scores in results:
        top1[setting][seed] = scores
    publish(report(a, top1, (time.perf_counter() - started) / 60), a.markdown)
    return top1


if __name__ == "__main__":
    main()
