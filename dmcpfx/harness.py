"""The training harness shared by the search and the retraining.

Both stages train for a number of epochs over a loader, under torchrun or alone, and keep a
checkpoint and a metrics file in a run directory. What they have in common lives here, once:

- :func:`resolve_device` -- the device of this process (``cuda:LOCAL_RANK`` under torchrun);
- :func:`steps_per_epoch` -- the loader's length, a one-line error when it has none or is empty;
- :func:`epochs` -- the epoch loop: ``sampler.set_epoch`` before each epoch (a
  ``DistributedSampler`` reshuffles), so every stage shuffles the same way;
- :class:`RunFiles` -- the checkpoint and the metrics file of one stage: resume (one rule for
  every stage: the format tag, every recorded option must match, a world-size change re-seeds),
  the metrics file cut back to what the checkpoint saw, and the end-of-epoch write (the metrics
  record, then every rank's RNG state and the checkpoint, atomically).

The per-step NaN/inf stop is :mod:`dmcpfx.finite`; evaluation is :func:`dmcpfx.accuracy.evaluate`
(percent), which the search's :func:`~dmcpfx.search.evaluation.evaluate_space` follows.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from .errors import ConfigError, OutputError
from .fileio import write_text_atomic
from .training import (
    DistContext, MetricsWriter, check_resume_config, gather_rng_states, load_checked, save_checkpoint,
)

__all__ = ["RunFiles", "checked_device", "epochs", "resolve_device", "steps_per_epoch"]


def checked_device(device: str | torch.device, key: str) -> torch.device:
    """``device`` as a :class:`torch.device` that this machine has; else a ConfigError naming ``key``
    (a misspelled device, CUDA asked where there is none, a CUDA index past the last device)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"{key} must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} is {str(dev)!r} but CUDA is not available here (torch {torch.__version__}); "
                              f"use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{key} is {str(dev)!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key} is 'mps' but MPS is not available here; use 'cpu'")
    return dev


def resolve_device(device: str | torch.device | None, ctx: DistContext, key: str = "device") -> torch.device:
    """``device`` when given (checked: :func:`checked_device`); under torchrun the rank's device;
    else CUDA when available, else CPU."""
    if device is not None:
        return checked_device(device, key)
    if ctx.distributed:
        return ctx.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def steps_per_epoch(loader: Iterable, caller: str) -> int:
    """``len(loader)``; a ConfigError naming ``caller`` when the loader has no length or is empty."""
    try:
        steps = len(loader)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"{caller}: train_loader must have a length (steps per epoch)") from exc
    if steps < 1:
        raise ConfigError(f"{caller}: train_loader is empty")
    return steps


def epochs(loader: Any, start: int, stop: int) -> Iterator[int]:
    """Epochs ``start .. stop - 1`` (0-based); the loader's sampler is told each one first."""
    for epoch in range(start, stop):
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield epoch


class RunFiles:
    """The checkpoint and metrics file of one stage in ``run_dir`` (None: no files).

    Rank 0 writes; every rank takes part in :meth:`save_epoch` (the RNG states are gathered).
    A checkpoint is a dict with ``format`` (this stage's tag), ``epoch`` (epochs done),
    ``config`` (the record a resume must match), ``rng`` (every rank's RNG state),
    ``metrics_bytes`` (the metrics file's size when it was written), ``history`` and the
    stage's own states.
    """

    def __init__(self, run_dir: str | os.PathLike | None, *, checkpoint: str, metrics: str, fmt: str,
                 what: str, ctx: DistContext):
        self.run_path = Path(run_dir) if run_dir is not None else None
        if self.run_path is not None and self.run_path.exists() and not self.run_path.is_dir():
            raise OutputError(f"{what.split()[0]}: run_dir {self.run_path} exists and is not a directory")
        self.checkpoint_path = self.run_path / checkpoint if self.run_path is not None else None
        self.metrics_path = self.run_path / metrics if self.run_path is not None else None
        self.fmt, self.what, self.ctx = fmt, what, ctx
        self.writer = MetricsWriter(self.metrics_path) if self.metrics_path is not None and ctx.is_main else None

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path is not None and self.checkpoint_path.exists()

    def load(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The checkpoint, after checking that it is this stage's and that ``config`` matches it."""
        path = self.checkpoint_path
        state = load_checked(path, self.what)
        if not isinstance(state, dict) or state.get("format") != self.fmt:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ConfigError(f"{path} is not a dmcpfx {self.what} (format {found!r})")
        check_resume_config(state["config"], config, path)
        return state

    def start_metrics(self, resumed: Mapping[str, Any] | None) -> None:
        """A fresh run empties the metrics file; a resumed one drops what a killed run logged after
        its last checkpoint (a checkpoint without ``metrics_bytes``: the file is its history)."""
        if self.writer is None:
            return
        path = self.writer.path
        if resumed is None:
            if path.exists():
                path.unlink()
        elif "metrics_bytes" in resumed:
            if path.exists():
                with open(path, "r+b") as f:
                    f.truncate(min(int(resumed["metrics_bytes"]), os.path.getsize(path)))
        else:
            write_text_atomic(path, "")
            for record in resumed.get("history", []):
                self.writer.write(record)

    def write(self, record: Mapping[str, Any]) -> None:
        """One metrics record (rank 0)."""
        if self.writer is not None:
            self.writer.write(record)

    def save_epoch(self, epoch: int, record: Mapping[str, Any], config: Mapping[str, Any],
                   states: Mapping[str, Any]) -> None:
        """After epoch ``epoch`` (0-based): the metrics ``record``, then the checkpoint with ``config``
        and ``states`` (already ``state_dict()``-ed); a collective under torch.distributed."""
        self.write(record)
        metrics_bytes = os.path.getsize(self.writer.path) if self.writer is not None else 0
        rng_states = gather_rng_states()  # a collective: every rank
        if self.checkpoint_path is not None and self.ctx.is_main:
            save_checkpoint(self.checkpoint_path, {
                "format": self.fmt, "epoch": epoch + 1, "config": dict(config), **states, "rng": rng_states,
                "metrics_bytes": metrics_bytes,
            })
