"""GraphBuilder: collects channel spaces, couplings and records while the analysis walks
the exported graph; :meth:`GraphBuilder.finalize` turns the coupled spaces into
:class:`~.records.Group` objects (networkx connected components) and returns the
:class:`~.graph.ChannelGraph`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import networkx as nx

from .channel_graph import ChannelGraph
from .grouping import build_groups
from .layout import Layout, Seg
from .records import ConstantEntry, ConstantSite, MacRecord, MaskSite, ModuleEdit, SliceSpec, segment_boundaries


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
        #: literal sizes in views of parameters: (graph tag, node, arg, index, tensor, tensor dim),
        #: made constant sites at finalize once the tensor's slice (its layout) is known
        self.param_view_literals: list[tuple[str, str, int, int, str, int]] = []
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
            bounds = segment_boundaries(lay)
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
            cuts_a, cuts_b = segment_boundaries(ea), segment_boundaries(eb)
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
        for tag, node, arg, index, tensor, dim in self.param_view_literals:
            spec = self.slices.get((tensor, dim))
            if spec is not None:  # an unsliced parameter keeps its size: nothing to rewrite
                self.constant_sites.append(ConstantSite(tag, node, "literal", (ConstantEntry(arg, index, spec.layout),)))
        self.slices = {k: self._expand_record(v) for k, v in self.slices.items()}
        self.edits = {k: self._expand_record(v) for k, v in self.edits.items()}
        self.macs = [self._expand_record(r) for r in self.macs]
        self.mask_sites = [self._expand_record(r) for r in self.mask_sites]
        self.constant_sites = [self._expand_record(r) for r in self.constant_sites]
        for (tensor, _dim), spec in self.slices.items():
            if tensor in self.pinned:
                self.freeze(spec.layout, f"tensor '{tensor}' is {self.pinned[tensor]}")
        groups, space_group = build_groups(self.spaces, self.coupling, self.slices)
        return ChannelGraph(groups=groups, space_group=space_group, builder=self, **graph_kwargs)
