"""Rules for per-element and per-channel ATen ops: pointwise math, pooling, reductions.

- pointwise ops (activations, dropout, add / mul / sub / div with broadcasting,
  copies and casts) carry the channel space through and UNIFY the spaces of every
  operand of full channel extent (a residual add, an SE multiply);
- pooling, padding and interpolation act on trailing spatial dims and carry the
  channel space through;
- reductions, softmax, roll and flip keep it unless they act on the channel dim,
  which freezes it.
"""
from __future__ import annotations

import torch

from ..records import SliceSpec
from ..layout import OPAQUE, Layout, ParamRef
from .common import Call, RuleContext, norm_dim, opaque_like

UNARY_OPS = (
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu",
    "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "mish", "mish_", "softplus", "exp",
    "exp_", "log", "log1p", "sqrt", "rsqrt", "abs", "neg", "reciprocal", "square", "sign", "erf", "erfinv",
    "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "clip", "clip_", "floor", "ceil",
    "round", "trunc", "frac", "sin", "cos", "logit", "log_sigmoid", "hardshrink", "softshrink", "threshold",
    "threshold_", "dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout",
    "alpha_dropout_", "feature_alpha_dropout", "feature_alpha_dropout_", "clone", "contiguous", "detach",
    "detach_", "alias", "lift_fresh_copy", "_to_copy", "to", "type_as", "zero_", "fill_", "nan_to_num",
    "native_dropout", "bernoulli", "bernoulli_", "isnan", "isinf", "isfinite", "logical_not", "bitwise_not",
)
BINARY_OPS = (
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "true_divide", "floor_divide",
    "remainder", "fmod", "pow", "pow_", "maximum", "minimum", "max.other", "min.other", "where", "masked_fill",
    "masked_fill_", "copy_", "lerp", "lerp_", "addcmul", "addcmul_", "addcdiv", "addcdiv_", "eq", "ne",
    "lt", "le", "gt", "ge", "logical_and", "logical_or", "bitwise_and", "bitwise_or", "atan2", "hypot",
)
#: trailing dims each pooling / padding / interpolation op acts on (None: all but N and C)
SPATIAL_OPS = {
    "max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "max_pool1d_with_indices": 1,
    "max_pool2d_with_indices": 2, "max_pool3d_with_indices": 3, "avg_pool1d": 1, "avg_pool2d": 2,
    "avg_pool3d": 3, "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3,
    "_adaptive_avg_pool2d": 2, "_adaptive_avg_pool3d": 3, "adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2,
    "adaptive_max_pool3d": 3, "lp_pool1d": 1, "lp_pool2d": 2, "lp_pool3d": 3,
    "upsample_nearest1d": 1, "upsample_nearest2d": 2, "upsample_nearest3d": 3, "_upsample_nearest_exact1d": 1,
    "_upsample_nearest_exact2d": 2, "_upsample_nearest_exact3d": 3, "upsample_linear1d": 1,
    "upsample_bilinear2d": 2, "upsample_bicubic2d": 2, "upsample_trilinear3d": 3, "_upsample_bilinear2d_aa": 2,
    "_upsample_bicubic2d_aa": 2, "reflection_pad1d": 1, "reflection_pad2d": 2, "reflection_pad3d": 3,
    "replication_pad1d": 1, "replication_pad2d": 2, "replication_pad3d": 3, "circular_pad1d": 1,
    "circular_pad2d": 2, "circular_pad3d": 3, "constant_pad_nd": None, "pad": None,
}
REDUCE_OPS = (
    "mean", "sum", "amax", "amin", "var", "std", "var_mean", "std_mean", "logsumexp", "norm",
    "linalg_vector_norm", "argmax", "argmin", "prod", "any", "all", "max.dim", "min.dim", "max.default",
    "min.default",
)
SOFTMAX_OPS = ("softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax", "cumsum", "cumprod")


def pointwise(ctx: RuleContext, call: Call):
    """Elementwise op with broadcasting: operands of full channel extent are coupled."""
    result = call.result
    if isinstance(result, tuple):  # native_dropout: (output, mask), both shaped like the input
        info = pointwise_operands(ctx, call, call.operands, result[0])
        return (info, info)
    if not hasattr(result, "ndim"):
        return None
    return pointwise_operands(ctx, call, call.operands, result)


def pointwise_operands(ctx: RuleContext, call: Call, operands, result):
    out_nd = result.ndim
    layouts = []
    for value, info in operands:
        if isinstance(info, Layout):
            d = info.dim + out_nd - value.ndim
            if value.shape[info.dim] == 1 and result.shape[d] > 1:
                continue  # a broadcast single-channel map (e.g. spatial attention)
            layouts.append(info.at(d))
    if not layouts:
        for _, info in operands:
            if isinstance(info, ParamRef):
                ctx.b.pin(info.target, f"used in elementwise op {ctx.where(call)} without tracked channels")
        return OPAQUE if result.ndim or operands else opaque_like(result)
    if len({layout.dim for layout in layouts}) > 1:
        for layout in layouts:
            ctx.b.freeze(layout, f"elementwise op aten.{call.op} {ctx.where(call)} broadcasts channels against another dim")
        return OPAQUE
    base = layouts[0]
    why = f"elementwise op aten.{call.op} {ctx.where(call)}"
    for other in layouts[1:]:
        ctx.b.unify(base, other, why)
    d = base.dim
    for value, info in operands:
        if isinstance(info, Layout):
            continue
        aligned = d - (out_nd - value.ndim)
        if aligned < 0 or value.shape[aligned] == 1:
            continue
        if isinstance(info, ParamRef) and info.dims[aligned] is not None and value.shape[aligned] == base.extent:
            ctx.b.add_slice(SliceSpec(info.target, info.dims[aligned], base, "param"))
        else:
            ctx.b.freeze(base, f"{why} mixes the channels with an untracked tensor")
            if isinstance(info, ParamRef):
                ctx.b.pin(info.target, f"used in {why}")
    return base


def spatial(ctx: RuleContext, call: Call):
    """Pooling / padding / upsampling over trailing dims: channels pass through."""
    x, xi = call.v["self"] if "self" in call.v else call.v["input"], call.i.get("self", call.i.get("input"))
    k = SPATIAL_OPS[call.op]
    if k is None:
        k = len(call.v["pad"]) // 2
    result = call.result[0] if isinstance(call.result, tuple) else call.result
    if isinstance(xi, Layout):
        if xi.dim >= x.ndim - k and "pad" in call.v and result.ndim == x.ndim:
            pair = x.ndim - 1 - xi.dim  # pad pairs run from the last dim backwards
            if all(int(p) == 0 for p in call.v["pad"][2 * pair:2 * pair + 2]):
                return xi  # channels-last padding of the spatial dims only (Swin)
        if xi.dim >= x.ndim - k or result.ndim != x.ndim:
            ctx.b.freeze(xi, f"aten.{call.op} {ctx.where(call)} pools or pads across the channel dimension")
            return opaque_like(call.result)
        if isinstance(call.result, tuple):  # (values, indices): the indices are per channel too
            return (xi, xi)
        return xi
    if isinstance(xi, ParamRef):
        ctx.b.pin(xi.target, f"pooled by aten.{call.op} {ctx.where(call)}")
    return opaque_like(call.result)


def prelu(ctx: RuleContext, call: Call):
    """``prelu(x, weight)``: ``weight`` (one value, or one per element of dim 1) broadcasts along
    dim 1 of ``x``; coupled like an elementwise product with ``weight`` viewed as ``(1, C, 1, ...)``."""
    x, w = call.v["self"], call.v["weight"]
    xi, wi = call.i.get("self"), call.i.get("weight")
    if not hasattr(x, "ndim") or x.ndim < 2 or w.ndim != 1 or w.numel() not in (1, x.shape[1]):
        return pointwise(ctx, call)  # whatever broadcasting rules apply: the generic coupling
    shape = [1] * x.ndim
    shape[1] = w.numel()
    virtual = torch.empty(shape, device="meta")  # only its shape is read
    if isinstance(wi, ParamRef):
        wi = ParamRef(wi.target, tuple(wi.dims[0] if d == 1 else None for d in range(x.ndim)))
    elif isinstance(wi, Layout):
        wi = wi.at(1)
    return pointwise_operands(ctx, call, [(x, xi), (virtual, wi)], call.result)


#: max-unpooling: trailing spatial dims it scatters into, per op
UNPOOL_OPS = {"max_unpool2d": 2, "max_unpool3d": 3}


def unpool(ctx: RuleContext, call: Call):
    """``max_unpool(values, indices)``: each channel's values go to the positions its own plane of
    indices names, so values and indices share their channels (coupled); anything else (an
    untracked operand, channels among the spatial dims) freezes."""
    x = call.v["self"]
    operands = [call.i.get("self"), call.i.get("indices")]
    layouts = [info for info in operands if isinstance(info, Layout)]
    if not layouts:
        return opaque_like(call.result)
    k = UNPOOL_OPS[call.op]
    if len(layouts) != 2 or any(info.dim >= x.ndim - k for info in layouts) or layouts[0].dim != layouts[1].dim:
        for info in layouts:
            ctx.b.freeze(info, f"aten.{call.op} {ctx.where(call)} pairs these channels with untracked ones")
        return opaque_like(call.result)
    ctx.b.unify(layouts[0], layouts[1], f"aten.{call.op} {ctx.where(call)} (values and their indices)")
    return layouts[0]


def _dims_arg(call: Call, ndim: int) -> list[int] | None:
    dim = call.v.get("dim", call.v.get("dims"))
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [norm_dim(int(d), max(ndim, 1)) for d in dims] or None


def _acting_dims(ctx: RuleContext, call: Call, pinned: str, frozen: str):
    """``(layout, dims)`` of an op acting along ``dims`` of a tracked input; None when the
    input is untracked or the op acts on the channel dim (then frozen, the result opaque)."""
    x, xi = call.v["self"], call.i["self"]
    if isinstance(xi, ParamRef):
        ctx.b.pin(xi.target, f"{pinned} aten.{call.op} {ctx.where(call)}")
        return None
    if not isinstance(xi, Layout):
        return None
    dims = _dims_arg(call, x.ndim)
    if dims is None or xi.dim in dims:
        ctx.b.freeze(xi, frozen.format(op=f"aten.{call.op} {ctx.where(call)}"))
        return None
    return xi, dims


def reduce(ctx: RuleContext, call: Call):
    """Reductions keep the channel space unless they reduce over it."""
    acting = _acting_dims(ctx, call, "reduced by", "reduction {op} over the channel dimension")
    if acting is None:
        return opaque_like(call.result)
    xi, dims = acting
    keepdim = bool(call.v.get("keepdim") or False)
    out = xi if keepdim else xi.at(xi.dim - sum(1 for d in dims if d < xi.dim))
    if isinstance(call.result, tuple):
        return tuple(out for _ in call.result)
    return out


def along_dims(ctx: RuleContext, call: Call):
    """Softmax / cumsum / roll / flip: per channel unless they act along the channel dim."""
    acting = _acting_dims(ctx, call, "used by", "{op} acts across the channel dimension")
    return opaque_like(call.result) if acting is None else acting[0]


#: factories whose result takes a literal size (values independent of the input)
NEW_OPS = ("new_empty", "new_zeros", "new_ones", "new_full", "new_empty_strided")
#: factories whose result has the input's shape (values independent of the input's values)
LIKE_OPS = ("empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like")


def new_tensor(ctx: RuleContext, call: Call):
    """``x.new_zeros(size)`` & co.: a fresh, untracked tensor; ``x`` is only asked for its
    dtype and device (a size that holds the channel count freezes where the result meets
    tracked channels)."""
    return opaque_like(call.result)


def like_tensor(ctx: RuleContext, call: Call):
    """``zeros_like(x)`` & co.: same shape as ``x``, so its channel
    layout (the values do not mix channels)."""
    xi = call.i.get("self", call.i.get("input"))
    return xi if isinstance(xi, Layout) else opaque_like(call.result)


def rules() -> dict:
    table = {op: pointwise for op in UNARY_OPS + BINARY_OPS}
    table.update({op: new_tensor for op in NEW_OPS})
    table.update({op: like_tensor for op in LIKE_OPS})
    table.update({op: spatial for op in SPATIAL_OPS})
    table.update({op: unpool for op in UNPOOL_OPS})
    table["prelu"] = prelu
    table.update({op: reduce for op in REDUCE_OPS})
    table.update({op: along_dims for op in SOFTMAX_OPS + ("roll", "flip")})
    return table
