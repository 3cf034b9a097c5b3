"""FX pass: literal channel counts of an instrumented graph read from a run-time table.

A depthwise conv's ``groups``, ``x.view(-1, 512 * 7 * 7)``, split sizes and GroupNorm
``num_groups`` are literals in an exported graph. :class:`ChannelConstants` rewrites each
literal of the analysis' constant sites (DESIGN.md section 7) into a ``getitem`` of a list
attribute of the GraphModule, so a slimmable run (:mod:`dmcpfx.search.slimmable`) can write
a sub-net's values into the table without recompiling the graph per sub-net.
"""
from __future__ import annotations

import operator
import warnings
from typing import Mapping

from torch import fx

from .weight_slicing import as_split_with_sizes, set_constant, spell_out_args

__all__ = ["ChannelConstants"]


class ChannelConstants:
    """The literal channel counts of one instrumented graph, read from ``gm``'s table.

    Each literal of the analysis' constant sites (DESIGN.md section 7) becomes a
    ``getitem`` of the list attribute ``_dmcpfx_channel_constants``; a ``split.Tensor``
    becomes the equivalent ``split_with_sizes``. The table holds the full values, so
    the graph computes what it computed before. Built once per graph (a second runner
    reuses it).
    """

    ATTR = "_dmcpfx_channel_constants"

    def __init__(self, gm: fx.GraphModule, graph, tag: str) -> None:
        self.graph = graph
        if self.ATTR in gm.__dict__:  # tabled before (a copy of a tabled graph keeps both)
            self.table, self.entries = gm.__dict__[self.ATTR], gm.meta[self.ATTR]
            return
        nodes = {n.name: n for n in gm.graph.nodes}
        sites = [site for site in graph.constant_sites if site.graph == tag and site.node in nodes]
        self.table: list[int] = []
        self.entries: list = []
        if not sites:
            return
        setattr(gm, self.ATTR, self.table)  # filled below: the get_attr needs the attribute
        first = next(n for n in gm.graph.nodes if n.op != "placeholder")
        with gm.graph.inserting_before(first), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # fx expects tensors or modules behind a get_attr
            table = gm.graph.get_attr(self.ATTR)
        for site in sites:
            node = nodes[site.node]
            items, fulls = [], []
            for entry in site.entries:
                fulls.append(int(graph.kept_extent(entry.layout, {})) // entry.divide)
                with gm.graph.inserting_before(node):
                    items.append(gm.graph.call_function(operator.getitem, (table, len(self.table))))
                self.table.append(fulls[-1])
                self.entries.append(entry)
            if site.kind == "split":
                as_split_with_sizes(node, items)
                continue
            spell_out_args(node, max(e.arg for e in site.entries))
            for entry, item, full in zip(site.entries, items, fulls):
                old = node.args[entry.arg] if entry.index is None else node.args[entry.arg][entry.index]
                if old != full:
                    raise ValueError(f"node '{node.name}' holds {old} where the analysis counts {full}")
                set_constant(node, entry, item)
        gm.meta[self.ATTR] = self.entries  # GraphModule copies keep meta
        gm.recompile()

    def values(self, widths: Mapping[str, int]) -> list[int]:
        return [int(self.graph.kept_extent(e.layout, widths)) // e.divide for e in self.entries]

    def set(self, values: list[int]) -> list[int]:
        """Write ``values`` into the table; returns the previous ones."""
        old = list(self.table)
        self.table[:] = values
        return old
