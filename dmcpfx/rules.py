"""Channel rules for every fx node kind (DESIGN.md section 2).

:class:`Rules.apply` maps one executed node (its real argument values, the infos
of its arguments and its result) to the info of its result, and records couplings,
slices, MAC counts and mask sites in the :class:`~dmcpfx.graph.GraphBuilder`.

The default for anything not listed here is :meth:`Rules.unknown`: freeze every
channel space among the inputs (with the reason) and return an opaque result.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .graph import ConstantSite, GraphBuilder, MacRecord, MaskSite, ModuleEdit, SliceSpec
from .layout import OPAQUE, Layout, ParamRef, Seg, ShapeRef, SizeRef, iter_layouts, iter_paramrefs, iter_sizerefs

# --- op tables ---------------------------------------------------------------------------
_ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
_SPATIAL_MODULES: dict[type, int] = {}
for _name in dir(nn):
    _cls = getattr(nn, _name)
    if isinstance(_cls, type) and issubclass(_cls, nn.Module) and _name[-2:] in ("1d", "2d", "3d"):
        if any(key in _name for key in ("Pool", "Pad")) and "Unpool" not in _name:
            _SPATIAL_MODULES[_cls] = int(_name[-2])
_UPSAMPLE_MODULES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)

_POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
    operator.pow, operator.neg, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.maximum, torch.minimum, torch.where, torch.pow, torch.rsub,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg,
    torch.sqrt, torch.rsqrt, torch.square, torch.clamp, torch.clip, torch.erf, torch.log,
    F.relu, F.relu6, F.elu, F.selu, F.celu, F.leaky_relu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.softsign, F.logsigmoid,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
}
try:  # torchvision wraps stochastic_depth with torch.fx.wrap: a per-sample scale
    from torchvision.ops.stochastic_depth import stochastic_depth as _tv_stochastic_depth

    _POINTWISE_FUNCTIONS.add(_tv_stochastic_depth)
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass

_SPATIAL_FUNCTIONS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
    F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    F.lp_pool1d: 1, F.lp_pool2d: 2, torch.max_pool1d: 1, torch.max_pool2d: 2, torch.max_pool3d: 3,
    torch.avg_pool1d: 1, torch._C._nn.avg_pool2d: 2, torch._C._nn.avg_pool3d: 3,
    torch.adaptive_avg_pool1d: 1, torch._C._nn.adaptive_avg_pool2d: 2,
}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten}
_PERMUTE_FUNCTIONS = {torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.movedim, torch.t}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split, torch.unbind}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp}
_SOFTMAX_FUNCTIONS = {F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax}

_POINTWISE_METHODS = {
    "add", "sub", "mul", "div", "true_divide", "add_", "sub_", "mul_", "div_", "relu", "relu_",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "neg", "abs", "sqrt", "rsqrt", "clamp",
    "clamp_", "clip", "pow", "square", "maximum", "minimum", "hardtanh_", "log",
}
_IDENTITY_METHODS = {
    "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type",
    "type_as", "cpu", "cuda", "requires_grad_",
}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as"}
_PERMUTE_METHODS = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "t"}
_SPLIT_METHODS = {"chunk", "split", "tensor_split", "unbind"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp"}
_SOFTMAX_METHODS = {"softmax", "log_softmax"}
_INT_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.mod,
                   operator.neg, operator.pow, int, math.floor, math.ceil, max, min}
_SHAPE_CONSUMERS = {"view", "reshape", "expand", "unflatten", torch.reshape, torch.unflatten}


def has_tensor(value) -> bool:
    """Whether ``value`` is a tensor or a tuple/list holding one."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return any(has_tensor(v) for v in value)
    return False


def opaque_like(value):
    """OPAQUE for each tensor in ``value`` (keeping tuple structure), None otherwise."""
    if isinstance(value, torch.Tensor):
        return OPAQUE
    if isinstance(value, (tuple, list)) and has_tensor(value):
        return tuple(opaque_like(v) for v in value)
    return None


def _arg(args, kwargs, pos: int, name: str, default=None):
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _name(target) -> str:
    return getattr(target, "__name__", str(target))


# --- reshape algebra ---------------------------------------------------------------------
def reshape_layout(in_shape, out_shape, layout: Layout) -> Layout | None:
    """Where the channel dim of ``layout`` lands after a reshape (element order kept).

    The channels stay trackable if some output dim ``o`` starts exactly where the
    channel dim started (same product of the dims before it) and its extent is a
    multiple of the channel count: then it holds the channels with a new block size
    (flatten of ``C x H x W`` gives block ``H*W``). Otherwise (the reshape splits
    channels apart, as a channel shuffle does) returns None.
    """
    c = layout.dim
    pre = math.prod(in_shape[:c])
    ch = layout.channels
    for o in range(len(out_shape)):
        if math.prod(out_shape[:o]) != pre:
            if math.prod(out_shape[:o]) > pre:
                break
            continue
        extent = out_shape[o]
        if extent > 0 and extent % ch == 0:
            return Layout(dim=o, segs=layout.segs, block=extent // ch)
    return None


def _reshape_paramref(in_shape, out_shape, ref: ParamRef) -> ParamRef | None:
    """Follow the non-singleton dims of a parameter view through a reshape."""
    dims: list[int | None] = [None] * len(out_shape)
    for t, pd in enumerate(ref.dims):
        if pd is None or in_shape[t] == 1:
            continue
        moved = reshape_layout(in_shape, out_shape, Layout(dim=t, segs=(Seg(-1, 0, in_shape[t]),)))
        if moved is None or moved.block != 1:
            return None
        dims[moved.dim] = pd
    return ParamRef(ref.target, tuple(dims))


def _index_paramref(container: torch.Tensor, items, ref: ParamRef) -> ParamRef | None:
    """Follow a parameter through basic indexing that only adds dims or takes full slices."""
    if any(not (i is None or i is Ellipsis or isinstance(i, slice)) for i in items):
        return None
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    dims: list[int | None] = []
    t = 0
    for item in items:
        if item is None:
            dims.append(None)
        elif item is Ellipsis:
            skip = container.ndim - n_real
            dims.extend(ref.dims[t:t + skip])
            t += skip
        else:
            size = container.shape[t]
            if range(*item.indices(size)) != range(size):
                return None
            dims.append(ref.dims[t])
            t += 1
    dims.extend(ref.dims[t:])
    return ParamRef(ref.target, tuple(dims))


def _permutation(method: str, args, kwargs, ndim: int) -> list[int] | None:
    """The output->input dim permutation of permute/transpose/movedim/t calls."""
    perm = list(range(ndim))
    if method == "permute":
        rest = list(args[1:])
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
            rest = list(rest[0])
        dims = rest or list(kwargs.get("dims", ()))
        return [_norm_dim(int(d), ndim) for d in dims]
    if method in ("transpose", "swapaxes", "swapdims"):
        a = _norm_dim(int(_arg(args, kwargs, 1, "dim0")), ndim)
        b = _norm_dim(int(_arg(args, kwargs, 2, "dim1")), ndim)
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    if method == "t":
        return perm[::-1]
    if method == "movedim":
        src = _arg(args, kwargs, 1, "source")
        dst = _arg(args, kwargs, 2, "destination")
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src = [_norm_dim(s, ndim) for s in src]
        dst = [_norm_dim(d, ndim) for d in dst]
        rest = [d for d in range(ndim) if d not in src]
        out = [None] * ndim
        for s, d in zip(src, dst):
            out[d] = s
        it = iter(rest)
        return [o if o is not None else next(it) for o in out]
    return None


class Rules:
    """The rule set, bound to one traced graph and the shared builder."""

    def __init__(self, gm: fx.GraphModule, builder: GraphBuilder, tag: str, root: nn.Module):
        self.gm = gm
        self.b = builder
        self.tag = tag
        self.modules = dict(gm.named_modules())
        self.root_modules = dict(root.named_modules())  # the traced model itself (owners of get_attr tensors)

    # --- dispatch -----------------------------------------------------------------------
    def apply(self, n: fx.Node, args, kwargs, ainfo, kinfo, result) -> Any:
        refs = list(iter_sizerefs((ainfo, kinfo)))
        if refs:
            derived = self.size_rule(n, args, ainfo, refs)
            if derived is not None:
                return derived or None
        shape_read = self.shape_read(n, args, kwargs, ainfo)
        if shape_read is not None:
            return shape_read or None
        return self._apply(n, args, kwargs, ainfo, kinfo, result)

    # --- channel counts read from shapes -----------------------------------------------
    def shape_read(self, n, args, kwargs, ainfo):
        """``x.shape`` / ``x.size()`` / ``x.size(c)`` / ``x.numel()`` of a tracked tensor."""
        if not args or not isinstance(ainfo[0], Layout) or not isinstance(args[0], torch.Tensor):
            return None
        layout, x = ainfo[0], args[0]
        if n.op == "call_function" and n.target is getattr and args[1] == "shape":
            return ShapeRef(layout, x.ndim)
        if n.op == "call_method" and n.target == "size":
            dim = _arg(args, kwargs, 1, "dim")
            if dim is None:
                return ShapeRef(layout, x.ndim)
            return SizeRef((layout,)) if _norm_dim(dim, x.ndim) == layout.dim else False
        if n.op == "call_method" and n.target == "numel":
            return SizeRef((layout,))
        return None

    def size_rule(self, n, args, ainfo, refs):
        """Propagate channel counts through int arithmetic; freeze other uses.

        A count may only shape the tensor it was read from (``x.view(n, c, -1)``);
        used anywhere else (``other.reshape(b, c)``, ``torch.zeros(c)``) it would keep
        its old value after pruning, so the channels it counts are frozen.
        """
        if n.op == "call_function" and n.target is operator.getitem and isinstance(ainfo[0], ShapeRef):
            shape, index = ainfo[0], args[1]
            if isinstance(index, int):
                return SizeRef((shape.layout,)) if _norm_dim(index, shape.ndim) == shape.layout.dim else False
            if isinstance(index, slice) and shape.layout.dim not in range(shape.ndim)[index]:
                return False  # e.g. x.shape[-2:] for the spatial size
            self.b.freeze(shape.layout, f"shape slice '{n.name}' reads the channel count")
            return False
        layouts = [lay for r in refs for lay in ((r.layout,) if isinstance(r, ShapeRef) else r.layouts)]
        target = n.target
        if n.op == "call_function" and target in _INT_ARITHMETIC and not has_tensor(args):
            return SizeRef(tuple(layouts))
        if n.op in ("call_method", "call_function") and target in _SHAPE_CONSUMERS and args and isinstance(ainfo[0], Layout):
            own = ainfo[0].spaces
            for lay in layouts:
                if lay.spaces != own:
                    self.b.freeze(lay, f"its channel count shapes another tensor at node '{n.name}'")
            return None
        for lay in layouts:
            self.b.freeze(lay, f"its channel count is read by node '{n.name}' ({_name(target)})")
        return None

    def _apply(self, n: fx.Node, args, kwargs, ainfo, kinfo, result) -> Any:
        if n.op == "placeholder":
            return opaque_like(result)
        if n.op == "get_attr":
            if isinstance(result, torch.Tensor):
                return ParamRef(str(n.target), tuple(range(result.ndim)))
            return None
        if n.op == "output":
            for layout in iter_layouts(ainfo):
                self.b.freeze(layout, "model output")
            for ref in iter_paramrefs(ainfo):
                self.b.pin(ref.target, "returned as a model output")
            return None
        if n.op == "call_module":
            return self.module_rule(n, self.modules[n.target], args, kwargs, ainfo, kinfo, result)
        if n.op == "call_function":
            return self.function_rule(n, args, kwargs, ainfo, kinfo, result)
        if n.op == "call_method":
            return self.method_rule(n, args, kwargs, ainfo, kinfo, result)
        return self.unknown(n, ainfo, kinfo, result, f"node kind {n.op}")

    def unknown(self, n: fx.Node, ainfo, kinfo, result, what: str):
        """Freeze every channel space among the inputs; the result is opaque."""
        reason = f"used by unsupported {what} (node '{n.name}')"
        for layout in iter_layouts((ainfo, kinfo)):
            self.b.freeze(layout, reason)
        for ref in iter_paramrefs((ainfo, kinfo)):
            self.b.pin(ref.target, f"used by unsupported {what} (node '{n.name}')")
        return opaque_like(result)

    # --- modules ------------------------------------------------------------------------
    def module_rule(self, n, m: nn.Module, args, kwargs, ainfo, kinfo, result):
        name = str(n.target)
        x = args[0] if args else None
        xi = ainfo[0] if ainfo else None
        if kwargs or not isinstance(x, torch.Tensor) or not isinstance(result, torch.Tensor):
            return self.unknown(n, ainfo, kinfo, result, f"call of module '{name}' ({type(m).__name__})")
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self.conv(n, name, m, x, xi, result)
        if isinstance(m, nn.Linear):
            return self.linear(n, name, m, x, xi, result)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return self.per_channel_norm(n, name, m, x, xi, "batchnorm", ("weight", "bias", "running_mean", "running_var"))
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            return self.per_channel_norm(n, name, m, x, xi, "instancenorm", ("weight", "bias", "running_mean", "running_var"))
        if isinstance(m, nn.LayerNorm):
            weight = f"{name}.weight" if m.weight is not None else None
            bias = f"{name}.bias" if m.bias is not None else None
            return self.layer_norm(n, x, xi, len(m.normalized_shape), weight, bias, owner=name, literal_pos=None)
        if isinstance(m, nn.GroupNorm):
            return self.group_norm(n, name, m, x, xi)
        if isinstance(m, (nn.LocalResponseNorm, nn.CrossMapLRN2d)):
            return self.mixes_channels(xi, f"{type(m).__name__} '{name}' computes statistics across channels", result)
        if isinstance(m, nn.PReLU):
            if m.num_parameters == 1:
                return xi
            return self.per_channel_norm(n, name, m, x, xi, "prelu", ("weight",))
        if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            return self.softmax(xi, m.dim, x.ndim, f"{type(m).__name__} '{name}'")
        if isinstance(m, nn.Softmax2d):
            return self.softmax(xi, -3, x.ndim, f"Softmax2d '{name}'")
        if isinstance(m, _ACTIVATION_MODULES):
            return self.pointwise(n, [(x, xi)], result)
        if type(m) in _SPATIAL_MODULES:
            if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) and m.return_indices:
                return self.unknown(n, ainfo, kinfo, result, f"max-pool with indices '{name}'")
            return self.spatial(xi, x.ndim, _SPATIAL_MODULES[type(m)], f"'{name}'", result)
        if isinstance(m, _UPSAMPLE_MODULES):
            return self.spatial(xi, x.ndim, x.ndim - 2, f"'{name}'", result)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.reshape(n, x, xi, result, literal_shape=None)
        return self.unknown(n, ainfo, kinfo, result, f"module '{name}' ({type(m).__name__})")

    def conv(self, n, name: str, m, x, xi, result):
        cdim = x.ndim - len(m.kernel_size) - 1
        groups = m.groups
        lin = xi if isinstance(xi, Layout) else None
        if isinstance(xi, ParamRef):
            self.b.pin(xi.target, f"the input of conv '{name}'")
        if lin is not None and lin.dim != cdim:
            self.b.freeze(lin, f"conv '{name}' slides over the channel dimension")
            lin = None
        depthwise = groups > 1 and groups == m.in_channels == m.out_channels
        if lin is not None and lin.block != 1 and groups > 1:
            self.b.freeze(lin, f"grouped conv '{name}' reads flattened channels")
            lin = None
        spatial = result.numel() // m.out_channels
        kernel = math.prod(m.kernel_size)
        if depthwise:
            if lin is None:
                out = self.b.producer_layout(name, m.out_channels, cdim)
                self.b.freeze(out, f"depthwise conv '{name}' has untracked input channels")
            else:
                out = lin
            self._slice_params(name, m, out, 0, "dw", ("weight", "bias"))
            self.b.add_edit(ModuleEdit(name, "dwconv"))
            if self.tag == "eval":
                self.b.macs.append(MacRecord(name, "dwconv", spatial, kernel, groups, m.in_channels, m.out_channels, None, out))
            return out
        out = self.b.producer_layout(name, m.out_channels, cdim)
        kind = "conv"
        if groups > 1:
            kind = "gconv"
            if m.in_channels == groups:  # depthwise with a channel multiplier: out j reads in j // k
                self.b.freeze(out, f"conv '{name}' has a depthwise channel multiplier")
                if lin is not None:
                    self.b.freeze(lin, f"conv '{name}' has a depthwise channel multiplier")
                lin = None
            self.b.add_conv_groups(out, groups)
            if lin is not None and not self.b.add_conv_groups(lin, groups):
                lin = None
        if lin is not None:
            self.b.add_slice(SliceSpec(f"{name}.weight", 1, lin, "in", grouped=groups if groups > 1 else 1))
            self.b.mask_sites.append(MaskSite(self.tag, n.name, 0, lin, "consumer"))
        self._slice_params(name, m, out, 0, "out", ("weight", "bias"))
        self.b.add_edit(ModuleEdit(name, "conv"))
        if self.tag == "eval":
            self.b.macs.append(MacRecord(name, kind, spatial, kernel, groups, m.in_channels, m.out_channels, lin, out))
        return out

    def linear(self, n, name: str, m: nn.Linear, x, xi, result):
        lin = xi if isinstance(xi, Layout) else None
        if isinstance(xi, ParamRef):
            self.b.pin(xi.target, f"the input of linear '{name}'")
        spatial = result.numel() // m.out_features
        if lin is not None and lin.dim != x.ndim - 1:
            # the channels sit on another dim: the linear mixes features, not channels
            if self.tag == "eval":
                self.b.macs.append(MacRecord(name, "linear", spatial, 1, 1, m.in_features, m.out_features, None, None))
            return lin
        out = self.b.producer_layout(name, m.out_features, result.ndim - 1)
        if lin is not None:
            self.b.add_slice(SliceSpec(f"{name}.weight", 1, lin, "in"))
            self.b.mask_sites.append(MaskSite(self.tag, n.name, 0, lin, "consumer"))
        self._slice_params(name, m, out, 0, "out", ("weight", "bias"))
        self.b.add_edit(ModuleEdit(name, "linear"))
        if self.tag == "eval":
            self.b.macs.append(MacRecord(name, "linear", spatial, 1, 1, m.in_features, m.out_features, lin, out))
        return out

    def _slice_params(self, name, m, layout: Layout, dim: int, role: str, attrs) -> None:
        for attr in attrs:
            if getattr(m, attr, None) is not None:
                self.b.add_slice(SliceSpec(f"{name}.{attr}", dim, layout, role))

    def per_channel_norm(self, n, name, m, x, xi, kind: str, attrs):
        if not isinstance(xi, Layout):
            return opaque_like(x)
        if xi.dim != 1 or xi.extent != x.shape[1]:
            self.b.freeze(xi, f"{type(m).__name__} '{name}' normalizes over the channel dimension")
            return xi
        self._slice_params(name, m, xi, 0, "norm", attrs)
        self.b.add_edit(ModuleEdit(name, kind, xi))
        return xi

    def group_norm(self, n, name: str, m: nn.GroupNorm, x, xi):
        """GroupNorm keeps each group's statistics to itself: prune whole groups (leading ones)."""
        if not isinstance(xi, Layout):
            return opaque_like(x)
        if xi.dim != 1 or xi.extent != m.num_channels:
            self.b.freeze(xi, f"GroupNorm '{name}' normalizes over the channel dimension")
            return xi
        if self.b.add_norm_groups(xi, m.num_channels // m.num_groups):
            self._slice_params(name, m, xi, 0, "norm", ("weight", "bias"))
            self.b.add_edit(ModuleEdit(name, "groupnorm", xi))
        return xi

    def layer_norm(self, n, x, xi, k: int, weight, bias, owner: str | None, literal_pos: int | None):
        """LayerNorm over the last ``k`` dims; over channels -> a width-aware norm."""
        if not isinstance(xi, Layout):
            for t in (weight, bias):
                if t is not None:
                    self.b.pin(t, f"the affine parameter of a LayerNorm with untracked input (node '{n.name}')")
            return opaque_like(x)
        if xi.dim < x.ndim - k:
            return xi
        if k != 1:
            self.b.freeze(xi, f"LayerNorm (node '{n.name}') normalizes over channels and other dims together")
            return xi
        for t in (weight, bias):
            if t is not None:
                self.b.add_slice(SliceSpec(t, 0, xi, "norm"))
        if owner is not None:
            self.b.add_edit(ModuleEdit(owner, "layernorm", xi))
        self.b.mask_sites.append(MaskSite(self.tag, n.name, 0, xi, "layernorm"))
        if literal_pos is not None:
            self.b.constant_sites.append(ConstantSite(self.tag, n.name, "layer_norm", ((0, xi),)))
        return xi

    def mixes_channels(self, xi, reason: str, result):
        if isinstance(xi, Layout):
            self.b.freeze(xi, reason)
            return xi
        return opaque_like(result)

    def softmax(self, xi, dim, ndim: int, what: str):
        if not isinstance(xi, Layout):
            return xi if xi is None else OPAQUE
        if dim is None or _norm_dim(dim, ndim) == xi.dim:
            self.b.freeze(xi, f"{what} normalizes across channels")
        return xi

    def spatial(self, xi, ndim: int, k: int, what: str, result):
        """Pooling / padding / upsampling over the last ``k`` dims."""
        if isinstance(xi, Layout):
            if xi.dim >= ndim - k:
                self.b.freeze(xi, f"{what} pools or pads across the channel dimension")
                return OPAQUE
            if result.ndim != ndim:
                return self.mixes_channels(xi, f"{what} changes the number of dims", result)
            return xi
        if isinstance(xi, ParamRef):
            self.b.pin(xi.target, f"pooled by {what}")
        return opaque_like(result)

    # --- functions and methods ----------------------------------------------------------
    def function_rule(self, n, args, kwargs, ainfo, kinfo, result):
        t = n.target
        if t is operator.getitem:
            return self.getitem(n, args, ainfo, kinfo, result)
        if not has_tensor(result):
            if any(True for _ in iter_layouts((ainfo, kinfo))) or any(True for _ in iter_paramrefs((ainfo, kinfo))):
                if t is getattr or _name(t) in ("_assert", "eq", "ne", "floordiv"):
                    return None
                return self.unknown(n, ainfo, kinfo, result, f"function {_name(t)}")
            return None
        if t in _POINTWISE_FUNCTIONS:
            return self.pointwise_call(n, args, kwargs, ainfo, kinfo, result)
        if t in _SPATIAL_FUNCTIONS:
            if isinstance(result, tuple):
                return self.unknown(n, ainfo, kinfo, result, f"function {_name(t)}")
            return self.spatial(ainfo[0], args[0].ndim, _SPATIAL_FUNCTIONS[t], f"{_name(t)} (node '{n.name}')", result)
        if t in (F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear):
            return self.spatial(ainfo[0], args[0].ndim, args[0].ndim - 2, f"{_name(t)} (node '{n.name}')", result)
        if t is F.pad:
            pad = _arg(args, kwargs, 1, "pad")
            return self.spatial(ainfo[0], args[0].ndim, len(pad) // 2, f"pad (node '{n.name}')", result)
        if t in _RESHAPE_FUNCTIONS:
            literal = args[1] if t is torch.reshape and len(args) > 1 else None
            return self.reshape(n, args[0], ainfo[0], result, literal_shape=literal)
        if t in _PERMUTE_FUNCTIONS:
            return self.permute(n, _name(t), args, kwargs, ainfo, kinfo, result)
        if t in _CAT_FUNCTIONS:
            tensors = _arg(args, kwargs, 0, "tensors")
            infos = ainfo[0] if ainfo else kinfo.get("tensors")
            dim = _arg(args, kwargs, 1, "dim", 0)
            return self.cat(n, list(tensors), list(infos), dim, result)
        if t in _SPLIT_FUNCTIONS:
            default_dim = 0
            dim = _arg(args, kwargs, 1 if t is torch.unbind else 2, "dim", default_dim)
            return self.split(n, args[0], ainfo[0], dim, result, removes_dim=t is torch.unbind)
        if t in _REDUCE_FUNCTIONS:
            return self.reduce(n, args, kwargs, ainfo, kinfo, result)
        if t in _SOFTMAX_FUNCTIONS:
            dim = _arg(args, kwargs, 1, "dim")
            return self.softmax(ainfo[0], dim, args[0].ndim, f"{_name(t)} (node '{n.name}')")
        if t is F.layer_norm:
            shape = _arg(args, kwargs, 1, "normalized_shape")
            w = _arg(ainfo, kinfo, 2, "weight")
            bb = _arg(ainfo, kinfo, 3, "bias")
            weight = w.target if isinstance(w, ParamRef) else None
            bias = bb.target if isinstance(bb, ParamRef) else None
            if (w is not None and weight is None) or (bb is not None and bias is None):
                return self.unknown(n, ainfo, kinfo, result, "layer_norm with computed affine parameters")
            owner = weight.rsplit(".", 1)[0] if weight and "." in weight else None
            if owner is not None and not isinstance(self.root_modules.get(owner), nn.LayerNorm):
                owner = None
            return self.layer_norm(n, args[0], ainfo[0], len(shape), weight, bias, owner, literal_pos=1)
        return self.unknown(n, ainfo, kinfo, result, f"function {_name(t)}")

    def method_rule(self, n, args, kwargs, ainfo, kinfo, result):
        method = str(n.target)
        if not isinstance(args[0], torch.Tensor):
            return self.unknown(n, ainfo, kinfo, result, f"method {method}")
        if not has_tensor(result):
            return None  # size(), dim(), numel(), ...
        x, xi = args[0], ainfo[0]
        if method in _POINTWISE_METHODS:
            return self.pointwise_call(n, args, kwargs, ainfo, kinfo, result)
        if method in _IDENTITY_METHODS:
            if isinstance(result, torch.Tensor) and result.shape == x.shape:
                return xi
            return self.unknown(n, ainfo, kinfo, result, f"method {method}")
        if method in _RESHAPE_METHODS:
            literal = list(args[1:]) if method in ("view", "reshape") else None
            if literal and len(literal) == 1 and isinstance(literal[0], (tuple, list)):
                literal = list(literal[0])
            if literal and not all(isinstance(v, int) for v in literal):
                literal = None
            return self.reshape(n, x, xi, result, literal_shape=literal)
        if method in ("expand", "expand_as"):
            return self.expand(n, x, xi, result)
        if method in _PERMUTE_METHODS:
            return self.permute(n, method, args, kwargs, ainfo, kinfo, result)
        if method in _SPLIT_METHODS:
            dim = _arg(args, kwargs, 1 if method == "unbind" else 2, "dim", 0)
            return self.split(n, x, xi, dim, result, removes_dim=method == "unbind")
        if method in _REDUCE_METHODS:
            return self.reduce(n, args, kwargs, ainfo, kinfo, result)
        if method in _SOFTMAX_METHODS:
            return self.softmax(xi, _arg(args, kwargs, 1, "dim"), x.ndim, f"{method} (node '{n.name}')")
        return self.unknown(n, ainfo, kinfo, result, f"method {method}")

    # --- shared rules ---------------------------------------------------------------------
    def pointwise_call(self, n, args, kwargs, ainfo, kinfo, result):
        operands = [(v, i) for v, i in zip(args, ainfo) if isinstance(v, torch.Tensor)]
        operands += [(kwargs[k], kinfo[k]) for k in kwargs if isinstance(kwargs[k], torch.Tensor)]
        if not isinstance(result, torch.Tensor):
            return self.unknown(n, ainfo, kinfo, result, f"op {_name(n.target)}")
        return self.pointwise(n, operands, result)

    def pointwise(self, n, operands, result):
        """Elementwise op with broadcasting: tensors of full channel extent are coupled."""
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
                    self.b.pin(info.target, f"used in elementwise op node '{n.name}' without tracked channels")
            return OPAQUE
        dims = {layout.dim for layout in layouts}
        if len(dims) > 1:
            for layout in layouts:
                self.b.freeze(layout, f"elementwise op '{n.name}' broadcasts channels against another dim")
            return OPAQUE
        base = layouts[0]
        why = f"elementwise op '{n.name}'"
        for other in layouts[1:]:
            self.b.unify(base, other, why)
        d = base.dim
        for value, info in operands:
            if isinstance(info, Layout):
                continue
            aligned = d - (out_nd - value.ndim)
            if aligned < 0 or value.shape[aligned] == 1:
                continue
            if isinstance(info, ParamRef) and info.dims[aligned] is not None and value.shape[aligned] == base.extent:
                self.b.add_slice(SliceSpec(info.target, info.dims[aligned], base, "param"))
            else:
                self.b.freeze(base, f"{why} mixes the channels with an untracked tensor")
                if isinstance(info, ParamRef):
                    self.b.pin(info.target, f"used in {why}")
        return base

    def reshape(self, n, x, xi, result, literal_shape):
        if isinstance(xi, ParamRef):
            moved = _reshape_paramref(tuple(x.shape), tuple(result.shape), xi)
            if moved is None:
                self.b.pin(xi.target, f"reshaped by node '{n.name}'")
                return OPAQUE
            return moved
        if not isinstance(xi, Layout):
            return opaque_like(result)
        out = reshape_layout(tuple(x.shape), tuple(result.shape), xi)
        if out is None:
            self.b.freeze(xi, f"reshape '{n.name}' splits or merges the channel dimension")
            return OPAQUE
        if literal_shape is not None and out.dim < len(literal_shape):
            value = literal_shape[out.dim]
            if isinstance(value, int) and value != -1:
                self.b.constant_sites.append(ConstantSite(self.tag, n.name, "reshape", ((out.dim, out),)))
        return out

    def expand(self, n, x, xi, result):
        shift = result.ndim - x.ndim
        if isinstance(xi, ParamRef):
            return ParamRef(xi.target, (None,) * shift + xi.dims)
        if isinstance(xi, Layout):
            if result.shape[xi.dim + shift] != x.shape[xi.dim]:
                self.b.freeze(xi, f"expand '{n.name}' repeats channels")
                return OPAQUE
            return xi.at(xi.dim + shift)
        return opaque_like(result)

    def permute(self, n, method, args, kwargs, ainfo, kinfo, result):
        x, xi = args[0], ainfo[0]
        perm = _permutation(method, args, kwargs, x.ndim)
        if perm is None:
            return self.unknown(n, ainfo, kinfo, result, f"permutation {method}")
        if isinstance(xi, Layout):
            return xi.at(perm.index(xi.dim))
        if isinstance(xi, ParamRef):
            return ParamRef(xi.target, tuple(xi.dims[p] for p in perm))
        return opaque_like(result)

    def cat(self, n, tensors, infos, dim, result):
        layouts = [i for i in infos if isinstance(i, Layout)]
        refs = [i for i in infos if isinstance(i, ParamRef)]
        if not layouts:
            for ref in refs:
                self.b.pin(ref.target, f"concatenated by node '{n.name}'")
            return OPAQUE
        ndim = tensors[0].ndim
        dim = _norm_dim(dim, ndim)
        ldims = {layout.dim for layout in layouts}
        if len(ldims) > 1:
            for layout in layouts:
                self.b.freeze(layout, f"concat '{n.name}' joins tensors whose channels sit on different dims")
            return OPAQUE
        cdim = ldims.pop()
        if dim != cdim:
            return self.pointwise(n, list(zip(tensors, infos)), result)
        blocks = {layout.block for layout in layouts}
        block = blocks.pop()
        if blocks:
            for layout in layouts:
                self.b.freeze(layout, f"concat '{n.name}' joins channels of different block sizes")
            return OPAQUE
        segs: list[Seg] = []
        for value, info in zip(tensors, infos):
            if isinstance(info, Layout):
                segs.extend(info.segs)
                continue
            extent = value.shape[dim]
            if isinstance(info, ParamRef):
                self.b.pin(info.target, f"concatenated along channels by node '{n.name}'")
            if extent % block:
                for layout in layouts:
                    self.b.freeze(layout, f"concat '{n.name}' mixes untracked features into channels")
                return OPAQUE
            sid = self.b.new_space(extent // block, None, f"untracked input of {n.name}", frozen="untracked tensor")
            segs.append(Seg(sid, 0, extent // block))
        return Layout(dim=cdim, segs=tuple(segs), block=block)

    def split(self, n, x, xi, dim, result, removes_dim: bool):
        if isinstance(xi, ParamRef):
            self.b.pin(xi.target, f"split by node '{n.name}'")
            return opaque_like(result)
        if not isinstance(xi, Layout):
            return opaque_like(result)
        dim = _norm_dim(dim, x.ndim)
        if dim == xi.dim:
            self.b.freeze(xi, f"split '{n.name}' cuts the channel dimension into pieces")
            return opaque_like(result)
        new = xi.at(xi.dim - 1) if removes_dim and dim < xi.dim else xi
        return tuple(new for _ in result)

    def getitem(self, n, args, ainfo, kinfo, result):
        container, index = args[0], args[1]
        info = ainfo[0]
        if not isinstance(container, torch.Tensor):
            if isinstance(info, (tuple, list)) and isinstance(index, int):
                return info[index]
            if isinstance(info, (tuple, list)):
                return self.unknown(n, ainfo, kinfo, result, "getitem with a computed index")
            return opaque_like(result)
        items = index if isinstance(index, tuple) else (index,)
        if isinstance(info, ParamRef):
            moved = _index_paramref(container, items, info)
            if moved is None:
                self.b.pin(info.target, f"indexed by node '{n.name}'")
                return opaque_like(result)
            return moved
        if not isinstance(info, Layout):
            return opaque_like(result)
        if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) for i in items):
            self.b.freeze(info, f"advanced indexing '{n.name}' on channels")
            return OPAQUE
        n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
        in_dim = out_dim = 0
        for item in items:
            if item is Ellipsis:
                skip = container.ndim - n_real
                if in_dim <= info.dim < in_dim + skip:
                    return info.at(out_dim + info.dim - in_dim)
                in_dim += skip
                out_dim += skip
            elif item is None:
                out_dim += 1
            elif isinstance(item, int):
                if in_dim == info.dim:
                    self.b.freeze(info, f"index '{n.name}' picks single channels")
                    return OPAQUE
                in_dim += 1
            else:
                if in_dim == info.dim:
                    size = container.shape[in_dim]
                    if range(*item.indices(size)) != range(size):
                        self.b.freeze(info, f"slice '{n.name}' cuts the channel dimension")
                        return OPAQUE
                    return info.at(out_dim)
                in_dim += 1
                out_dim += 1
        return info.at(out_dim + info.dim - in_dim)

    def reduce(self, n, args, kwargs, ainfo, kinfo, result):
        x, xi = args[0], ainfo[0]
        if isinstance(xi, ParamRef):
            self.b.pin(xi.target, f"reduced by node '{n.name}'")
            return opaque_like(result)
        if not isinstance(xi, Layout):
            return opaque_like(result)
        dim = _arg(args, kwargs, 1, "dim")
        keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
        if isinstance(kwargs.get("keepdim"), bool):
            keepdim = kwargs["keepdim"]
        if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
            self.b.freeze(xi, f"reduction '{n.name}' over all dims")
            return opaque_like(result)
        dims = [dim] if isinstance(dim, int) else list(dim)
        dims = [_norm_dim(d, x.ndim) for d in dims]
        if xi.dim in dims:
            self.b.freeze(xi, f"reduction '{n.name}' over the channel dimension")
            return opaque_like(result)
        if keepdim:
            return xi
        return xi.at(xi.dim - sum(1 for d in dims if d < xi.dim))
