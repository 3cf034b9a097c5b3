"""Progress output that suits both a terminal and a log file.

On a terminal tqdm draws its bars (``\\r`` updates). When the output is a file or a pipe the
bars are off and each epoch prints one plain line instead, so a log holds one line per epoch.
"""
from __future__ import annotations

import sys
from typing import Any, Mapping

__all__ = ["is_terminal", "bars_enabled", "derive_line", "print_search_epoch"]


def is_terminal() -> bool:
    """Whether tqdm's stream (stderr) is a terminal."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


def bars_enabled(progress: bool) -> bool:
    """tqdm bars only when ``progress`` is on and stderr is a terminal."""
    return bool(progress) and is_terminal()


#: how a budget metric reads
UNITS = {"flops": "MACs", "params": "params", "latency": "ms"}


def _f(record: Mapping[str, Any], key: str, fmt: str, scale: float = 1.0) -> str:
    value = record.get(key)
    return "n/a" if value is None else format(float(value) * scale, fmt)


def print_search_epoch(record: Mapping[str, Any], epochs: int) -> None:
    """One plain line for a search epoch record (as :func:`dmcpfx.search` passes to its callback)."""
    val = f", val top1 {_f(record, 'val_top1', '.2f')}%" if "val_top1" in record else ""
    unit = UNITS.get(str(record.get("metric", "flops")), "MACs")
    print(f"search epoch {record.get('epoch')}/{epochs} [{record.get('phase')}]: loss "
          f"{_f(record, 'loss_max', '.4f')}, expected {_f(record, 'expected', '.4g')} of target "
          f"{_f(record, 'target', '.4g')} {unit}{val}, {_f(record, 'seconds', '.1f')}s", flush=True)


def derive_line(mode: str, expected: float, derived: float, target: float, unit: str = "MACs") -> str:
    """One line for derive: the search's expectation, the derived arch's exact amount, the move
    from the expectation and the target (all in ``unit``: MACs per image, params, ms per batch)."""
    n = ",.0f" if unit != "ms" else ",.3f"
    return (f"derive ({mode}): the search ended at E = {expected:{n}} {unit} ({expected / target:.1%} of the target); "
            f"arch.yaml has {derived:{n}} {unit} ({derived / expected - 1.0:+.2%} from E, "
            f"{derived / target:.1%} of the target {target:{n}})")
