"""Reporting of benchmarks/zoo_vs_torch_pruning.py: the per-tool and per-model result records,
the text table, the totals, the markdown table and the warnings summary."""
from __future__ import annotations

import collections
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/equivalence.py

from equivalence import TOL  # noqa: E402


@dataclass
class ToolResult:
    """One tool on one model: ``seconds`` is None when the timed part crashed."""

    seconds: float | None = None
    diff: float | None = None  # oracle relative difference; None when not measured
    macs_ratio: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    pruned: nn.Module | None = field(default=None, repr=False)  # the model after pruning (when it ran)

    @property
    def equivalent(self) -> bool:
        return self.error is None and self.diff is not None and self.diff <= TOL

    @property
    def status(self) -> str:
        if self.error is not None:
            return "FAIL"
        if self.diff is None:
            return "?"
        return "yes" if self.diff <= TOL else f"NO {self.diff:.1e}"


@dataclass
class Row:
    model: str
    ours: ToolResult
    tp: ToolResult

    @property
    def speed_ratio(self) -> float | None:
        """ours seconds / TP seconds (< 1: ours faster); None if a tool has no time."""
        if self.ours.seconds is None or self.tp.seconds is None:
            return None
        return self.ours.seconds / max(self.tp.seconds, 1e-12)

    def notes(self) -> str:
        parts = [f"ours: {n}" for n in self.ours.notes] + [f"TP: {n}" for n in self.tp.notes]
        return "; ".join(parts)


def _fmt_seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f}"


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def _fmt_pct(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:.1f}"


COLUMNS = ("model", "ours s", "TP s", "ours/TP", "ours equiv", "TP equiv", "ours MACs %", "TP MACs %", "notes")


def row_cells(row: Row) -> list[str]:
    return [
        row.model, _fmt_seconds(row.ours.seconds), _fmt_seconds(row.tp.seconds), _fmt_ratio(row.speed_ratio),
        row.ours.status, row.tp.status, _fmt_pct(row.ours.macs_ratio), _fmt_pct(row.tp.macs_ratio), row.notes(),
    ]


WIDTHS = (20, 7, 7, 7, 11, 11, 11, 9)


def text_line(cells: Sequence[str]) -> str:
    first = f"{cells[0]:<{WIDTHS[0]}s}"
    middle = " ".join(f"{c:>{w}s}" for c, w in zip(cells[1:-1], WIDTHS[1:]))
    return f"{first} {middle}  {cells[-1]}"


def totals(rows: list[Row]) -> list[str]:
    n = len(rows)
    compared = [r for r in rows if r.speed_ratio is not None]
    faster = sum(r.speed_ratio < 1.0 for r in compared)
    lines = [
        f"ours faster: {faster}/{n} models ({len(compared)} timed by both tools; "
        f"{n - len(compared)} not comparable because a tool failed)",
        f"total seconds over the {len(compared)} models timed by both: ours {sum(r.ours.seconds for r in compared):.1f}, "
        f"TP {sum(r.tp.seconds for r in compared):.1f}",
    ]
    for label, get in (("ours", lambda r: r.ours), ("TP", lambda r: r.tp)):
        results = [get(r) for r in rows]
        equivalent = sum(t.equivalent for t in results)
        failed = sum(t.error is not None for t in results)
        timed = [t.seconds for t in results if t.seconds is not None]
        lines.append(
            f"{label}: equivalent {equivalent}/{n}, not equivalent {n - equivalent - failed}, failed {failed}; "
            f"total {sum(timed):.1f} s over {len(timed)} timed models"
        )
    for label, get in (("ours", lambda r: r.ours), ("TP", lambda r: r.tp)):
        for r in rows:
            if get(r).error is not None:
                lines.append(f"{label} failed on {r.model}: {get(r).error}")
    return lines


def markdown(rows: list[Row], total_lines: list[str], header: str) -> str:
    out = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * 7 + ["---"]) + "|"]
    for row in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in row_cells(row)) + " |")
    out += [""] + [f"- {line}" for line in total_lines]
    return "\n".join(out) + "\n"


def print_warnings(warned: dict[str, collections.Counter]) -> None:
    for tool, counter in warned.items():
        if counter:
            print(f"{tool} warnings ({sum(counter.values())} in all), most frequent:")
            for key, count in counter.most_common(5):
                print(f"  {count:5d}x {key}")
