"""Rules for the ATen ops that mix channels: convolutions and dense products.

A conv or dense op whose weight is a parameter read as it is opens a new channel
space (its output channels, the group id is the weight's owner module) and
CONSUMES its input channels: the input side of the weight is sliced with the input
layout and the instrumented graph masks that input. Depthwise convs carry the input
space through; grouped convs keep both sides with a divisor. A transposed conv with one group
prunes both sides too (its weight is ``(in, out, *kernel)``); a grouped one freezes. A weight that
is computed (weight standardization, a reshaped parameter) freezes both sides.
"""
from __future__ import annotations

import math

import torch

from torch import nn
from torch.nn.utils import prune

from ..records import ConstantEntry, ConstantSite, MacRecord, MaskSite, ModuleEdit, SliceSpec
from ..layout import Layout, ParamRef, iter_paramrefs
from .common import Call, RuleContext, arg_index, is_whole_param, layout_of, module_path, opaque_like, pin_refs, unknown


def _producer_id(ctx: RuleContext, weight: str) -> str:
    module, _ = ctx.owner(weight)
    return module or weight


def _per_image(ctx: RuleContext, numel: int, channels: int, node=None) -> int:
    """Output elements per channel for one image. An output with no dim that depends on
    the (symbolic) batch in the exported graph runs once per forward (XCiT's positional
    encoding): it counts once, as at batch 1. The batch may sit in any dim (an
    ``nn.MultiheadAttention`` works on ``(tokens, N, E)``)."""
    val = node.meta.get("val") if node is not None else None
    if isinstance(val, torch.Tensor) and all(isinstance(d, int) for d in val.shape):
        return numel // channels
    return numel // channels // ctx.batch


def _edit(ctx: RuleContext, weight: str, kinds: tuple[type, ...], kind: str, layout: Layout | None = None) -> None:
    """Record that the weight's owner module's attributes must follow its slices."""
    name, module = ctx.owner(weight)
    if isinstance(module, kinds) and name:
        ctx.b.add_edit(ModuleEdit(name, kind, layout))


def _computed_weight_hint(ctx: RuleContext, call: Call) -> str:
    """What computes the weight, when a hook of the calling module is torch.nn.utils.prune's
    (``weight = weight_orig * weight_mask``): how to make it a plain weight again."""
    module = ctx.modules.get(module_path(call.node))
    hooks = getattr(module, "_forward_pre_hooks", {}).values() if module is not None else ()
    names = [h._tensor_name for h in hooks if isinstance(h, prune.BasePruningMethod)]
    if names:
        return (f" (a torch.nn.utils.prune mask: torch.nn.utils.prune.remove(module, '{names[0]}') "
                "makes it a plain parameter that can be pruned)")
    return ""


def _input_layout(ctx: RuleContext, call: Call, xi, cdim: int, what: str) -> Layout | None:
    """The channel space a convolution consumes (its input's, on dim ``cdim``), or None: a
    parameter read as the input is pinned, a space on another dim freezes (the kernel slides
    over it)."""
    lin = layout_of(xi)
    if isinstance(xi, ParamRef):
        ctx.b.pin(xi.target, f"the input of a {what} {ctx.where(call)}")
    if lin is not None and lin.dim != cdim:
        ctx.b.freeze(lin, f"{what} {ctx.where(call)} slides over the channel dimension")
        lin = None
    return lin


def conv(ctx: RuleContext, call: Call):
    x, xi, w, wi = call.v["input"], call.i["input"], call.v["weight"], call.i["weight"]
    if call.v.get("transposed"):
        return transposed_conv(ctx, call)
    if not is_whole_param(wi, w):
        return _computed_weight_conv(ctx, call, x, w)
    groups = int(call.v["groups"])
    out_ch, in_ch = w.shape[0], w.shape[1] * groups
    cdim = x.ndim - (w.ndim - 2) - 1
    lin = _input_layout(ctx, call, xi, cdim, "convolution")
    if lin is not None and lin.block != 1 and groups > 1:
        ctx.b.freeze(lin, f"grouped convolution {ctx.where(call)} reads flattened channels")
        lin = None
    gid = _producer_id(ctx, wi.target)
    spatial = _per_image(ctx, call.result.numel(), out_ch, call.node)
    kernel = math.prod(w.shape[2:])
    convs = (nn.modules.conv._ConvNd,)
    if groups > 1 and groups == in_ch == out_ch:  # depthwise: output space == input space
        if lin is None:
            out = ctx.b.producer_layout(gid, out_ch, cdim)
            ctx.b.freeze(out, f"depthwise convolution {ctx.where(call)} has untracked input channels")
        else:
            out = lin
        _slice_out(ctx, call, out, "dw")
        _edit(ctx, wi.target, convs, "dwconv")
        ctx.b.constant_sites.append(ConstantSite(ctx.tag, call.node.name, "literal", (ConstantEntry(arg_index(call, "groups"), None, out),)))
        if ctx.tag == "eval":
            ctx.b.macs.append(MacRecord(gid, "dwconv", spatial, kernel, groups, in_ch, out_ch, None, out))
        return out
    out = ctx.b.producer_layout(gid, out_ch, cdim)
    kind = "conv"
    if groups > 1:
        kind = "gconv"
        if w.shape[1] == 1:  # depthwise with a channel multiplier: out j reads in j // k
            reason = f"convolution {ctx.where(call)} has a depthwise channel multiplier"
            ctx.b.freeze(out, reason)
            if lin is not None:
                ctx.b.freeze(lin, reason)
            lin = None
        ctx.b.add_conv_groups(out, groups)
        if lin is not None and not ctx.b.add_conv_groups(lin, groups):
            lin = None
    if lin is not None:
        ctx.b.add_slice(SliceSpec(wi.target, 1, lin, "in", grouped=groups if groups > 1 else 1))
        ctx.b.mask_sites.append(MaskSite(ctx.tag, call.node.name, 0, lin, "consumer"))
    _slice_out(ctx, call, out, "out")
    _edit(ctx, wi.target, convs, "conv")
    if ctx.tag == "eval":
        ctx.b.macs.append(MacRecord(gid, kind, spatial, kernel, groups, in_ch, out_ch, lin, out))
    return out


def transposed_conv(ctx: RuleContext, call: Call):
    """A transposed convolution (``aten.conv_transpose{1,2,3}d``, ``convolution(transposed=True)``):
    its weight is ``(in, out / groups, *kernel)``, so the input channels are weight dim 0 and the
    output channels weight dim 1. With one group and a parameter weight it consumes its input and
    opens its output space like a convolution; grouped or with a computed weight, both sides
    freeze. MACs per image: ``input elements per channel * kernel * in * out / groups`` (every
    input element meets ``out / groups`` filters of ``kernel`` taps), counted either way."""
    x, xi, w, wi = call.v["input"], call.i["input"], call.v["weight"], call.i["weight"]
    groups = int(call.v.get("groups") or 1)
    in_ch, out_ch = w.shape[0], w.shape[1] * groups
    cdim = x.ndim - (w.ndim - 2) - 1
    kernel = math.prod(w.shape[2:])
    owner = _producer_id(ctx, wi.target) if isinstance(wi, ParamRef) else module_path(call.node)
    spatial_in = _per_image(ctx, x.numel(), in_ch, call.node)
    if groups > 1 or not is_whole_param(wi, w):
        why = "grouped transposed convolution" if groups > 1 else "transposed convolution with a computed weight"
        out = unknown(ctx, call, f"{why} aten.{call.op}{_computed_weight_hint(ctx, call)}")
        if ctx.tag == "eval":
            ctx.b.macs.append(MacRecord(owner, "gconv" if groups > 1 else "conv", spatial_in, kernel, groups,
                                        in_ch, out_ch, None, None))
        return out
    lin = _input_layout(ctx, call, xi, cdim, "transposed convolution")
    out = ctx.b.producer_layout(owner, out_ch, cdim)
    if lin is not None:
        ctx.b.add_slice(SliceSpec(wi.target, 0, lin, "in"))
        ctx.b.mask_sites.append(MaskSite(ctx.tag, call.node.name, 0, lin, "consumer"))
    _slice_out(ctx, call, out, "out", weight_dim=1)
    _edit(ctx, wi.target, (nn.modules.conv._ConvTransposeNd,), "tconv")
    if ctx.tag == "eval":  # the conv formula with the INPUT's spatial size
        ctx.b.macs.append(MacRecord(owner, "conv", spatial_in, kernel, 1, in_ch, out_ch, lin, out))
    return out


def _computed_weight_conv(ctx: RuleContext, call: Call, x, w):
    """A convolution whose weight is computed in forward (weight standardization:
    StdConv2d, ScaledStdConv2d normalize each filter over its input channels, so
    pruning inputs changes every filter). Both sides freeze; its output is a frozen
    space named after the module, and its MACs are counted."""
    hint = _computed_weight_hint(ctx, call) or " (e.g. weight standardization)"
    reason = f"convolution aten.{call.op} {ctx.where(call)} has a computed weight{hint}"
    unknown(ctx, call, f"convolution aten.{call.op} with a computed weight{hint}")
    groups = int(call.v["groups"])
    out_ch, in_ch = w.shape[0], w.shape[1] * groups
    cdim = x.ndim - (w.ndim - 2) - 1
    out = ctx.b.producer_layout(module_path(call.node), out_ch, cdim)
    ctx.b.freeze(out, reason)
    if ctx.tag == "eval":
        kind = "conv" if groups == 1 else ("dwconv" if groups == in_ch == out_ch else "gconv")
        ctx.b.macs.append(MacRecord(module_path(call.node), kind, _per_image(ctx, call.result.numel(), out_ch, call.node),
                                    math.prod(w.shape[2:]), groups, in_ch, out_ch, None, out))
    return out


def _slice_out(ctx: RuleContext, call: Call, out: Layout, role: str, weight_dim: int = 0) -> None:
    """The output side: the weight along ``weight_dim`` (a transposed conv's is 1) and the bias;
    a computed bias (not a parameter read as it is) freezes ``out``."""
    ctx.b.add_slice(SliceSpec(call.i["weight"].target, weight_dim, out, role))
    bias = call.i.get("bias")
    if call.v.get("bias") is not None and is_whole_param(bias, call.v["bias"]):
        ctx.b.add_slice(SliceSpec(bias.target, 0, out, role))
    elif call.v.get("bias") is not None:
        ctx.b.freeze(out, f"the bias of {ctx.where(call)} is computed")


def _dense(ctx: RuleContext, call: Call, x, xi, w, wi: ParamRef, in_dim: int, out_dim: int, bias_name: str | None):
    """``x @ W``: dim ``in_dim`` of the weight tensor ``w`` is contracted, ``out_dim`` produces.

    ``wi.dims`` maps those tensor dims to the parameter's own dims (a ``.t()`` swaps them).
    """
    wt = wi.target
    out_features, in_features = w.shape[out_dim], w.shape[in_dim]
    result = call.result
    lin = layout_of(xi)
    if isinstance(xi, ParamRef):
        ctx.b.pin(xi.target, f"the input of a dense product {ctx.where(call)}")
    spatial = _per_image(ctx, result.numel(), out_features, call.node)
    gid = _producer_id(ctx, wt)
    if lin is not None and lin.dim != x.ndim - 1:
        # the channels sit on another dim: this product mixes features, not channels
        if ctx.tag == "eval":
            ctx.b.macs.append(MacRecord(gid, "linear", spatial // lin.extent, 1, 1, in_features, out_features,
                                        None, None, spatial_layout=lin))
        return lin
    out = ctx.b.producer_layout(gid, out_features, result.ndim - 1)
    if lin is not None:
        ctx.b.add_slice(SliceSpec(wt, wi.dims[in_dim], lin, "in"))
        ctx.b.mask_sites.append(MaskSite(ctx.tag, call.node.name, arg_index(call, _input_name(call)), lin, "consumer"))
    ctx.b.add_slice(SliceSpec(wt, wi.dims[out_dim], out, "out"))
    if bias_name is not None and call.v.get(bias_name) is not None:
        bias = call.i.get(bias_name)
        if isinstance(bias, ParamRef) and bias.dims == (0,):
            ctx.b.add_slice(SliceSpec(bias.target, 0, out, "out"))
        else:
            ctx.b.freeze(out, f"the bias of {ctx.where(call)} is computed")
    _edit(ctx, wt, (nn.Linear,), "linear")
    if ctx.tag == "eval":
        ctx.b.macs.append(MacRecord(gid, "linear", spatial, 1, 1, in_features, out_features, lin, out))
    return out


# a product's two multiplied arguments (not an addmm's or linear's bias), by op
_OPERANDS = {"linear": ("input", "weight"), "addmm": ("mat1", "mat2"), "mm": ("self", "mat2"),
             "bmm": ("self", "mat2"), "matmul": ("self", "other")}


def _input_name(call: Call) -> str:
    return _OPERANDS[call.op][0]


def _unsupported_product(ctx: RuleContext, call: Call, what: str):
    """A product the rules do not prune through: its channels freeze (:func:`unknown`), and
    when an operand is a parameter or buffer its MACs still count, at full width, as the
    counter counts them (``result.numel() * contracted size`` per image; an einsum: the
    product of the sizes of all its indices)."""
    refs = list(iter_paramrefs(call.i))
    result = call.result
    if ctx.tag == "eval" and isinstance(result, torch.Tensor) and result.numel() \
            and (refs or any(ctx.holds(v) for v in _operands(call))):  # a view of a parameter counts too
        macs = _einsum_macs(call) if call.op == "einsum" else result.numel() * _contracted(call)
        if macs:
            owner = _producer_id(ctx, refs[0].target) if refs else module_path(call.node)
            ctx.b.macs.append(MacRecord(owner, "linear", _per_image(ctx, macs, 1, call.node), 1, 1, 1, 1, None, None))
    pin_refs(ctx, call, "multiplied by a tensor")
    return unknown(ctx, call, what)


def _operands(call: Call) -> list:
    """The multiplied tensors of a product (not an addmm's or linear's bias)."""
    if call.op == "einsum":
        return list(call.v.get("tensors") or [])
    return [call.v.get(name) for name in _OPERANDS.get(call.op, ())]


def _contracted(call: Call) -> int:
    """Size of the contracted dim of a product op: its first matrix operand's last dim."""
    first = call.v.get("input", call.v.get("mat1", call.v.get("batch1", call.v.get("self"))))
    return int(first.shape[-1]) if isinstance(first, torch.Tensor) and first.ndim else 0


def _einsum_macs(call: Call) -> int:
    """``prod`` of the sizes of every index of ``einsum(equation, operands)`` (batch included)."""
    equation = str(call.v["equation"]).replace(" ", "")
    inputs = equation.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for spec, operand in zip(inputs, call.v["tensors"]):
        if "." in spec or len(spec) != operand.ndim:
            return 0  # ellipsis: not counted here
        sizes.update(zip(spec, (int(d) for d in operand.shape)))
    return math.prod(sizes.values())


def recurrent(ctx: RuleContext, call: Call):
    """``aten.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``: not pruned through (every channel
    space among the inputs freezes, :func:`unknown`), and counted as the counter counts them:
    each 2-d weight matrix of ``params`` once per token of ``input`` (``(T, N, in)``,
    ``(N, T, in)`` or unbatched ``(T, in)``), ``tokens * W.numel()`` MACs per image. The packed
    ``.data`` overload is frozen and not counted."""
    x, weights = call.v.get("input"), call.v.get("params")
    if ctx.tag == "eval" and isinstance(x, torch.Tensor) and x.ndim >= 2 and isinstance(weights, (list, tuple)):
        macs = x.numel() // max(1, x.shape[-1]) * sum(w.numel() for w in weights
                                                      if isinstance(w, torch.Tensor) and w.ndim == 2)
        source = call.node.args[0] if call.node.args and hasattr(call.node.args[0], "meta") else None
        if macs:
            ctx.b.macs.append(MacRecord(module_path(call.node), "linear", _per_image(ctx, macs, 1, source),
                                        1, 1, 1, 1, None, None))
    return unknown(ctx, call)


def linear(ctx: RuleContext, call: Call):
    x, xi, w, wi = call.v["input"], call.i["input"], call.v["weight"], call.i["weight"]
    if not is_whole_param(wi, w) or w.ndim != 2:
        return _unsupported_product(ctx, call, f"linear with a computed weight{_computed_weight_hint(ctx, call)}")
    return _dense(ctx, call, x, xi, w, wi, in_dim=1, out_dim=0, bias_name="bias")


def matmul(ctx: RuleContext, call: Call):
    """``mm`` / ``matmul`` / ``bmm`` / ``addmm``: a parameter on the right acts as a linear weight."""
    left, right = _OPERANDS[call.op]
    x, xi, w, wi = call.v[left], call.i[left], call.v[right], call.i[right]
    if isinstance(wi, ParamRef) and w.ndim == 2 and None not in wi.dims and not isinstance(xi, ParamRef):
        if call.op == "addmm" and isinstance(call.i.get("self"), ParamRef) and call.v["self"].ndim != 1:
            return _unsupported_product(ctx, call, "addmm with a 2-d bias")
        bias = "self" if call.op == "addmm" else None
        if call.op == "addmm" and (call.v.get("beta", 1) != 1 or call.v.get("alpha", 1) != 1):
            return _unsupported_product(ctx, call, "addmm with scaling factors")
        return _dense(ctx, call, x, xi, w, wi, in_dim=0, out_dim=1, bias_name=bias)
    viewed = ctx.holds(x) or ctx.holds(w)  # a view of a parameter is no activation
    if call.op != "addmm" and not isinstance(xi, ParamRef) and not isinstance(wi, ParamRef) and x.ndim >= 2 \
            and w.ndim >= 2 and not viewed:
        return _activation_product(ctx, call, x, xi, w, wi)
    what = "with a parameter" if viewed or any(True for _ in iter_paramrefs(call.i)) else "of two activations"
    return _unsupported_product(ctx, call, f"product aten.{call.op} {what}")


def _activation_product(ctx: RuleContext, call: Call, a, ai, b, bi):
    """``a @ b`` of two activations, ``(..., n, k) @ (..., k, m) -> (..., n, m)``.

    A channel dim of ``a``'s rows or ``b``'s columns passes through to the result; one in
    the contracted ``k`` couples with the other side's ``k`` (both must be tracked); one in
    a batch dim couples with the other side's batch dim unless that one broadcasts (size 1).
    A result with two channel dims, or a channel dim meeting an untracked one, freezes.
    """
    r = call.result.ndim
    where = ctx.where(call)
    sides = [(a, ai, a.ndim - 2, a.ndim - 1), (b, bi, b.ndim - 1, b.ndim - 2)]  # (tensor, info, kept dim, contracted dim)
    out: list[Layout] = []
    contracted = [isinstance(info, Layout) and info.dim == k for _, info, _, k in sides]
    if any(contracted):
        if not all(contracted) or sides[0][1].extent != sides[1][1].extent:
            for (_, info, _, _), c in zip(sides, contracted):
                if c:
                    ctx.b.freeze(info, f"aten.{call.op} {where} contracts channels with an untracked tensor")
            return opaque_like(call.result)
        ctx.b.unify(ai, bi, f"aten.{call.op} {where}")
        left, right = _OPERANDS[call.op]
        for name, info in ((left, ai), (right, bi)):  # the sum over k must not see pruned channels
            ctx.b.mask_sites.append(MaskSite(ctx.tag, call.node.name, arg_index(call, name), info, "consumer"))
    batch: dict[int, list[Layout]] = {}
    for side, ((t, info, keep, _), c) in enumerate(zip(sides, contracted)):
        if not isinstance(info, Layout) or c:
            continue
        if info.dim == keep:
            out.append(info.at(r - 2 + side))  # a's rows -> dim r-2, b's columns -> dim r-1
        else:
            batch.setdefault(info.dim + (r - t.ndim), []).append(info)
    for dim, infos in batch.items():
        if call.result.shape[dim] == 1:  # a one-channel space (a spatial attention map): nothing to prune
            for lay in infos:
                ctx.b.freeze(lay, f"aten.{call.op} {where} broadcasts a single channel")
            continue
        others = [(t, info) for t, info, _, _ in sides if info not in infos]
        for t, info in others:
            odim = dim - (r - t.ndim)
            if odim < 0 or t.shape[odim] == 1:
                continue  # broadcasts
            if isinstance(info, Layout) and info.dim == odim:
                infos.append(info)
            else:
                for lay in infos:
                    ctx.b.freeze(lay, f"aten.{call.op} {where} meets an untracked batch dimension")
                infos.clear()
        for other in infos[1:]:
            ctx.b.unify(infos[0], other, f"aten.{call.op} {where}")
        if infos:
            out.append(infos[0].at(dim))
    if len(out) > 1:
        for lay in out:
            ctx.b.freeze(lay, f"aten.{call.op} {where} gives a result with two channel dimensions")
        return opaque_like(call.result)
    return out[0] if out else opaque_like(call.result)


def rules() -> dict:
    table = {op: conv for op in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution")}
    table.update({"linear": linear, "addmm": matmul, "mm": matmul, "matmul": matmul, "bmm": matmul})
    table["einsum"] = lambda ctx, call: _unsupported_product(ctx, call, "op aten.einsum")
    table.update({op: recurrent for op in ("lstm", "gru", "rnn_tanh", "rnn_relu")})
    table.update({op: transposed_conv for op in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")})
    return table

