"""Export a model to ATen-level fx graphs with ``torch.export`` (DESIGN.md section 2).

One tracer for every model: ``torch.export.export`` in non-strict mode (the
training IR) with a dynamic batch dimension. It turns any model into a small
vocabulary of ATen ops, specializes shape-dependent Python control flow, traces
inside wrapped functions and names every parameter and buffer by its qualified
name. ``ep.module()`` shares the model's parameters and buffers, so the graphs
train the model's own weights. Train and eval mode are exported separately (the
graph bakes the mode in); both share the weights.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
import traceback

import torch
from torch import fx, nn
from torch.export import Dim

from ..errors import AnalysisError, ConfigError, TraceError

#: batch size of the inputs the graphs are exported (and analyzed) with
EXPORT_BATCH = 2


def batch_of(inputs: tuple[torch.Tensor, ...], batch: int = EXPORT_BATCH) -> tuple[torch.Tensor, ...]:
    """The first sample of every input repeated ``batch`` times (dim 0 is the batch)."""
    out = []
    for t in inputs:
        if t.ndim == 0:
            raise ConfigError("example_inputs must have a batch dimension (dim 0); got a 0-d tensor")
        first = t[:1]
        out.append(first.expand(batch, *first.shape[1:]).clone())
    return tuple(out)


def _failing_module(exc: BaseException, model: nn.Module) -> str | None:
    """Qualified name of the innermost module of ``model`` whose forward was running at ``exc``."""
    names = {id(m): name for name, m in model.named_modules()}
    found = None
    for frame, _line in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            found = names[id(owner)] or "<top-level forward>"
    return found


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "For more information")):
            return line[:300]
    return type(exc).__name__


#: torch loggers that print hints when an export fails; the failure is re-raised as one
#: TraceError line, so they are silenced during the export
_EXPORT_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export", "torch._dynamo")


@contextlib.contextmanager
def _quiet_export():
    """Silence torch's export loggers, and hold back what export writes to stderr: a failed
    export prints its partial graph there. The held text is written out after a success
    (the model's own warnings) and dropped after a failure (the TraceError says it in one line)."""
    loggers = [logging.getLogger(name) for name in _EXPORT_LOGGERS]
    levels = [lg.level for lg in loggers]
    held = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with contextlib.redirect_stderr(held):
            yield
        sys.stderr.write(held.getvalue())  # reached only after a success
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _graph_module_names() -> frozenset[str]:
    """Attribute names an ``fx.GraphModule`` has beyond a plain ``nn.Module``'s (``meta``,
    ``graph``, ``code``, ...): a top-level submodule, parameter or buffer of one of these names
    cannot live in the GraphModule that ``ep.module()`` builds."""
    return frozenset(set(dir(fx.GraphModule(nn.Module(), fx.Graph()))) - set(dir(nn.Module())))


def _rebuild_error(model: nn.Module, exc: BaseException, training: bool) -> TraceError:
    """The one-line error of an export whose program cannot become a GraphModule: it names a
    top-level attribute of ``model`` that ``fx.GraphModule`` reserves (a submodule called
    ``meta``) when there is one."""
    reserved = _graph_module_names()
    tops = [*(("submodule", n) for n, _ in model.named_children()),
            *(("parameter", n) for n, _ in model.named_parameters(recurse=False)),
            *(("buffer", n) for n, _ in model.named_buffers(recurse=False))]
    clash = [(kind, name) for kind, name in tops if name in reserved]
    if clash:
        kind, name = clash[0]
        return TraceError(f"{type(model).__name__} has a top-level {kind} named '{name}', a name that "
                          "torch.fx.GraphModule reserves, so the exported graph cannot hold it: rename it, "
                          "or prune a submodule with submodule='path' (CLI: --submodule)")
    return TraceError(f"cannot rebuild {type(model).__name__} as a graph after torch.export "
                      f"({'train' if training else 'eval'} mode): {_one_line(exc)}")


def export_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...], training: bool) -> fx.GraphModule:
    """Export ``model`` in train or eval mode; returns a plain GraphModule sharing its weights.

    ``inputs`` must have a batch of at least 2 (dim 0 becomes dynamic). Raises
    :class:`TraceError` naming the module and the reason when export fails or fixes
    the batch size.
    """
    model.train(training)
    batch = Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in inputs)
    try:
        with torch.random.fork_rng(devices=[]), _quiet_export():
            ep = torch.export.export(model, inputs, dynamic_shapes=dynamic, strict=False)
    except Exception as exc:  # noqa: BLE001 - re-raised as one line with the module named
        where = _failing_module(exc, model) or "<top-level forward>"
        raise TraceError(
            f"cannot export {type(model).__name__} with torch.export ({'train' if training else 'eval'} mode): "
            f"{_one_line(exc)} (in module '{where}'). Data-dependent control flow or a fixed batch size "
            "cannot be exported; prune an exportable submodule instead with submodule='path' (CLI: --submodule)."
        ) from None
    try:
        exported = ep.module()
        graph = copy.deepcopy(exported.graph)
        for node in list(graph.nodes):
            if node.op == "call_module" and node.target == "_guards_fn":  # shape guards: checked by the graph's ops
                graph.erase_node(node)
        graph.eliminate_dead_code()
        gm = fx.GraphModule(exported, graph, type(model).__name__)
    except Exception as exc:  # noqa: BLE001 - re-raised as one line naming the attribute
        raise _rebuild_error(model, exc, training) from None
    gm.meta["dmcpfx_training"] = training
    return gm


def check_runs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Run ``model`` once eagerly (eval mode); a failure is an AnalysisError naming the module."""
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(*inputs)
    except Exception as exc:  # noqa: BLE001 - re-raised as one line with the module named
        where = _failing_module(exc, model) or "<top-level forward>"
        raise AnalysisError(
            f"running {type(model).__name__} on example_inputs of shape {[tuple(t.shape) for t in inputs]} failed "
            f"in module '{where}': {_one_line(exc)}. Check that example_inputs has the shape the model expects."
        ) from None


def export_both_modes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, fx.GraphModule]:
    """``{"eval": gm, "train": gm}`` exported from ``model``; its mode flags are restored."""
    modes = {m: m.training for m in model.modules()}
    try:
        check_runs(model, inputs)
        return {"eval": export_graph(model, inputs, False), "train": export_graph(model, inputs, True)}
    finally:
        for m, mode in modes.items():
            m.training = mode
