"""What every ATen rule shares: the bound call, the rule context, and the fallback.

A rule is ``rule(ctx, call) -> info``: it reads the real argument values and the
channel infos of one executed ATen node (bound to the op's schema names, so
``call.v["weight"]`` is the weight whatever its position) and returns the info of
the result, recording couplings, slices, MAC counts and mask sites in the
:class:`~dmcpfx.analysis.builder.GraphBuilder`. Anything a rule does not understand
goes to :func:`unknown`: every channel space among the inputs is frozen with the op
and the module named, and the result is opaque.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import fx, nn

from ..builder import GraphBuilder
from ..layout import OPAQUE, Layout, ParamRef, iter_layouts, iter_paramrefs


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


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


@dataclass
class Call:
    """One executed ATen node: ``v`` / ``i`` map schema argument names to values / infos."""

    node: fx.Node
    op: str  # the overload packet name, e.g. "conv2d"
    overload: str  # e.g. "default", "Tensor"
    v: dict[str, Any]
    i: dict[str, Any]
    result: Any

    @property
    def operands(self) -> list[tuple[torch.Tensor, Any]]:
        """Every tensor argument with its info, in schema order (tensor lists flattened)."""
        out = []
        for name, value in self.v.items():
            info = self.i.get(name)
            if isinstance(value, torch.Tensor):
                out.append((value, info))
            elif isinstance(value, (list, tuple)):
                infos = info if isinstance(info, (list, tuple)) else [None] * len(value)
                out.extend((t, inf) for t, inf in zip(value, infos) if isinstance(t, torch.Tensor))
        return out


def bind(node: fx.Node, args, kwargs, ainfo, kinfo, result) -> Call:
    """Bind an ATen node's arguments (and their infos) to its schema's names."""
    target = node.target
    values: dict[str, Any] = {}
    infos: dict[str, Any] = {}
    for pos, arg in enumerate(target._schema.arguments):
        if pos < len(args):
            values[arg.name], infos[arg.name] = args[pos], ainfo[pos]
        elif arg.name in kwargs:
            values[arg.name], infos[arg.name] = kwargs[arg.name], kinfo.get(arg.name)
        else:
            values[arg.name] = arg.default_value if arg.has_default_value() else None
            infos[arg.name] = None
    return Call(node, target.overloadpacket.__name__, target._overloadname, values, infos, result)


def arg_index(call: "Call", name: str) -> int:
    """Position of argument ``name`` in the op's schema."""
    return [a.name for a in call.node.target._schema.arguments].index(name)


def module_path(node: fx.Node) -> str:
    """Qualified name of the innermost module whose forward produced ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<top-level forward>"
    path = list(stack.values())[-1][0]
    return path or "<top-level forward>"


class RuleContext:
    """What the rules of one exported graph share: the builder, the graph tag, the model."""

    def __init__(self, builder: GraphBuilder, tag: str, root: nn.Module, batch: int,
                 graph_tensors: Iterable[torch.Tensor] = ()) -> None:
        self.b = builder
        self.tag = tag
        self.batch = batch
        self.modules = dict(root.named_modules())
        self.root = root
        self._storages = {t.untyped_storage().data_ptr() for t in graph_tensors} - {0}  # 0: no memory

    def holds(self, value) -> bool:
        """True when ``value`` is a tensor stored in one of the graph's parameters or buffers
        (the tensor itself or a view of it: a split of ``in_proj_weight``), the test the
        independent MAC counter applies to a product's operands."""
        return isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in self._storages

    def owns(self, target: str) -> bool:
        """True when the model holds a tensor at ``target`` (a parameter, buffer or tensor
        attribute); False for a constant that export lifted from outside the model (a global
        tensor or one a hook closes over: ``lifted_tensor_0``), which no slicing can reach."""
        obj = self.root
        for part in target.split("."):
            obj = getattr(obj, part, None)
        return isinstance(obj, torch.Tensor)

    def owner(self, tensor: str) -> tuple[str, nn.Module | None]:
        """(module name, module) owning a qualified parameter/buffer name."""
        prefix = tensor.rpartition(".")[0]
        return prefix, self.modules.get(prefix)

    def where(self, call: Call) -> str:
        return f"in module '{module_path(call.node)}' (node '{call.node.name}')"


def unknown(ctx: RuleContext, call: Call, what: str | None = None):
    """Freeze every channel space among the inputs; the result is opaque."""
    what = what or f"op aten.{call.op}"
    reason = f"used by unsupported {what} {ctx.where(call)}"
    for layout in iter_layouts(call.i):
        ctx.b.freeze(layout, reason)
    for ref in iter_paramrefs(call.i):
        ctx.b.pin(ref.target, reason)
    return opaque_like(call.result)


def pin_refs(ctx: RuleContext, call: Call, why: str) -> None:
    for ref in iter_paramrefs(call.i):
        ctx.b.pin(ref.target, f"{why} {ctx.where(call)}")


def is_whole_param(info, value: torch.Tensor) -> bool:
    """True when ``info`` is a parameter read as it is (no view, no transpose)."""
    return isinstance(info, ParamRef) and info.dims == tuple(range(value.ndim))


def layout_of(info) -> Layout | None:
    return info if isinstance(info, Layout) else None
