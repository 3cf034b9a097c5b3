"""The retrain checkpoint: its format tag, the RNG states of every rank, and the
checks that a checkpoint may be resumed with the current settings."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dmcpfx.errors import ConfigError
from dmcpfx.training import capture_rng_state, load_checked  # a corrupt file: an error naming it

CHECKPOINT_NAME = "retrain_checkpoint.pt"
METRICS_NAME = "retrain_metrics.jsonl"
CHECKPOINT_FORMAT = "dmcpfx-retrain/1"


def all_rng_states() -> list[dict]:
    """RNG states of every rank, in rank order (gathered to every rank)."""
    import torch.distributed as dist

    state = capture_rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def load_resume_state(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    state = load_checked(path, "retrain checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a dmcpfx retrain checkpoint (format "
                          f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    for key, value in config.items():
        if state["config"].get(key) != value:
            raise ConfigError(
                f"{path}: cannot resume, {key}={state['config'].get(key)!r} in the checkpoint "
                f"but {key}={value!r} now"
            )
    return state
