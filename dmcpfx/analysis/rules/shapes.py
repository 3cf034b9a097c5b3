"""Rules for ATen ops that move, join or cut dims: views, permutes, concat, split, slice.

A reshape keeps the channels trackable when they stay together in one output dim
(a flatten of ``C x H x W`` into features gives a block of ``H*W`` per channel);
one that splits or merges them apart (a channel shuffle, attention heads) freezes.
Concat along channels makes a layout of segments; split / chunk / slice / narrow
along channels cut the spaces into sub-spaces and the pieces keep their own
channels. Literal sizes that count channels are recorded as constant sites so the
GraphModule fallback can rewrite them.
"""
from __future__ import annotations

import math

import torch

from ..records import ConstantEntry, ConstantSite
from ..layout import OPAQUE, Layout, ParamRef, Seg
from .common import Call, RuleContext, norm_dim, opaque_like, unknown
from .elementwise import pointwise_operands

_INT_MAX = 2 ** 62


def reshape_layout(in_shape, out_shape, layout: Layout, static: tuple[bool, ...] | None = None) -> Layout | None:
    """Where the channel dim of ``layout`` lands after a reshape (element order kept).

    The channels stay trackable if some output dim ``o`` holds the whole channel dim:
    it starts at or before it (the product ``before`` of the output dims ahead of ``o``
    divides the product ``pre`` of the input dims ahead of the channel dim) and its
    extent is a multiple of ``outer * channels`` with ``outer = pre / before``. Then
    ``o`` holds the channel segments ``outer`` times over (Swin's patch merging folds
    ``2 x 2 x C`` into ``4C``), each channel a block of ``extent / (outer * channels)``
    consecutive elements (a flatten of ``C x H x W`` gives a block of ``H*W``).
    ``static[o]``: output dim ``o`` has a fixed size in the exported graph; a dim that
    folds several copies of the channels must be (it must not fold in the batch).
    Otherwise (the reshape splits channels apart) returns None.
    """
    c = layout.dim
    pre = math.prod(in_shape[:c])
    ch = layout.channels
    for o in range(len(out_shape)):
        before = math.prod(out_shape[:o])
        if before > pre:
            break
        if before == 0 or pre % before:
            continue
        outer, extent = pre // before, out_shape[o]
        fixed = static is not None and static[o]
        if extent > 0 and extent % (outer * ch) == 0 and (outer == 1 or (fixed and extent == outer * ch)):
            return Layout(dim=o, segs=layout.segs * outer, block=extent // (outer * ch))
    return None


def _reshape_paramref(in_shape, out_shape, ref: ParamRef) -> ParamRef | None:
    """Follow the non-singleton dims of a parameter view through a reshape."""
    dims: list[int | None] = [None] * len(out_shape)
    for t, pd in enumerate(ref.dims):
        if pd is None or in_shape[t] == 1:
            continue
        moved = reshape_layout(in_shape, out_shape, Layout(dim=t, segs=(Seg(-1, 0, in_shape[t]),)))
        if moved is None or moved.block != 1 or len(moved.segs) != 1:
            return None
        dims[moved.dim] = pd
    return ParamRef(ref.target, tuple(dims))


def _param_view_literals(ctx: RuleContext, call: Call, after: ParamRef) -> None:
    """A parameter viewed with its channel count as a literal (timm's ``Scale``:
    ``scale.view(320, 1, 1)``): recorded so that a rewrite follows the parameter's slice."""
    if call.op not in ("view", "reshape", "_unsafe_view"):
        return
    sizes = call.node.args[1] if len(call.node.args) > 1 else None
    if not isinstance(sizes, (list, tuple)):
        return
    for index, pd in enumerate(after.dims):
        if pd is None or index >= len(sizes) or not isinstance(sizes[index], int) or sizes[index] == -1:
            continue
        ctx.b.param_view_literals.append((ctx.tag, call.node.name, 1, index, after.target, pd))


def reshape(ctx: RuleContext, call: Call):
    x, xi, result = call.v["self"], call.i["self"], call.result
    if isinstance(xi, ParamRef):
        moved = _reshape_paramref(tuple(x.shape), tuple(result.shape), xi)
        if moved is None:
            ctx.b.pin(xi.target, f"reshaped by aten.{call.op} {ctx.where(call)}")
            return OPAQUE
        _param_view_literals(ctx, call, moved)
        return moved
    if not isinstance(xi, Layout):
        return opaque_like(result)
    val = call.node.meta.get("val")
    static = tuple(isinstance(d, int) for d in val.shape) if isinstance(val, torch.Tensor) else None
    out = reshape_layout(tuple(x.shape), tuple(result.shape), xi, static)
    if out is None:
        ctx.b.freeze(xi, f"aten.{call.op} {ctx.where(call)} splits or merges the channel dimension")
        return OPAQUE
    _literal_size(ctx, call, out)
    return out


def _literal_size(ctx: RuleContext, call: Call, out: Layout) -> None:
    """Record a literal channel count in a view / reshape / unflatten size list."""
    if call.op == "unflatten":
        arg, index = 2, out.dim - norm_dim(int(call.v["dim"]), call.v["self"].ndim)
    elif call.op in ("view", "reshape", "_unsafe_view", "expand"):
        arg, index = 1, out.dim
    else:
        return
    sizes = call.node.args[arg] if len(call.node.args) > arg else None
    if isinstance(sizes, (list, tuple)) and 0 <= index < len(sizes):
        literal = sizes[index]
        if isinstance(literal, int) and literal != -1:
            ctx.b.constant_sites.append(ConstantSite(ctx.tag, call.node.name, "literal", (ConstantEntry(arg, index, out),)))


def expand(ctx: RuleContext, call: Call):
    x, xi, result = call.v["self"], call.i["self"], call.result
    shift = result.ndim - x.ndim
    if isinstance(xi, ParamRef):
        dims = (None,) * shift + tuple(d if x.shape[t] == result.shape[t + shift] else None for t, d in enumerate(xi.dims))
        return ParamRef(xi.target, dims)
    if isinstance(xi, Layout):
        if result.shape[xi.dim + shift] != x.shape[xi.dim]:
            ctx.b.freeze(xi, f"aten.{call.op} {ctx.where(call)} repeats channels")
            return OPAQUE
        out = xi.at(xi.dim + shift)
        _literal_size(ctx, call, out)
        return out
    return opaque_like(result)


def expand_as(ctx: RuleContext, call: Call):
    """``self.expand_as(other)``: the result takes ``other``'s shape, so where ``other`` has
    tracked channels the op is a broadcast of ``self`` against them (:func:`pointwise_operands`:
    coupled, sliced along with them, or frozen); where it has none, the result's extent is
    fixed and a tracked ``self`` that it repeats or fixes is frozen."""
    x, xi, other, oi, result = call.v["self"], call.i["self"], call.v["other"], call.i["other"], call.result
    if isinstance(oi, Layout):
        return pointwise_operands(ctx, call, [(x, xi), (other, oi)], result)
    shift = result.ndim - x.ndim
    if isinstance(xi, ParamRef):
        dims = (None,) * shift + tuple(d if x.shape[t] == result.shape[t + shift] else None for t, d in enumerate(xi.dims))
        return ParamRef(xi.target, dims)
    if isinstance(xi, Layout):
        why = "repeats channels" if result.shape[xi.dim + shift] != x.shape[xi.dim] else "takes its shape from an untracked tensor"
        ctx.b.freeze(xi, f"aten.{call.op} {ctx.where(call)} {why}")
        return OPAQUE
    return opaque_like(result)


def _permutation(call: Call, ndim: int) -> list[int]:
    if call.op == "permute":
        return [norm_dim(int(d), ndim) for d in call.v["dims"]]
    perm = list(range(ndim))
    if call.op == "t" or call.op == "numpy_T":
        return perm[::-1]
    a, b = norm_dim(int(call.v["dim0"]), ndim), norm_dim(int(call.v["dim1"]), ndim)
    perm[a], perm[b] = perm[b], perm[a]
    return perm


def permute(ctx: RuleContext, call: Call):
    x, xi = call.v["self"], call.i["self"]
    perm = _permutation(call, x.ndim)
    if isinstance(xi, Layout):
        return xi.at(perm.index(xi.dim))
    if isinstance(xi, ParamRef):
        return ParamRef(xi.target, tuple(xi.dims[p] for p in perm))
    return opaque_like(call.result)


def cat(ctx: RuleContext, call: Call):
    tensors, infos = list(call.v["tensors"]), list(call.i["tensors"] or [None] * len(call.v["tensors"]))
    layouts = [i for i in infos if isinstance(i, Layout)]
    if not layouts:
        for ref in infos:
            if isinstance(ref, ParamRef):
                ctx.b.pin(ref.target, f"concatenated {ctx.where(call)}")
        return OPAQUE
    dim = norm_dim(int(call.v["dim"]), tensors[0].ndim)
    if len({layout.dim for layout in layouts}) > 1:
        for layout in layouts:
            ctx.b.freeze(layout, f"concat {ctx.where(call)} joins tensors whose channels sit on different dims")
        return OPAQUE
    cdim = layouts[0].dim
    if dim != cdim:
        return pointwise_operands(ctx, call, list(zip(tensors, infos)), call.result)
    block = layouts[0].block
    if any(layout.block != block for layout in layouts):
        for layout in layouts:
            ctx.b.freeze(layout, f"concat {ctx.where(call)} joins channels of different block sizes")
        return OPAQUE
    segs: list[Seg] = []
    for value, info in zip(tensors, infos):
        if isinstance(info, Layout):
            segs.extend(info.segs)
            continue
        extent = value.shape[dim]
        if isinstance(info, ParamRef):
            ctx.b.pin(info.target, f"concatenated along channels {ctx.where(call)}")
        if extent % block:
            for layout in layouts:
                ctx.b.freeze(layout, f"concat {ctx.where(call)} mixes untracked features into channels")
            return OPAQUE
        if extent == 0:
            continue
        sid = ctx.b.new_space(extent // block, None, f"untracked input of {call.node.name}", frozen="untracked tensor")
        segs.append(Seg(sid, 0, extent // block))
    return Layout(dim=cdim, segs=tuple(segs), block=block)


def stack(ctx: RuleContext, call: Call):
    tensors, infos = list(call.v["tensors"]), list(call.i["tensors"] or [None] * len(call.v["tensors"]))
    dim = norm_dim(int(call.v["dim"]), tensors[0].ndim + 1)
    unsqueezed = [(t.unsqueeze(dim), i.at(i.dim + (1 if dim <= i.dim else 0)) if isinstance(i, Layout) else i)
                  for t, i in zip(tensors, infos)]
    if any(isinstance(i, ParamRef) for _, i in unsqueezed):
        return unknown(ctx, call, "stack of parameters")
    return pointwise_operands(ctx, call, unsqueezed, call.result)


def _pieces(ctx: RuleContext, call: Call, xi: Layout, bounds: list[int]) -> list[Layout] | None:
    """Cut ``xi`` at channel offsets ``bounds`` (refining spaces); the layout of each piece."""
    if xi.block != 1:
        ctx.b.freeze(xi, f"aten.{call.op} {ctx.where(call)} cuts flattened channels")
        return None
    layout = ctx.b.cut(xi, bounds[1:-1])
    if layout is None:
        ctx.b.freeze(xi, f"aten.{call.op} {ctx.where(call)} cuts channels that cannot be split into sub-spaces")
        return None
    pieces, offset, segs = [], 0, list(layout.segs)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        mine = []
        while segs and offset < hi:
            seg = segs.pop(0)
            mine.append(seg)
            offset += seg.length
        pieces.append(Layout(dim=xi.dim, segs=tuple(mine)))
    return pieces


def split(ctx: RuleContext, call: Call):
    """split / split_with_sizes / chunk / unbind: pieces along channels get their own sub-spaces."""
    x, xi, result = call.v["self"], call.i["self"], call.result
    if isinstance(xi, ParamRef):
        ctx.b.pin(xi.target, f"split {ctx.where(call)}")
        return opaque_like(result)
    if not isinstance(xi, Layout):
        return opaque_like(result)
    dim = norm_dim(int(call.v.get("dim") or 0), x.ndim)
    if dim != xi.dim:
        new = xi.at(xi.dim - 1) if call.op == "unbind" and dim < xi.dim else xi
        return tuple(new for _ in result)
    if call.op == "unbind":
        ctx.b.freeze(xi, f"unbind {ctx.where(call)} picks single channels")
        return opaque_like(result)
    sizes = [r.shape[dim] for r in result]
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    pieces = _pieces(ctx, call, xi, bounds)
    if pieces is None:
        return opaque_like(result)
    if call.op == "split_with_sizes":
        entries = tuple(ConstantEntry(1, k, p) for k, p in enumerate(pieces))
        ctx.b.constant_sites.append(ConstantSite(ctx.tag, call.node.name, "literal", entries))
    else:
        entries = tuple(ConstantEntry(1, k, p) for k, p in enumerate(pieces))
        ctx.b.constant_sites.append(ConstantSite(ctx.tag, call.node.name, "split", entries))
    return tuple(pieces)


def slice_(ctx: RuleContext, call: Call):
    """slice / narrow along channels: the piece keeps its own sub-space."""
    x, xi = call.v["self"], call.i["self"]
    if isinstance(xi, ParamRef):
        return _slice_paramref(ctx, call, x, xi)
    if not isinstance(xi, Layout):
        return opaque_like(call.result)
    dim = norm_dim(int(call.v["dim"]), x.ndim)
    extent = x.shape[dim]
    start, stop, step = _range(call, extent)
    if dim != xi.dim:
        return xi
    if (start, stop, step) == (0, extent, 1):
        return xi
    if step != 1:
        ctx.b.freeze(xi, f"strided slice {ctx.where(call)} of the channel dimension")
        return OPAQUE
    pieces = _pieces(ctx, call, xi, sorted({0, start, stop, extent}))
    if pieces is None:
        return OPAQUE
    bounds = sorted({0, start, stop, extent})
    before = [p for p, lo in zip(pieces, bounds) if lo < start]
    inside = [p for p, lo in zip(pieces, bounds) if start <= lo < stop]
    prefix = Layout(dim=xi.dim, segs=tuple(s for p in before for s in p.segs))
    piece = Layout(dim=xi.dim, segs=tuple(s for p in inside for s in p.segs))
    if call.op == "slice":
        entries = [ConstantEntry(2, None, prefix)]
        if stop < extent:
            entries.append(ConstantEntry(3, None, Layout(dim=xi.dim, segs=prefix.segs + piece.segs)))
    else:  # narrow(self, dim, start, length)
        entries = [ConstantEntry(2, None, prefix), ConstantEntry(3, None, piece)]
    ctx.b.constant_sites.append(ConstantSite(ctx.tag, call.node.name, "literal", tuple(entries)))
    return piece


def _range(call: Call, extent: int) -> tuple[int, int, int]:
    if call.op == "narrow":
        start = norm_dim(int(call.v["start"]), extent)
        return start, start + int(call.v["length"]), 1
    start = call.v.get("start") or 0
    stop = call.v.get("end")
    stop = extent if stop is None else stop
    start, stop, step = slice(start, stop, call.v.get("step") or 1).indices(extent)
    return start, stop, step


def _slice_paramref(ctx: RuleContext, call: Call, x, xi: ParamRef):
    dim = norm_dim(int(call.v["dim"]), x.ndim)
    if _range(call, x.shape[dim]) == (0, x.shape[dim], 1):
        return xi
    ctx.b.pin(xi.target, f"sliced {ctx.where(call)}")
    return OPAQUE


def select(ctx: RuleContext, call: Call):
    x, xi = call.v["self"], call.i["self"]
    dim = norm_dim(int(call.v["dim"]), x.ndim)
    if isinstance(xi, Layout):
        if dim == xi.dim:
            ctx.b.freeze(xi, f"aten.{call.op} {ctx.where(call)} picks single channels")
            return opaque_like(call.result)
        if call.op == "index_select":
            return xi
        return xi.at(xi.dim - (1 if dim < xi.dim else 0))
    if isinstance(xi, ParamRef):
        if call.op == "select" and x.shape[dim] == 1:
            return ParamRef(xi.target, xi.dims[:dim] + xi.dims[dim + 1:])
        ctx.b.pin(xi.target, f"indexed {ctx.where(call)}")
    return opaque_like(call.result)


def repeat(ctx: RuleContext, call: Call):
    x, xi, result = call.v["self"], call.i["self"], call.result
    if isinstance(xi, Layout):
        shift = result.ndim - x.ndim
        if list(call.v["repeats"])[xi.dim + shift] != 1:
            ctx.b.freeze(xi, f"aten.repeat {ctx.where(call)} repeats channels")
            return OPAQUE
        return xi.at(xi.dim + shift)
    return unknown(ctx, call) if isinstance(xi, ParamRef) else opaque_like(result)


def rules() -> dict:
    table = {op: reshape for op in ("view", "_unsafe_view", "reshape", "flatten", "unflatten", "squeeze",
                                     "unsqueeze", "squeeze_", "unsqueeze_")}
    table.update({"expand": expand, "expand_as": expand_as, "permute": permute, "transpose": permute, "t": permute, "numpy_T": permute,
                  "cat": cat, "concat": cat, "concatenate": cat, "stack": stack, "split": split,
                  "split_with_sizes": split, "chunk": split, "unbind": split, "tensor_split": split,
                  "slice": slice_, "narrow": slice_, "select": select, "index_select": select,
                  "repeat": repeat})
    return table
