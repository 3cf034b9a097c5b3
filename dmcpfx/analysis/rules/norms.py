"""Rules for normalization ops (DESIGN.md section 2).

- batch norm (every ATen form) and instance norm compute per-channel statistics:
  the channel space passes through and their parameters and running buffers are
  sliced with it;
- group norm keeps each group's statistics to itself: prune whole groups (the
  leading ones), ``num_groups`` follows the kept width;
- layer norm over the channel dim only is replaced by a width-aware norm in the
  instrumented graph (statistics over the kept channels); over the channels and
  other dims together, or RMS norm over channels, it freezes.
"""
from __future__ import annotations

from torch import nn

from ..records import ConstantEntry, ConstantSite, MaskSite, ModuleEdit, SliceSpec
from ..layout import Layout, ParamRef
from .common import Call, RuleContext, arg_index, is_whole_param, opaque_like, unknown

_PARAMS = ("weight", "bias", "running_mean", "running_var")


def _input(call: Call):
    return call.v["input"], call.i["input"]


def _affine(ctx: RuleContext, call: Call, names, layout: Layout, role: str) -> bool:
    """Slice each named parameter along dim 0 with ``layout``; False (frozen) if one is computed."""
    refs = []
    for name in names:
        value = call.v.get(name)
        if value is None:
            continue
        info = call.i.get(name)
        if not is_whole_param(info, value) or value.ndim != 1:
            ctx.b.freeze(layout, f"aten.{call.op} {ctx.where(call)} has a computed '{name}'")
            return False
        refs.append(info)
    for ref in refs:
        ctx.b.add_slice(SliceSpec(ref.target, 0, layout, role))
    return True


def _owner_edit(ctx: RuleContext, call: Call, names, kinds, kind: str, layout: Layout) -> None:
    for name in names:
        info = call.i.get(name)
        if isinstance(info, ParamRef):
            module, m = ctx.owner(info.target)
            if module and isinstance(m, kinds):
                ctx.b.add_edit(ModuleEdit(module, kind, layout))
            return


def _untracked(ctx: RuleContext, call: Call, names):
    for name in names:
        info = call.i.get(name)
        if isinstance(info, ParamRef):
            ctx.b.pin(info.target, f"a parameter of aten.{call.op} with untracked input {ctx.where(call)}")
    return opaque_like(call.result)


def per_channel_norm(ctx: RuleContext, call: Call):
    """Batch norm / instance norm: statistics per channel of dim 1."""
    x, xi = _input(call)
    if not isinstance(xi, Layout):
        return _untracked(ctx, call, _PARAMS)
    if xi.dim != 1 or xi.extent != x.shape[1]:
        ctx.b.freeze(xi, f"aten.{call.op} {ctx.where(call)} normalizes over the channel dimension")
        return _result(call, xi)
    if _affine(ctx, call, _PARAMS, xi, "norm"):
        kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
        kind = "instancenorm" if call.op == "instance_norm" else "batchnorm"
        _owner_edit(ctx, call, _PARAMS, kinds, kind, xi)
    return _result(call, xi)


def _result(call: Call, xi):
    if isinstance(call.result, tuple):  # native forms: (output, save_mean, save_invstd, ...)
        return (xi,) + tuple(opaque_like(r) for r in call.result[1:])
    return xi


def group_norm(ctx: RuleContext, call: Call):
    """GroupNorm: prune whole groups of ``C / num_groups`` channels (leading ones kept)."""
    x, xi = _input(call)
    if not isinstance(xi, Layout):
        return _untracked(ctx, call, ("weight", "bias"))
    channels = x.shape[1]
    per_group = channels // int(call.v["num_groups"])
    if xi.dim != 1 or xi.extent != channels:
        ctx.b.freeze(xi, f"GroupNorm {ctx.where(call)} normalizes over the channel dimension")
        return xi
    if ctx.b.add_norm_groups(xi, per_group) and _affine(ctx, call, ("weight", "bias"), xi, "norm"):
        _owner_edit(ctx, call, ("weight", "bias"), (nn.GroupNorm,), "groupnorm", xi)
        entry = ConstantEntry(arg_index(call, "num_groups"), None, xi, divide=per_group)
        ctx.b.constant_sites.append(ConstantSite(ctx.tag, call.node.name, "literal", (entry,)))
    return xi


def layer_norm(ctx: RuleContext, call: Call):
    """LayerNorm over the last ``k`` dims; over channels alone -> a width-aware norm."""
    x, xi = _input(call)
    k = len(call.v["normalized_shape"])
    if not isinstance(xi, Layout):
        return _untracked(ctx, call, ("weight", "bias"))
    if xi.dim < x.ndim - k:
        return xi  # normalizes over other dims: per channel
    if k != 1:
        ctx.b.freeze(xi, f"LayerNorm {ctx.where(call)} normalizes over channels and other dims together")
        return xi
    if not _affine(ctx, call, ("weight", "bias"), xi, "norm"):
        return xi
    _owner_edit(ctx, call, ("weight", "bias"), (nn.LayerNorm,), "layernorm", xi)
    ctx.b.mask_sites.append(MaskSite(ctx.tag, call.node.name, 0, xi, "layernorm"))
    ctx.b.constant_sites.append(ConstantSite(ctx.tag, call.node.name, "literal", (ConstantEntry(arg_index(call, "normalized_shape"), 0, xi),)))
    return xi


def stats_over_dims(ctx: RuleContext, call: Call):
    """RMS norm and other norms whose statistics span the normalized dims: freeze if channels are among them."""
    x, xi = _input(call)
    if isinstance(xi, Layout) and xi.dim >= x.ndim - len(call.v["normalized_shape"]):
        return unknown(ctx, call, f"aten.{call.op} over the channel dimension")
    if not isinstance(xi, Layout):
        return _untracked(ctx, call, ("weight",))
    return xi


def rules() -> dict:
    table = {op: per_channel_norm for op in (
        "batch_norm", "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
        "_native_batch_norm_legit_functional", "cudnn_batch_norm", "miopen_batch_norm", "_batch_norm_impl_index",
        "_batch_norm_with_update", "_batch_norm_no_update", "instance_norm")}
    table.update({"group_norm": group_norm, "layer_norm": layer_norm, "rms_norm": stats_over_dims})
    return table
