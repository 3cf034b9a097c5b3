"""Plots of searches and searched architectures (matplotlib, Agg backend, PNG written atomically)."""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from .errors import ArchError
from .fileio import atomic_path

__all__ = ["plot_search", "plot_widths"]


def _full_widths(space_or_groups: Any) -> dict[str, int]:
    groups = getattr(space_or_groups, "groups", space_or_groups)
    if not isinstance(groups, Mapping):
        raise TypeError(f"expected a SearchSpace or a mapping of groups, got {type(space_or_groups).__name__}")
    return {gid: int(getattr(info, "width", info)) for gid, info in groups.items()}


def plot_widths(
    space_or_groups: Any,
    widths: Mapping[str, int],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> None:
    """Bar chart of kept vs full channels per group, in network order, saved as PNG.

    ``space_or_groups``: a SearchSpace (its ``groups``), a ``{gid: GroupInfo}`` mapping or a
    ``{gid: full width}`` mapping; its order is the x-axis order. ``widths`` maps group ids
    to kept channels (missing groups are drawn at full width).
    """
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the user's backend alone

    full = _full_widths(space_or_groups)
    unknown = sorted(set(widths) - set(full))
    if unknown:
        raise ArchError(f"widths name unknown group(s) {unknown}")
    names = list(full)
    kept = [int(widths.get(g, full[g])) for g in names]
    tot = [full[g] for g in names]
    fig = Figure(figsize=(max(6.0, 0.28 * len(names) + 2.0), 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(names))
    ax.bar(xs, tot, color="#d9d9d9", label="full")
    ax.bar(xs, kept, color="#3b75af", label="kept")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6 if len(names) > 30 else 8)
    ax.set_ylabel("channels")
    ax.set_xlim(-0.6, len(names) - 0.4)
    if title is None:
        title = f"kept channels per group: {sum(kept) / max(1, sum(tot)):.0%} of all channels"
        flops = getattr(space_or_groups, "flops", None)
        full_flops = getattr(space_or_groups, "full_flops", None)
        if callable(flops) and full_flops:
            title += f", {int(flops({g: int(w) for g, w in widths.items()})) / full_flops:.0%} of MACs"
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _search_series(records: Iterable[Mapping[str, Any]]) -> tuple[list, list, dict[str, list]]:
    """``(steps, E/T, {group: [(step, E[c])]})`` from ``metrics.jsonl`` records (start, step, epoch)."""
    ratio: dict[int, float] = {}
    widths: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        if rec.get("kind") not in ("start", "step", "epoch") or not rec.get("target"):
            continue
        step = int(rec.get("step", 0))
        ratio[step] = float(rec["expected"]) / float(rec["target"])
        for gid, width in (rec.get("expected_widths") or {}).items():
            widths.setdefault(gid, []).append((step, float(width)))
    steps = sorted(ratio)
    return steps, [ratio[s] for s in steps], widths


def plot_search(
    records: Iterable[Mapping[str, Any]],
    space_or_groups: Any,
    path: str | os.PathLike,
    *,
    band: float = 0.95,
) -> None:
    """Two panels over the search steps, saved as PNG: the expected count over the target
    (``E/T``, the budget band ``[band, 1]`` shaded) and each group's expected width over its
    full width (``E[c]/C``). ``records``: the search's ``metrics.jsonl`` records (``start``,
    ``step`` and ``epoch`` kinds are read, others skipped); ``space_or_groups``: as for
    :func:`plot_widths` (a SearchSpace, ``{gid: GroupInfo}`` or ``{gid: C}``).
    """
    from matplotlib.figure import Figure

    steps, ratio, widths = _search_series(records)
    if not steps:
        raise ValueError("no search records with an expected count to plot")
    fig = Figure(figsize=(8.0, 6.5), dpi=100)
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    top.axhspan(band, 1.0, color="#b7e4b0", label=f"budget band [{band:g} T, T]")
    top.plot(steps, ratio, color="#3b75af", marker=".", label="E / T")
    top.set_ylabel("expected / target")
    top.set_title(f"search: expected count at the end {ratio[-1]:.1%} of the target")
    top.legend(loc="lower right", fontsize=8)
    full = _full_widths(space_or_groups)
    for gid, points in widths.items():
        if gid in full and full[gid] > 0:
            bottom.plot([p[0] for p in points], [p[1] / full[gid] for p in points], marker=".", linewidth=1,
                        label=gid)
    bottom.set_xlabel("search step")
    bottom.set_ylabel("E[c] / C per group")
    bottom.set_ylim(0.0, 1.05)
    if len(widths) <= 16:
        bottom.legend(loc="lower left", fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
