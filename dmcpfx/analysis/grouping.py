"""From coupled channel spaces to groups: every connected component of the coupling graph
(leaf spaces only) becomes one :class:`~.records.Group`, with its frozen reasons, divisor
(GroupNorm / grouped conv), channel order and members (the tensors sliced with it)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import networkx as nx

from .records import Group, Member, SliceSpec

__all__ = ["build_groups"]


def build_groups(spaces: Sequence[Any], coupling: nx.Graph,
                 slices: Mapping[tuple[str, int], SliceSpec]) -> tuple[list[Group], dict[int, Group]]:
    """``(groups in order of their first space, leaf space id -> its group)``.

    ``spaces``: the builder's spaces (``width``, ``producer``, ``label``, ``frozen``,
    ``conv_groups``, ``norm_block``), indexed by space id; ``coupling``: spaces that must keep
    the same channels are connected (leaf spaces only); ``slices``: the sliced tensors, their
    layouts over leaf spaces.
    """
    groups: list[Group] = []
    space_group: dict[int, Group] = {}
    for comp in sorted(nx.connected_components(coupling), key=min):
        sids = sorted(comp)
        group = _group(spaces, sids)
        groups.append(group)
        for s in sids:
            space_group[s] = group
    seen: dict[str, int] = {}  # unique ids (a space without a producer could repeat a label)
    for g in groups:
        if g.id in seen:
            seen[g.id] += 1
            g.id = f"{g.id}#{seen[g.id]}"
        else:
            seen[g.id] = 0
    for spec in slices.values():
        module = spec.tensor.rsplit(".", 1)[0] if "." in spec.tensor else ""
        for sid in spec.layout.spaces:
            member = Member(module=module, role=spec.role, tensor=spec.tensor)
            grp = space_group[sid]
            if member not in grp.members:
                grp.members.append(member)
    return groups, space_group


def _group(spaces: Sequence[Any], sids: list[int]) -> Group:
    """The group of the coupled spaces ``sids`` (sorted): its id is its first named producer's."""
    widths = {spaces[s].width for s in sids}
    named = [s for s in sids if spaces[s].producer is not None]
    head = named[0] if named else sids[0]
    gid = spaces[head].producer or f"~{spaces[head].label}"
    group = Group(id=gid, width=spaces[head].width, spaces=sids)
    for s in sids:
        for r in spaces[s].frozen:
            if r not in group.frozen_reasons:
                group.frozen_reasons.append(r)
    if len(widths) > 1:
        group.frozen_reasons.append(f"coupled spaces have different widths {sorted(widths)}")
    conv_groups = set().union(*(spaces[s].conv_groups for s in sids))
    norm_block = math.lcm(*(spaces[s].norm_block for s in sids))
    if norm_block > 1:
        if conv_groups:
            group.frozen_reasons.append("a GroupNorm and a grouped conv need different channel orders")
        group.divisor = norm_block  # whole GroupNorm groups, leading ones kept
    if len(conv_groups) > 1:
        group.frozen_reasons.append(f"grouped convolutions with different group counts {sorted(conv_groups)}")
    elif conv_groups:
        ng = conv_groups.pop()
        per = group.width // ng
        group.divisor = ng
        group.order = [g * per + j for j in range(per) for g in range(ng)]
    if group.width < 2 and not group.frozen:
        group.frozen_reasons.append("a single channel cannot be pruned")
    return group
