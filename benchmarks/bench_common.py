"""What the small per-seed benchmarks (``supernet_gap.py``, ``task_room.py``) share: their common
command-line options, running their jobs in worker processes, and printing / writing the table."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch

from accuracy import TASKS
from dmcpfx.fileio import write_text_atomic

Job = TypeVar("Job")
Result = TypeVar("Result")


def add_common_args(ap: argparse.ArgumentParser, jobs_help: str) -> None:
    """The options of every such benchmark: task and data, seeds, model width, recipe R's lr and
    batch, threads and processes, device, the Markdown file, and ``--smoke``."""
    ap.add_argument("--task", choices=tuple(TASKS), default="fashion-mnist")
    ap.add_argument("--data-root", default=None, help="fashion-mnist: the idx files' folder (default: Debian's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--width", type=int, help="small_resnet base width (task's default)")
    ap.add_argument("--lr", type=float, default=0.1, help="recipe R's lr")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help=jobs_help)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table there")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test")


def map_jobs(run: Callable[[Job], Result], jobs: Sequence[Job], processes: int) -> list[Result]:
    """``[run(job) for job in jobs]``, in that many spawned processes when ``processes > 1``
    (``run`` must be a module-level function)."""
    if processes > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(processes) as pool:
            return pool.map(run, jobs, chunksize=1)
    return [run(job) for job in jobs]


def publish(text: str, markdown: Path | None) -> None:
    """Print the table, and write it atomically to ``markdown`` when given."""
    print(text)
    if markdown is not None:
        write_text_atomic(markdown, text)
