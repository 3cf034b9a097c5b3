"""torch.fx tracing with errors that name the module being traced."""
from __future__ import annotations

import torch
from torch import fx, nn

from .errors import ConfigError, TraceError


class _NamingTracer(fx.Tracer):
    """A standard fx.Tracer that remembers which module it is inside (for errors)."""

    def __init__(self) -> None:
        super().__init__()
        self.dmcpfx_stack: list[str] = []
        self.failed_in: str | None = None

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        self.dmcpfx_stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = name  # the innermost module whose forward failed
            raise
        finally:
            self.dmcpfx_stack.pop()


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` in its current train/eval mode.

    Raises :class:`TraceError` naming the innermost module being traced when the
    forward code cannot be traced (data-dependent control flow, unsupported calls).
    """
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        where = tracer.failed_in or "<top-level forward>"
        cls = type(model).__name__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(
            f"cannot trace {cls} with torch.fx: {first} (in module '{where}'). "
            "Make the forward free of data-dependent control flow, or wrap the offending "
            "function with torch.fx.wrap so it stays opaque (its channels are then frozen)."
        ) from exc
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    return gm


def trace_both_modes(model: nn.Module) -> dict[str, fx.GraphModule]:
    """Trace ``model`` in eval and in train mode (python branches may differ).

    Returns ``{"eval": gm, "train": gm}``; one shared GraphModule when both traces
    produce the same code. The model's own mode is restored.
    """
    was_training = model.training
    try:
        model.eval()
        gm_eval = trace(model)
        model.train()
        gm_train = trace(model)
    finally:
        model.train(was_training)
    if gm_train.code == gm_eval.code:
        return {"eval": gm_eval, "train": gm_eval}
    return {"eval": gm_eval, "train": gm_train}


def as_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    """Normalize ``example_inputs`` (a tensor or a tuple of tensors) to a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise ConfigError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")
