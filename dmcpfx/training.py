"""Small training utilities shared by the search (DESIGN.md section 5) and retraining.

Everything here is model-agnostic:

- :func:`param_groups` -- optimizer groups with no weight decay on norm weights and biases;
- :func:`cosine_schedule` -- per-step linear warm-up + cosine decay as a ``LambdaLR``;
- :func:`capture_rng_state` / :func:`restore_rng_state` -- every global RNG, stored as
  tensors and plain Python values so it survives ``torch.load(weights_only=True)``;
- :func:`save_checkpoint` / :func:`load_checkpoint` -- atomic save, safe load;
- :func:`load_checked` -- ``torch.load(weights_only=True)`` with a one-line error naming the file;
- :class:`MetricsWriter` -- one JSON object per line, flushed after every record;
- :func:`distributed_context` / :func:`ddp_wrap` -- torchrun (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``) support; a single process sees ``world_size == 1`` and no wrapping.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .errors import ConfigError
from .fileio import torch_save_atomic

__all__ = [
    "DistContext",
    "MetricsWriter",
    "capture_rng_state",
    "cosine_schedule",
    "ddp_wrap",
    "distributed_context",
    "load_checkpoint",
    "load_checked",
    "start_over_hint",
    "param_groups",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
]


# --- optimizer helpers ------------------------------------------------------------------
def param_groups(model_or_params: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Split parameters into ``[{decay}, {no decay}]`` optimizer groups.

    Parameters with ``ndim <= 1`` (norm weights, biases, scalars) get no weight decay;
    the rest get ``weight_decay``. Parameters that do not require grad and duplicates
    (tied weights) are skipped. Both groups are always returned (possibly empty) so an
    optimizer's ``state_dict`` has the same structure for every model.
    """
    params = model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    final_lr_ratio: float = 0.0,
    warmup_start_ratio: float = 0.0,
) -> LambdaLR:
    """Per-step schedule: linear warm-up, then cosine from the base lr to ``final_lr_ratio * lr``.

    Call ``scheduler.step()`` once per optimizer step. Step ``s`` (0-based) uses the factor
    ``w + (1 - w) * (s + 1) / warmup_steps`` while ``s < warmup_steps`` (``w`` =
    ``warmup_start_ratio``; 0: the classic ramp from zero), then
    ``r + (1 - r) * (1 + cos(pi * t)) / 2`` with ``t = (s - warmup_steps) / (total_steps - warmup_steps)``
    clamped to ``[0, 1]`` and ``r = final_lr_ratio``.
    """
    total_steps = int(total_steps)
    warmup_steps = int(warmup_steps)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0 or (warmup_steps > 0 and warmup_steps >= total_steps):
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
    if not 0.0 <= final_lr_ratio <= 1.0:
        raise ValueError(f"final_lr_ratio must be in [0, 1], got {final_lr_ratio}")
    if not 0.0 <= warmup_start_ratio <= 1.0:
        raise ValueError(f"warmup_start_ratio must be in [0, 1], got {warmup_start_ratio}")
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_start_ratio + (1.0 - warmup_start_ratio) * (step + 1) / warmup_steps
        t = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
        return final_lr_ratio + (1.0 - final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor)


# --- RNG state ----------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """Snapshot of the Python, NumPy, torch CPU and (if initialised) CUDA generators.

    Only tensors, ints, floats, strings and None are stored, so the dict round-trips
    through ``torch.save`` / ``torch.load(weights_only=True)``.
    """
    version, py_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned (CUDA states only when CUDA is usable)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- resume: one rule for the search and the retraining ------------------------------------
#: what may differ between a checkpoint and the run that resumes it
RESUME_FREE_KEYS = ("world_size",)


def gather_rng_states() -> list[dict]:
    """Every rank's RNG state (rank order), gathered to every rank; a collective under torch.distributed."""
    import torch.distributed as dist

    state = capture_rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def check_resume_config(saved: Mapping[str, Any], now: Mapping[str, Any], path: Path) -> None:
    """ConfigError ``cannot resume PATH: KEY was OLD, now NEW`` for the first setting of ``now``
    that differs from the checkpoint's ``saved`` (floats to 1e-12; a world size may change)."""
    for key, value in now.items():
        old = saved.get(key)
        same = old == value or (
            isinstance(value, float) and isinstance(old, float) and math.isclose(old, value, rel_tol=1e-12))
        if not same and key not in RESUME_FREE_KEYS:
            raise ConfigError(f"cannot resume {path}: {key} was {old!r}, now {value!r}")


def restore_rng_states(states: Sequence[Mapping[str, Any]], rank: int, world_size: int, seed: int,
                       epoch: int) -> None:
    """This rank's saved RNG state when the world size is unchanged (bit-identical resume); after
    a world-size change every rank is re-seeded with ``seed + rank + 1000 * epoch``
    (reproducible, not bit-identical to an uninterrupted run)."""
    if len(states) == world_size:
        restore_rng_state(states[rank])
    else:
        seed_everything(seed + rank + 1000 * int(epoch))


# --- checkpoints and metrics --------------------------------------------------------------
def start_over_hint(path: Path) -> str:
    """How to redo the stage that wrote ``path`` (the tail of a one-line error)."""
    return (f"delete {path.name} to redo the stage that writes it (or start over in a new run directory: "
            f"--run-dir or run.name)")


def load_checked(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a missing, empty, truncated or foreign
    file is a :class:`ConfigError` naming the file and how to start over."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} not found")
    if p.stat().st_size == 0:
        raise ConfigError(f"{what} {p} is empty; {start_over_hint(p)}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{what} {p} is corrupt, truncated or not a weights-only file ({first[:160]}); "
                          f"{start_over_hint(p)}") from exc


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """``torch.save(state)`` atomically: a reader never sees a half-written checkpoint."""
    torch_save_atomic(dict(state), path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metrics value of type {type(value).__name__} is not JSON serialisable")


class MetricsWriter:
    """Append-only JSON-lines log: ``write({...})`` adds one line and flushes it to disk.

    Tensors (one element -> number), NumPy scalars/arrays and paths are converted. The
    file is opened per record, so a killed process leaves at most one partial line.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(dict(record), default=_jsonable, sort_keys=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def read(self) -> list[dict]:
        """Every complete record written so far (a trailing partial line is ignored)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


# --- distributed ------------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) run."""

    rank: int
    world_size: int
    is_main: bool
    device: torch.device
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _destroy_process_group() -> None:
    """Tear down the process group this module created (registered with atexit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def distributed_context(*, init: bool = True, backend: str | None = None) -> DistContext:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (or an initialised process group).

    With ``WORLD_SIZE > 1`` and ``init=True`` the default process group is initialised
    (``nccl`` when CUDA is available, else ``gloo``) unless it already is. The device is
    ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
    """
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and init:
            if torch.cuda.is_available():
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
            atexit.register(_destroy_process_group)  # a live gloo group can abort the exiting process
            rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return DistContext(rank=rank, world_size=world, is_main=rank == 0, device=device, local_rank=local_rank)


def ddp_wrap(module: nn.Module, ctx: DistContext, *, ignore: Sequence[str] = (), **ddp_kwargs: Any) -> nn.Module:
    """Wrap ``module`` in ``DistributedDataParallel`` when ``ctx.distributed``; else return it.

    ``ignore`` names parameters/buffers (``module.named_parameters()`` names) that DDP must
    neither broadcast nor all-reduce -- e.g. DMCP's architecture parameters, which the
    search all-reduces itself because they are unused in the weight step. The module must
    already be on ``ctx.device``.
    """
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(module, device_ids=device_ids, **ddp_kwargs)
