"""Channel analysis: which channels of a traced model must be pruned together.

:func:`analyze` traces the model (eval and train mode), then runs the traced graph
on the example input with an :class:`fx.Interpreter` so that every rule sees the
real argument values and shapes. Each node gets an *info*: a
:class:`~dmcpfx.layout.Layout` for tensors whose channel dimension is tracked,
:data:`~dmcpfx.layout.OPAQUE` for tensors that are not, a
:class:`~dmcpfx.layout.ParamRef` for parameters read with ``get_attr``, and None
for non-tensors. The rules (DESIGN.md section 2) live in :mod:`dmcpfx.rules`;
anything they do not understand freezes the channel spaces it touches.
"""
from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.node import map_arg

from .errors import AnalysisError
from .graph import ChannelGraph, GraphBuilder
from .layout import iter_layouts, iter_paramrefs
from .rules import Rules, opaque_like
from .tracing import as_tuple, trace_both_modes


class _ChannelInterpreter(fx.Interpreter):
    """Runs the graph and computes the channel info of every node."""

    def __init__(self, gm: fx.GraphModule, builder: GraphBuilder, tag: str, root: nn.Module):
        super().__init__(gm, garbage_collect_values=True)
        self.rules = Rules(gm, builder, tag, root)
        self.info: dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node):
        try:
            result = super().run_node(n)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
        except Exception as exc:  # noqa: BLE001 - re-raised with the node named
            where = f"module '{n.target}'" if n.op == "call_module" else f"'{_target_name(n.target)}'"
            raise AnalysisError(
                f"running the traced model failed at node '{n.name}' ({where}): {exc}. "
                "Check that example_inputs has the shape the model expects."
            ) from exc
        ainfo = map_arg(n.args, lambda a: self.info.get(a))
        kinfo = map_arg(n.kwargs, lambda a: self.info.get(a))
        self.info[n] = self.rules.apply(n, args, kwargs, ainfo, kinfo, result)
        return result


def _target_name(target) -> str:
    return getattr(target, "__name__", str(target))


def analyze(model: nn.Module, example_inputs, *, model_name: str | None = None) -> ChannelGraph:
    """Trace ``model`` and discover its coupled channel groups (DESIGN.md section 2).

    ``example_inputs``: a tensor or a tuple of tensors the model accepts (small is
    fine: shapes only matter for FLOPs). The model is not modified; its train/eval
    mode is restored. Raises :class:`~dmcpfx.errors.TraceError` if the model cannot
    be traced and :class:`~dmcpfx.errors.AnalysisError` if the traced graph fails
    on the example input.
    """
    inputs = as_tuple(example_inputs)
    graph_modules = trace_both_modes(model)
    builder = GraphBuilder()
    was_training = model.training
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            for tag in ("eval", "train"):
                gm = graph_modules[tag]
                if tag == "train" and gm is graph_modules["eval"]:
                    continue
                gm.eval()
                _ChannelInterpreter(gm, builder, tag, model).run(*inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode
        model.train(was_training)
    param_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    return builder.finalize(
        graph_modules=graph_modules,
        input_shapes=[tuple(t.shape) for t in inputs],
        param_shapes=param_shapes,
        model_name=model_name,
    )


__all__ = ["analyze", "iter_layouts", "iter_paramrefs", "opaque_like"]
