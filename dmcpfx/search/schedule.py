"""The probability that a random sub-net is a Markov sample (DESIGN.md section 5).

After warm-up, each random sub-net of the weight step is a Markov sample of the gates
with probability ``p`` (else per-group uniform widths). Schedules, with ``s`` the
0-based index of the step within the architecture phase and ``S`` its length:

- ``"official"`` (default): ``p = 1 - decay^s``, ``decay = 0.9999``. The authors' code
  (Zx55/dmcp ``runner/dmcp_runner.py``, ``scheduled_random``) keeps the uniform
  probability ``q`` and multiplies it by 0.9999 on every tenth step, once per random
  sub-net; ``1 - 0.9999^s`` is the DESIGN.md formula (use ``markov_decay=0.99998``
  for the official rate with 2 random sub-nets: ``0.9999^(2s/10)``).
- ``"linear"``: ``p = final * s / (S - 1)`` -- a linear ramp from 0 to ``final`` at the
  last architecture step (this project's former default).

Every schedule is a pure function of the step, so a resumed search reproduces it.
"""
from __future__ import annotations

from ..errors import ConfigError

__all__ = ["MARKOV_SCHEDULES", "markov_prob", "check_markov_schedule"]

MARKOV_SCHEDULES = ("official", "linear")


def check_markov_schedule(schedule: str, decay: float, final: float) -> None:
    """Raise :class:`ConfigError` for an unknown schedule or an out-of-range parameter."""
    if schedule not in MARKOV_SCHEDULES:
        raise ConfigError(f"markov_schedule must be one of {', '.join(MARKOV_SCHEDULES)}, got {schedule!r}")
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"markov_decay must be in (0, 1], got {decay}")
    if not 0.0 <= final <= 1.0:
        raise ConfigError(f"markov_prob_final must be in [0, 1], got {final}")


def markov_prob(step_in_arch: int, arch_steps: int, *, schedule: str = "official", decay: float = 0.9999,
                final: float = 1.0) -> float:
    """``p`` in ``[0, 1]`` at architecture step ``step_in_arch`` (0-based; < 0: warm-up, 0.0)."""
    if step_in_arch < 0:
        return 0.0
    if schedule == "official":
        return 1.0 - float(decay) ** int(step_in_arch)
    if schedule == "linear":
        return float(final) * step_in_arch / max(1, arch_steps - 1)
    raise ConfigError(f"markov_schedule must be one of {', '.join(MARKOV_SCHEDULES)}, got {schedule!r}")
