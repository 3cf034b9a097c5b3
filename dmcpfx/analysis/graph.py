"""ChannelGraph: the result of channel analysis (DESIGN.md section 2).

The analysis (``dmcpfx.analysis``) fills a :class:`GraphBuilder` with channel
spaces, couplings between them, the tensors to slice and the conv/linear calls to
count; :meth:`GraphBuilder.finalize` turns the coupled spaces into
:class:`Group` objects (networkx connected components) and returns the
:class:`ChannelGraph` that the passes and the budget read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Mapping, Union

import networkx as nx
import torch

from .layout import Layout, Seg

Width = Union[int, torch.Tensor]


# --- records ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceSpec:
    """Slice dimension ``dim`` of tensor ``tensor`` (a qualified parameter/buffer name).

    ``grouped > 1``: the dimension holds the per-group input channels of a grouped
    convolution with that many groups; the kept local indices are the ones kept in
    group 0 (every group keeps the same relative positions).
    """

    tensor: str
    dim: int
    layout: Layout
    role: str
    grouped: int = 1


@dataclass(frozen=True)
class ModuleEdit:
    """A module whose attributes (in/out_channels, num_features, ...) follow its slices."""

    module: str
    kind: str  # conv | dwconv | linear | batchnorm | layernorm | instancenorm | prelu
    layout: Layout | None = None


@dataclass(frozen=True)
class MacRecord:
    """One conv/linear call: MACs = spatial * kernel * (c_in / groups) * c_out.

    ``spatial``: output elements per output channel for ONE image (MACs are per image,
    whatever the batch of the example input);
    ``kernel``: product of the kernel size (1 for linear). ``kind`` is ``conv``,
    ``gconv`` (grouped: c_in / groups), ``dwconv`` (depthwise: c_in / groups == 1)
    or ``linear``. A side whose layout is None keeps its full width.
    """

    module: str
    kind: str
    spatial: int
    kernel: int
    groups: int
    in_channels: int
    out_channels: int
    in_layout: Layout | None
    out_layout: Layout | None


@dataclass(frozen=True)
class MaskSite:
    """Where the instrumented graph masks channels: argument ``arg`` of node ``node``.

    ``kind`` is ``consumer`` (a conv/linear input: multiply by the mask) or
    ``layernorm`` (a LayerNorm over channels: statistics over kept channels only).
    ``graph`` is ``eval`` or ``train`` (which traced graph the node lives in).
    """

    graph: str
    node: str
    arg: int
    layout: Layout
    kind: str


@dataclass(frozen=True)
class ConstantEntry:
    """One literal channel count in a node's arguments.

    ``arg``: the argument index; ``index``: the position inside a list argument (None
    for a scalar argument). After pruning the literal becomes
    ``kept_extent(layout) // divide``.
    """

    arg: int
    index: int | None
    layout: Layout
    divide: int = 1


@dataclass(frozen=True)
class ConstantSite:
    """A node whose arguments hold channel counts as literals (a view size, a split size,
    a depthwise conv's ``groups``, a GroupNorm's ``num_groups``, a LayerNorm's shape).

    ``kind`` is ``literal`` (patch the entries) or ``split`` (a ``split.Tensor`` that
    becomes ``split_with_sizes`` with the entries as sizes).
    """

    graph: str
    node: str
    kind: str
    entries: tuple[ConstantEntry, ...]


@dataclass(frozen=True)
class Member:
    """A module (or parameter) touching a group: role out / in / norm / param."""

    module: str
    role: str
    tensor: str


@dataclass
class Group:
    """A set of channel spaces that keep or lose channel j together.

    ``order`` lists physical channels in Markov order (None: identity, i.e. the
    leading channels are kept); ``divisor``: structural constraint on widths.
    """

    id: str
    width: int
    spaces: list[int]
    divisor: int = 1
    order: list[int] | None = None
    members: list[Member] = field(default_factory=list)
    frozen_reasons: list[str] = field(default_factory=list)

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    @property
    def prunable(self) -> bool:
        return not self.frozen

    def kept_indices(self, width: int) -> torch.Tensor:
        """Physical channel indices kept at ``width``, ascending, shape ``(width,)``."""
        if self.order is None:
            return torch.arange(width)
        return torch.sort(torch.tensor(self.order[:width])).values


# --- the builder -------------------------------------------------------------------------
@dataclass
class _Space:
    width: int
    producer: str | None
    label: str
    frozen: list[str] = field(default_factory=list)
    conv_groups: set[int] = field(default_factory=set)
    norm_block: int = 1  # GroupNorm channels per group: widths keep whole groups


class GraphBuilder:
    """Collects spaces, couplings and records while the analysis walks the graph."""

    def __init__(self) -> None:
        self.spaces: list[_Space] = []
        self.coupling = nx.Graph()
        self.slices: dict[tuple[str, int], SliceSpec] = {}
        self.edits: dict[str, ModuleEdit] = {}
        self.macs: list[MacRecord] = []
        self.mask_sites: list[MaskSite] = []
        self.constant_sites: list[ConstantSite] = []
        self.pinned: dict[str, str] = {}
        self.producer_space: dict[str, int] = {}
        self.children: dict[int, list[int]] = {}  # refined space -> its sub-spaces

    # spaces
    def new_space(self, width: int, producer: str | None, label: str, frozen: str | None = None) -> int:
        sid = len(self.spaces)
        self.spaces.append(_Space(width=width, producer=producer, label=label))
        self.coupling.add_node(sid)
        if frozen:
            self.spaces[sid].frozen.append(frozen)
        return sid

    def producer_layout(self, module: str, width: int, dim: int) -> Layout:
        """Output layout of a producer module; a module called twice reuses its space."""
        sid = self.producer_space.get(module)
        if sid is None or self.spaces[sid].width != width:
            sid = self.new_space(width, module, module)
            self.producer_space.setdefault(module, sid)
        return Layout(dim=dim, segs=(Seg(sid, 0, width),))

    def leaves(self, sid: int) -> list[int]:
        """The leaf spaces a (possibly refined) space is made of, in channel order."""
        kids = self.children.get(sid)
        if not kids:
            return [sid]
        return [leaf for k in kids for leaf in self.leaves(k)]

    def expand(self, layout: Layout) -> Layout:
        """``layout`` with every segment rewritten over leaf spaces."""
        segs: list[Seg] = []
        for seg in layout.segs:
            segs.extend(self._leaf_segs(seg))
        return replace(layout, segs=tuple(segs))

    def _leaf_segs(self, seg: Seg) -> list[Seg]:
        kids = self.children.get(seg.space)
        if not kids:
            return [seg]
        out, offset = [], 0
        for k in kids:
            width = self.spaces[k].width
            lo, hi = max(seg.start, offset), min(seg.stop, offset + width)
            if lo < hi:
                out.extend(self._leaf_segs(Seg(k, lo - offset, hi - offset)))
            offset += width
        return out

    def freeze(self, layout_or_spaces, reason: str) -> None:
        spaces = layout_or_spaces.spaces if isinstance(layout_or_spaces, Layout) else layout_or_spaces
        for parent in spaces:
            for sid in self.leaves(parent):
                if reason not in self.spaces[sid].frozen:
                    self.spaces[sid].frozen.append(reason)

    def is_full(self, seg: Seg) -> bool:
        return seg.start == 0 and seg.stop == self.spaces[seg.space].width

    def add_conv_groups(self, layout: Layout, groups: int) -> bool:
        """Record a grouped-conv constraint; False (and frozen) unless the layout is one whole space."""
        lay = self.expand(layout)
        if len(lay.segs) == 1 and self.is_full(lay.segs[0]):
            self.spaces[lay.segs[0].space].conv_groups.add(groups)
            return True
        self.freeze(lay, f"a grouped conv ({groups} groups) reads several spaces")
        return False

    def add_norm_groups(self, layout: Layout, per_group: int) -> bool:
        """GroupNorm over ``layout``: each segment must hold whole norm groups; False (and frozen) otherwise."""
        lay = self.expand(layout)
        offset = 0
        ok = lay.block == 1
        for seg in lay.segs:
            ok = ok and self.is_full(seg) and offset % per_group == 0 and seg.length % per_group == 0
            offset += seg.length
        if not ok:
            self.freeze(lay, f"GroupNorm groups of {per_group} channels straddle the channel spaces")
            return False
        for seg in lay.segs:
            space = self.spaces[seg.space]
            space.norm_block = math.lcm(space.norm_block, per_group)
        return True

    def _refine(self, sid: int, cuts: list[int]) -> bool:
        """Split leaf ``sid`` (and every space coupled to it) at the interior ``cuts``."""
        component = nx.node_connected_component(self.coupling, sid)
        if any(self.spaces[m].conv_groups or self.spaces[m].norm_block > 1 for m in component):
            return False
        bounds = [0, *cuts, self.spaces[sid].width]
        pieces = list(zip(bounds[:-1], bounds[1:]))
        first: list[int] | None = None
        for member in sorted(component):
            parent = self.spaces[member]
            kids = []
            for lo, hi in pieces:
                kid = self.new_space(hi - lo, parent.producer, f"{parent.label}[{lo}:{hi}]")
                self.spaces[kid].frozen.extend(parent.frozen)
                kids.append(kid)
            self.children[member] = kids
            self.coupling.remove_node(member)
            if first is None:
                first = kids
            else:
                for a, b in zip(first, kids):
                    self.coupling.add_edge(a, b)
        return True

    def cut(self, layout: Layout, cuts) -> Layout | None:
        """``layout`` over leaf spaces, refined so that every channel offset in ``cuts``
        is a segment boundary (split / slice along channels); None when a cut falls
        inside a partial segment or a space that must stay whole."""
        lay = self.expand(layout)
        for _ in range(len(cuts) + 1):
            bounds = _boundaries(lay)
            missing = [c for c in cuts if 0 < c < lay.channels and c not in bounds]
            if not missing:
                return lay
            offset = 0
            for seg in lay.segs:
                if offset < missing[0] < offset + seg.length:
                    if not self.is_full(seg) or not self._refine(seg.space, [missing[0] - offset]):
                        return None
                    break
                offset += seg.length
            lay = self.expand(layout)
        return None

    def unify(self, a: Layout, b: Layout, why: str) -> None:
        """Couple two layouts that must keep the same channels (e.g. both sides of an add).

        When the two sides are cut into segments at different places (``cat([a, b])``
        times an SE gate of one space), whole spaces are refined into sub-spaces at
        the union of the cuts, so that each piece couples with its counterpart.
        """
        for _ in range(8):
            ea, eb = self.expand(a), self.expand(b)
            if ea.block != eb.block or ea.channels != eb.channels:
                self.freeze(ea, f"{why}: channel layouts do not line up")
                self.freeze(eb, f"{why}: channel layouts do not line up")
                return
            cuts_a, cuts_b = _boundaries(ea), _boundaries(eb)
            if cuts_a == cuts_b:
                break
            union = sorted(cuts_a | cuts_b)
            refined = False
            for lay in (ea, eb):
                offset = 0
                for seg in lay.segs:
                    inner = [c - offset for c in union if offset < c < offset + seg.length]
                    if inner:
                        if not self.is_full(seg) or not self._refine(seg.space, inner):
                            reason = f"{why}: channel layouts do not line up"
                            self.freeze(ea, reason)
                            self.freeze(eb, reason)
                            return
                        refined = True
                        break
                    offset += seg.length
                if refined:
                    break
        else:
            self.freeze(self.expand(a), f"{why}: channel layouts do not line up")
            self.freeze(self.expand(b), f"{why}: channel layouts do not line up")
            return
        for sa, sb in zip(ea.segs, eb.segs):
            if sa == sb:
                continue
            if self.is_full(sa) and self.is_full(sb):
                self.coupling.add_edge(sa.space, sb.space)
            else:
                self.freeze([sa.space, sb.space], f"{why}: couples partial channel ranges")

    # records
    def add_slice(self, spec: SliceSpec) -> None:
        key = (spec.tensor, spec.dim)
        old = self.slices.get(key)
        if old is None:
            self.slices[key] = spec
            return
        if old.grouped != spec.grouped:
            self.freeze(old.layout, f"tensor '{spec.tensor}' is used with conflicting groupings")
            self.freeze(spec.layout, f"tensor '{spec.tensor}' is used with conflicting groupings")
            return
        self.unify(old.layout, spec.layout, f"tensor '{spec.tensor}' is shared")

    def add_edit(self, edit: ModuleEdit) -> None:
        self.edits.setdefault(edit.module, edit)

    def pin(self, tensor: str, reason: str) -> None:
        self.pinned.setdefault(tensor, reason)

    # finalize
    def _expand_record(self, rec):
        changes = {}
        for f in fields(rec):
            value = getattr(rec, f.name)
            if isinstance(value, Layout):
                changes[f.name] = self.expand(value)
            elif f.name == "entries":
                changes[f.name] = tuple(replace(e, layout=self.expand(e.layout)) for e in value)
        return replace(rec, **changes) if changes else rec

    def finalize(self, **graph_kwargs) -> "ChannelGraph":
        self.slices = {k: self._expand_record(v) for k, v in self.slices.items()}
        self.edits = {k: self._expand_record(v) for k, v in self.edits.items()}
        self.macs = [self._expand_record(r) for r in self.macs]
        self.mask_sites = [self._expand_record(r) for r in self.mask_sites]
        self.constant_sites = [self._expand_record(r) for r in self.constant_sites]
        for (tensor, _dim), spec in self.slices.items():
            if tensor in self.pinned:
                self.freeze(spec.layout, f"tensor '{tensor}' is {self.pinned[tensor]}")
        groups: list[Group] = []
        space_group: dict[int, Group] = {}
        for comp in sorted(nx.connected_components(self.coupling), key=min):  # leaf spaces only
            sids = sorted(comp)
            widths = {self.spaces[s].width for s in sids}
            named = [s for s in sids if self.spaces[s].producer is not None]
            head = named[0] if named else sids[0]
            gid = self.spaces[head].producer or f"~{self.spaces[head].label}"
            group = Group(id=gid, width=self.spaces[head].width, spaces=sids)
            for s in sids:
                for r in self.spaces[s].frozen:
                    if r not in group.frozen_reasons:
                        group.frozen_reasons.append(r)
            if len(widths) > 1:
                group.frozen_reasons.append(f"coupled spaces have different widths {sorted(widths)}")
            conv_groups = set().union(*(self.spaces[s].conv_groups for s in sids))
            norm_block = math.lcm(*(self.spaces[s].norm_block for s in sids))
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
            groups.append(group)
            for s in sids:
                space_group[s] = group
        # unique ids (a space without a producer could repeat a label)
        seen: dict[str, int] = {}
        for g in groups:
            if g.id in seen:
                seen[g.id] += 1
                g.id = f"{g.id}#{seen[g.id]}"
            else:
                seen[g.id] = 0
        for spec in self.slices.values():
            module = spec.tensor.rsplit(".", 1)[0] if "." in spec.tensor else ""
            for sid in spec.layout.spaces:
                member = Member(module=module, role=spec.role, tensor=spec.tensor)
                grp = space_group[sid]
                if member not in grp.members:
                    grp.members.append(member)
        return ChannelGraph(groups=groups, space_group=space_group, builder=self, **graph_kwargs)


# --- the result ---------------------------------------------------------------------------
class ChannelGraph:
    """Channel groups of a traced model, with what the passes need to act on them.

    Attributes: ``groups`` (id -> :class:`Group`, network order), ``slices``,
    ``edits``, ``macs``, ``mask_sites``, ``constant_sites``, ``graph_modules``
    (``{"eval": gm, "train": gm}``, the same object when both traces agree),
    ``input_shapes``, ``param_shapes`` (qualified name -> shape of every parameter).
    """

    def __init__(self, *, groups, space_group, builder: GraphBuilder, graph_modules, input_shapes, param_shapes, model_name=None):
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
            total = total + rec.spatial * rec.kernel * per_out * cout
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

def _boundaries(layout: Layout) -> set[int]:
    """Interior channel offsets where one segment ends and the next begins."""
    cuts, offset = set(), 0
    for seg in layout.segs[:-1]:
        offset += seg.length
        cuts.add(offset)
    return cuts


def _div(value: Width, by: int) -> Width:
    return value // by if isinstance(value, int) else value / by


def _prod(values) -> Width:
    out: Width = 1
    for v in values:
        out = out * v
    return out
