"""Plots of searched architectures (matplotlib, Agg backend, PNG written atomically)."""
from __future__ import annotations

import os
from typing import Any, Mapping

from ..errors import ArchError
from ..fileio import atomic_path

__all__ = ["plot_widths"]


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
