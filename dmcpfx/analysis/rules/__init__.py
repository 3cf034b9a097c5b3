"""The ATen rule table (DESIGN.md section 2): one small function per op, keyed by name.

:func:`apply` maps one executed node of an exported graph to the channel info of
its result. ``RULES`` is keyed by ``"op.overload"`` first, then by ``"op"`` (the
overload packet name, e.g. ``conv2d``). An op that is in no table freezes every
channel space among its inputs, naming the op and the module (``nn_module_stack``).
"""
from __future__ import annotations

import operator

import torch
from torch import fx

from ..layout import OPAQUE, ParamRef, iter_layouts, iter_paramrefs
from . import elementwise, layers, norms, shapes
from .common import Call, RuleContext, bind, has_tensor, module_path, opaque_like, unknown

RULES: dict = {}
for _family in (elementwise, layers, norms, shapes):
    RULES.update(_family.rules())

_ATTENTION = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention")
_REASONS = {
    **{op: "attention (heads are not pruned)" for op in _ATTENTION},
    "pixel_shuffle": "pixel_shuffle (moves channels into space)",
    "pixel_unshuffle": "pixel_unshuffle (moves space into channels)",
    "channel_shuffle": "channel shuffle", "native_channel_shuffle": "channel shuffle",
}


def _getitem(ctx: RuleContext, n: fx.Node, args, ainfo, result):
    container, index = args[0], args[1]
    info = ainfo[0]
    if isinstance(info, (tuple, list)) and isinstance(index, int):
        return info[index]
    if isinstance(container, torch.Tensor):
        for layout in iter_layouts(info):
            ctx.b.freeze(layout, f"indexing in module '{module_path(n)}' (node '{n.name}')")
    return opaque_like(result)


def apply(ctx: RuleContext, n: fx.Node, args, kwargs, ainfo, kinfo, result):
    """The info of node ``n``'s result (see :mod:`dmcpfx.analysis.layout`)."""
    if n.op == "placeholder":
        return opaque_like(result)
    if n.op == "get_attr":
        if not isinstance(result, torch.Tensor):
            return None
        if not ctx.owns(str(n.target)):
            return opaque_like(result)  # a constant from outside the model: untracked, never sliced
        return ParamRef(str(n.target), tuple(range(result.ndim)))
    if n.op == "output":
        for layout in iter_layouts(ainfo):
            ctx.b.freeze(layout, "model output")
        for ref in iter_paramrefs(ainfo):
            ctx.b.pin(ref.target, "returned as a model output")
        return None
    if n.op == "call_function" and n.target is operator.getitem:
        return _getitem(ctx, n, args, ainfo, result)
    target = n.target
    if n.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        if not has_tensor(result) and not has_tensor(args):
            return None  # symbolic int arithmetic on the batch size
        call = Call(n, getattr(target, "__name__", str(target)), "", {"args": list(args)}, {"args": list(ainfo)}, result)
        return unknown(ctx, call, f"call of {getattr(target, '__name__', target)}")
    call = bind(n, args, kwargs, ainfo, kinfo, result)
    if call.op in _REASONS:
        return unknown(ctx, call, _REASONS[call.op])
    rule = RULES.get(f"{call.op}.{call.overload}") or RULES.get(call.op)
    if rule is None:
        if not has_tensor(result):
            return None  # sym_size, _assert_*: reads shapes or metadata only
        return unknown(ctx, call)
    return rule(ctx, call)


__all__ = ["RULES", "RuleContext", "apply", "opaque_like", "OPAQUE"]
