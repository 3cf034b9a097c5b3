"""The search space: a traced model with one Markov gate per prunable group (DESIGN.md section 3).

:class:`SearchSpace` is an ``nn.Module`` made by :func:`dmcpfx.search.instrument.instrument`:
at max width its forward equals the original model's. :class:`GroupInfo` describes one
gated group.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..analysis.channel_graph import ChannelGraph, Width
from ..arch import validate_count_widths
from ..errors import ArchError
from ..passes.gate_insertion import gate_key, insert_gates
from .gates import MarkovGate

__all__ = ["GroupInfo", "SearchSpace", "check_space"]


@dataclass(frozen=True)
class GroupInfo:
    """A prunable group of the search space.

    ``width``: full channel count; ``candidates``: the widths a gate can take
    (sorted, last == width); ``divisor``: every candidate is a multiple of it
    (except a full width that is not); ``members``: number of tensors sliced.
    """

    id: str
    width: int
    candidates: tuple[int, ...]
    divisor: int
    min_ch: int
    members: int


class SearchSpace(nn.Module):
    """A model with Markov gates; ``space(x)`` runs the gated model.

    Attributes: ``groups`` (id -> :class:`GroupInfo`), ``graph`` (the
    :class:`~dmcpfx.analysis.channel_graph.ChannelGraph`), ``example_inputs``, ``skipped`` (prunable
    groups left without a gate because they are too narrow, id -> reason).
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, gates: dict[str, MarkovGate], example_inputs, skipped):
        super().__init__()
        taken: set[str] = set()
        self._keys = {gid: gate_key(gid, taken) for gid in gates}
        self.gate_modules = nn.ModuleDict({self._keys[gid]: gate for gid, gate in gates.items()})
        modules = insert_gates(graph, self.gate_modules, self._keys)
        self.graph_eval = modules["eval"]
        self._separate_train = modules["train"] is not modules["eval"]
        if self._separate_train:
            self.graph_train = modules["train"]
        self.__dict__["_template"] = model  # the copy that shares modules with the graphs
        self.graph = graph
        self.example_inputs = tuple(t.detach().cpu() for t in example_inputs)
        self.skipped = dict(skipped)
        self.groups: dict[str, GroupInfo] = {}
        for gid, gate in gates.items():
            group = graph.groups[gid]
            self.groups[gid] = GroupInfo(
                id=gid,
                width=group.width,
                candidates=tuple(gate.candidates),
                divisor=gate.split.divisor,
                min_ch=gate.split.min_ch,
                members=len(group.members),
            )

    def forward(self, *args, **kwargs):
        if self.training and self._separate_train:
            return self.graph_train(*args, **kwargs)
        return self.graph_eval(*args, **kwargs)

    # gates
    def gates(self) -> dict[str, MarkovGate]:
        """Group id -> its :class:`~dmcpfx.search.gates.MarkovGate` (network order)."""
        return {gid: self.gate_modules[key] for gid, key in self._keys.items()}

    def set_mode(self, mode: str) -> None:
        """Put every gate in ``max``, ``min``, ``expected`` or ``off`` mode."""
        if mode == "width":
            raise ValueError("use set_widths() for hard widths")
        for gate in self.gates().values():
            gate.set_mode(mode)

    def set_widths(self, widths: Mapping[str, int]) -> None:
        """Hard prefix masks: the named groups keep ``widths[gid]`` channels, others all."""
        gates = self.gates()
        for gid in widths:
            if gid not in gates:
                reason = self.skipped.get(gid) or (
                    f"frozen: {self.graph.groups[gid].frozen_reasons[0]}" if gid in self.graph.groups else "unknown group"
                )
                raise ArchError(f"group '{gid}' cannot be set: {reason}")
        for gid, gate in gates.items():
            if gid not in widths:
                gate.set_mode("max")
                continue
            w = widths[gid]
            if isinstance(w, torch.Tensor) and w.numel() == 1 and not w.is_floating_point():
                w = int(w.item())
            elif hasattr(w, "__index__") and not isinstance(w, bool):
                w = int(w.__index__())  # numpy integers
            if isinstance(w, bool) or not isinstance(w, int):
                raise ArchError(f"group '{gid}': width must be an integer, got {w!r}")
            if not 1 <= w <= gate.width:
                raise ArchError(f"group '{gid}': width {w} is outside [1, {gate.width}]")
            if w % self.graph.groups[gid].divisor:
                divisor = self.graph.groups[gid].divisor
                raise ArchError(f"group '{gid}': width {w} is not a multiple of its divisor {divisor}")
            gate.set_mode("width", w)

    def no_group_reason(self) -> str:
        """Why the space has no gate: how many groups are frozen or too narrow, one example of each."""
        frozen = self.graph.frozen
        parts = []
        if frozen:
            gid, group = next(iter(frozen.items()))
            parts.append(f"{len(frozen)} frozen (e.g. '{gid}': {group.frozen_reasons[0]})")
        if self.skipped:
            gid, why = next(iter(self.skipped.items()))
            parts.append(f"{len(self.skipped)} {why.split(' (')[0]} (e.g. '{gid}': {why})")
        found = ", ".join(parts) or "none was found"
        return f"no prunable group: of {len(self.graph.groups)} channel groups, {found}"

    def current_widths(self) -> dict[str, int]:
        """Widths of the hard modes (max/min/width) for every gated group."""
        return {gid: gate.current_width() for gid, gate in self.gates().items()}

    def expected_widths(self) -> dict[str, torch.Tensor]:
        """Differentiable ``E[c]`` per gated group (DESIGN.md section 3)."""
        return {gid: gate.expected_width() for gid, gate in self.gates().items()}

    # counting (DESIGN.md section 4)
    def flops(self, widths: Mapping[str, Width] | None = None) -> Width:
        """MACs per image at ``widths``; see :meth:`ChannelGraph.flops`. Unknown, frozen or
        out-of-range widths are an :class:`ArchError` naming the group."""
        validate_count_widths(widths, self.graph)
        return self.graph.flops(widths or {})

    def params(self, widths: Mapping[str, Width] | None = None) -> Width:
        """Parameter count at ``widths`` (validated like :meth:`flops`)."""
        validate_count_widths(widths, self.graph)
        return self.graph.params(widths or {})

    @property
    def full_flops(self) -> int:
        return self.graph.full_flops

    @property
    def full_params(self) -> int:
        return self.graph.full_params

    # parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        return [gate.alpha for gate in self.gates().values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def to_model(self) -> nn.Module:
        """A fresh copy of the original model class carrying the space's current weights."""
        model = copy.deepcopy(self._template)
        state = {}
        graphs = [self.graph_eval] + ([self.graph_train] if self._separate_train else [])
        for gm in graphs:
            for key, value in gm.state_dict().items():
                if not key.startswith("dmcpfx_gates."):
                    state[key] = value
        # the template's own state dict, values replaced: it keeps the modules' versions
        # (``_metadata``) that a custom loader reads (torchvision's MNASNet refuses a state without them)
        own = model.state_dict()
        for key, value in state.items():
            if key in own:
                own[key] = value
        model.load_state_dict(own, strict=False)
        return model


def check_space(value: Any, func: str, name: str = "space") -> None:
    """``value`` is a :class:`SearchSpace` (``dmcpfx.instrument``'s result)."""
    if not isinstance(value, SearchSpace):
        raise TypeError(f"{func}(): {name} must be a SearchSpace (from dmcpfx.instrument), got {type(value).__name__}")
