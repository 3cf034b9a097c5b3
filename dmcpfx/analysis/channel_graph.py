"""ChannelGraph: the result of channel analysis (DESIGN.md section 2).

The analysis (``dmcpfx.analysis``) fills a :class:`~.builder.GraphBuilder` with
channel spaces, couplings between them, the tensors to slice and the conv/linear
calls to count; :meth:`~.builder.GraphBuilder.finalize` returns the
:class:`ChannelGraph` that the passes and the budget read.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .layout import Layout, Seg
from .records import (ConstantEntry, ConstantSite, Group, MacRecord, MaskSite, Member, ModuleEdit,  # noqa: F401
                      SliceSpec, Width, segment_boundaries)

# --- the result ---------------------------------------------------------------------------
class ChannelGraph:
    """Channel groups of a traced model, with what the passes need to act on them.

    Attributes: ``groups`` (id -> :class:`Group`, network order), ``slices``,
    ``edits``, ``macs``, ``mask_sites``, ``constant_sites``, ``graph_modules``
    (``{"eval": gm, "train": gm}``, the same object when both traces agree),
    ``input_shapes``, ``param_shapes`` (qualified name -> shape of every parameter).
    """

    def __init__(self, *, groups, space_group, builder: "GraphBuilder", graph_modules, input_shapes, param_shapes, model_name=None):
        self.groups: dict[str, Group] = {g.id: g for g in groups}
        self._space_group: dict[int, Group] = space_group
        self.slices = list(builder.slices.values())
        self.edits = builder.edits
        self.macs = builder.macs
        self.mask_sites = builder.mask_sites
        self.constant_sites = builder.constant_sites
        self.graph_modules = graph_modules
        self.input_shapes = input_shapes
        self.param_shapes = param_shapes
        self.model_name = model_name

    # groups
    @property
    def prunable(self) -> dict[str, Group]:
        return {k: g for k, g in self.groups.items() if g.prunable}

    @property
    def frozen(self) -> dict[str, Group]:
        return {k: g for k, g in self.groups.items() if g.frozen}

    def group_of(self, seg: Seg) -> Group:
        return self._space_group[seg.space]

    def _segment_width(self, seg: Seg, widths: Mapping[str, Width]) -> Width | None:
        """Width of a full segment of a prunable group named in ``widths``, else None."""
        group = self._space_group[seg.space]
        if group.frozen or seg.length != group.width:
            return None
        return widths.get(group.id)

    # index sets
    def kept_indices(self, layout: Layout, widths: Mapping[str, int]) -> torch.Tensor:
        """Element indices kept along ``layout.dim`` for integer ``widths``, ascending."""
        pieces, offset = [], 0
        for seg in layout.segs:
            w = self._segment_width(seg, widths)
            if w is None or w == seg.length:
                local = torch.arange(seg.length)
            else:
                local = self._space_group[seg.space].kept_indices(int(w))
            pieces.append(local + offset)
            offset += seg.length
        channels = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
        if layout.block == 1:
            return channels
        return (channels[:, None] * layout.block + torch.arange(layout.block)).reshape(-1)

    def kept_extent(self, layout: Layout, widths: Mapping[str, Width]) -> Width:
        """Number of elements kept along ``layout.dim`` (int, or a tensor for soft widths)."""
        total: Width = 0
        for seg in layout.segs:
            w = self._segment_width(seg, widths)
            total = total + (seg.length if w is None else w)
        return total * layout.block

    # counting (DESIGN.md section 4)
    def flops(self, widths: Mapping[str, Width] | None = None) -> Width:
        """Multiply-accumulates per image of conv/linear calls at ``widths`` (missing groups: full).

        Integer widths give the exact count of the materialized model; tensor widths
        (expected widths) give a differentiable scalar: the product of expectations.
        """
        widths = widths or {}
        total: Width = 0
        for rec in self.macs:
            cin = rec.in_channels if rec.in_layout is None else self.kept_extent(rec.in_layout, widths)
            cout = rec.out_channels if rec.out_layout is None else self.kept_extent(rec.out_layout, widths)
            if rec.kind == "dwconv":
                per_out = 1
            elif rec.kind == "gconv":
                per_out = _div(cin, rec.groups)
            else:
                per_out = cin
            spatial = rec.spatial if rec.spatial_layout is None else rec.spatial * self.kept_extent(rec.spatial_layout, widths)
            total = total + spatial * rec.kernel * per_out * cout
        return total

    def params(self, widths: Mapping[str, Width] | None = None) -> Width:
        """Parameter count at ``widths`` (missing groups: full)."""
        widths = widths or {}
        by_tensor: dict[str, list[SliceSpec]] = {}
        for spec in self.slices:
            by_tensor.setdefault(spec.tensor, []).append(spec)
        total: Width = 0
        for name, shape in self.param_shapes.items():
            sizes: list[Width] = list(shape)
            for spec in by_tensor.get(name, []):
                kept = self.kept_extent(spec.layout, widths)
                sizes[spec.dim] = _div(kept, spec.grouped) if spec.grouped > 1 else kept
            total = total + _prod(sizes)
        return total

    @property
    def full_flops(self) -> int:
        return int(self.flops({}))

    @property
    def full_params(self) -> int:
        return int(self.params({}))

    # display
    def table(self) -> str:
        """A readable table: group id, width, members, divisor, frozen reason."""
        rows = [("group", "width", "members", "div", "status")]
        for g in self.groups.values():
            if not g.members and g.frozen:
                continue  # untracked filler spaces
            status = "prunable" if g.prunable else "frozen: " + "; ".join(g.frozen_reasons[:2])
            rows.append((g.id, str(g.width), str(len(g.members)), str(g.divisor), status))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = []
        for r in rows:
            lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        lines.insert(1, "-" * min(120, sum(widths) + 30))
        n_p = len(self.prunable)
        shown = len(rows) - 1
        lines.append(
            f"{shown} groups: {n_p} prunable, {shown - n_p} frozen; "
            f"{self.full_flops / 1e6:.1f}M MACs, {self.full_params / 1e6:.2f}M params"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def channel_counts(self) -> tuple[int, int]:
        """(prunable, total) conv/linear output channels (each call counted once)."""
        total = prunable = 0
        for rec in self.macs:
            if rec.out_layout is None:
                total += rec.out_channels
                continue
            for seg in rec.out_layout.segs:
                total += seg.length
                if self._space_group[seg.space].prunable:
                    prunable += seg.length
        return prunable, total

    def prunable_share(self) -> float:
        """Share of conv/linear output channels that belong to prunable groups."""
        prunable, total = self.channel_counts()
        return prunable / total if total else 0.0

def _div(value: Width, by: int) -> Width:
    return value // by if isinstance(value, int) else value / by


def _prod(values) -> Width:
    out: Width = 1
    for v in values:
        out = out * v
    return out
