"""The retrain checkpoint: its format tag, the RNG states of every rank, and the
checks that a checkpoint may be resumed with the current settings."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dmcpfx.errors import ConfigError
from dmcpfx.training import check_resume_config, load_checked  # a corrupt file: an error naming it

CHECKPOINT_NAME = "retrain_checkpoint.pt"
METRICS_NAME = "retrain_metrics.jsonl"
CHECKPOINT_FORMAT = "dmcpfx-retrain/1"


def load_resume_state(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    state = load_checked(path, "retrain checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a dmcpfx retrain checkpoint (format "
                          f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    check_resume_config(state["config"], config, path)  # the search's rule: a world size may change
    return state
