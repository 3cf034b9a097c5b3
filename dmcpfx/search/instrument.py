"""Stage 2: :func:`instrument` builds the search space of a model.

It copies the model, analyzes it and runs the gate-insertion pass
(:mod:`dmcpfx.passes.gate_insertion`). The returned
:class:`~dmcpfx.search.space.SearchSpace` is an ``nn.Module``: at max width its forward
equals the original model's.
"""
from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from ..analysis import analyze
from ..analysis.submodule import capture_inputs, resolve_submodule
from ..inputs import as_tuple
from .gates import MarkovGate, split_channels
from .space import SearchSpace
from ..analysis.device import cpu_copy, model_device, on_cpu

__all__ = ["instrument"]


def instrument(
    model: nn.Module,
    example_inputs,
    *,
    min_ratio: float = 0.1,
    step: float = 0.1,
    divisor: int = 1,
    model_name: str | None = None,
    submodule: str | None = None,
) -> SearchSpace:
    """Insert one Markov gate per prunable group (DESIGN.md sections 2-3).

    ``min_ratio``/``step``: the gate split (official 0.1/0.1); ``divisor``: every
    candidate width is a multiple of it (and of a grouped conv's group count).
    The model is copied; the original is left untouched. ``submodule``: gate only the
    submodule at this path (see :func:`~dmcpfx.analysis.analyze`); the space then runs
    that submodule, on its own inputs captured from one run of ``model``.
    """
    from ..api_checks import check_example, check_module, check_number

    check_module(model, "instrument")
    check_example(example_inputs, "instrument")
    check_number(divisor, "instrument", "divisor", low=1, integer=True)
    check_number(min_ratio, "instrument", "min_ratio", low=0.0, low_open=True, high=1.0)
    check_number(step, "instrument", "step", low=0.0, low_open=True, high=1.0)
    if submodule:
        inputs = capture_inputs(model, example_inputs, submodule)
        return instrument(resolve_submodule(model, submodule), inputs, min_ratio=min_ratio, step=step,
                          divisor=divisor, model_name=model_name)
    inputs = as_tuple(example_inputs)
    device = model_device(model, inputs)
    if on_cpu(model, inputs):
        work = copy.deepcopy(model)
    else:  # built on a CPU copy (the analysis is device-independent), then moved to the model's device
        work, inputs = cpu_copy(model), tuple(t.detach().cpu() for t in inputs)
    graph = analyze(work, inputs, model_name=model_name)
    gates: dict[str, MarkovGate] = {}
    skipped: dict[str, str] = {}
    for gid, group in graph.prunable.items():
        d = math.lcm(max(1, int(divisor)), group.divisor)
        split = split_channels(group.width, min_ratio=min_ratio, step=step, divisor=d)
        if split.n == 0:
            skipped[gid] = f"too narrow to prune ({group.width} channels, divisor {d})"
            continue
        order = torch.tensor(group.order) if group.order is not None else None
        gates[gid] = MarkovGate(split, order)
    space = SearchSpace(work, graph, gates, inputs, skipped)
    if not gates:
        warnings.warn(f"instrument(): {space.no_group_reason()}; a search has nothing to choose",
                      stacklevel=2)
    space.train(model.training)
    return space.to(device)
