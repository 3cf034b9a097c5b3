"""Slimmable execution: run a SearchSpace sub-net with physically sliced weights.

With hard masks (``space.set_widths``) a sub-net still pays the full-width compute:
the masked channels are multiplied by zero, not skipped. :class:`SlicedRunner`
instead swaps every recorded parameter and buffer for a slice of itself (a view
when the kept channels are a leading range, an ``index_select`` otherwise), sets
the module attributes that forward code reads (depthwise ``groups``, GroupNorm
``num_groups``, ...), runs the graph with its gates off and puts everything back.
Gradients flow into the full parameters through the slicing ops; BatchNorm
running statistics of the kept channels are updated in the full buffers.

Channel counts that the exported graph holds as literals (a depthwise conv's
``groups``, ``x.view(-1, 512 * 7 * 7)``, split sizes, GroupNorm ``num_groups``) are
read at run time from a table of the graph (:class:`~dmcpfx.passes.channel_constants.ChannelConstants`): the runner
writes the sub-net's values into it and the full values back, so no graph is
recompiled per sub-net. The result equals the masked sub-net on the kept channels
(the test suite checks outputs and parameter gradients). :meth:`SlicedRunner.check`
compares the sliced and masked outputs once on the example input before first use;
a mismatch or an error turns slicing off, with the reason.

Buckets (``SlicedRunner(space, buckets=k)``, the ``slice_buckets`` search option): every
tensor is sliced to the smallest of ``k`` widths of the gate's candidate grid (:func:`bucket_grid`)
that holds the sub-net's width, and the gate masks the channels in between (its hard mask
restricted to the sliced channels, ``MarkovGate.window``). Removing channels ``B..C`` and masking
``w..B`` removes ``w..C``: the same function, with at most ``k * k`` weight shapes per
convolution instead of one per pair of candidate widths, so that a GPU's cached convolution
plans are reused rather than built anew at almost every step.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from torch import fx, nn

from ..compare import module_matches, run_eval
from ..numerics import strict_numerics
from ..passes.channel_constants import ChannelConstants
from ..passes.weight_slicing import update_attributes

#: module attributes that :func:`~dmcpfx.passes.weight_slicing.update_attributes` may change
_ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
               "normalized_shape", "num_channels", "num_groups", "num_parameters")


def bucket_grid(candidates: list[int], buckets: int) -> list[int]:
    """The widths tensors are sliced to: ``buckets`` of the ascending ``candidates``, evenly spaced
    by index, always the first (the min net's width) and the last (full); every candidate
    when ``buckets`` is 0 or at least ``len(candidates)``."""
    n = len(candidates)
    if buckets <= 0 or buckets >= n:
        return list(candidates)
    if buckets == 1:
        return [candidates[-1]]
    picks = sorted({round(i * (n - 1) / (buckets - 1)) for i in range(buckets)})
    return [candidates[i] for i in picks]


class _Slot:
    """One sliced tensor: where it lives (``owner._parameters`` or ``_buffers``) and how to cut it."""

    def __init__(self, owner: nn.Module, attr: str, spec, graph) -> None:
        self.owner = owner
        self.attr = attr
        self.spec = spec
        self.is_param = attr in owner._parameters
        self.group_ids = tuple(graph.group_of(seg).id for seg in spec.layout.segs)
        self._cache: dict[tuple, tuple[str, object]] = {}

    def cut(self, graph, widths: Mapping[str, int]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(full tensor, kept indices or None for a leading range, slice)``."""
        full = self.owner._parameters[self.attr] if self.is_param else self.owner._buffers[self.attr]
        key = (tuple(widths.get(gid) for gid in self.group_ids), full.device)
        plan = self._cache.get(key)
        if plan is None:
            idx = graph.kept_indices(self.spec.layout, widths)
            if self.spec.grouped > 1:
                idx = idx[idx < self.spec.layout.extent // self.spec.grouped]
            if torch.equal(idx, torch.arange(idx.numel())):
                plan = ("narrow", int(idx.numel()))
            else:
                plan = ("index", idx.to(full.device))
            self._cache[key] = plan
        kind, value = plan
        if kind == "narrow":
            return full, None, full.narrow(self.spec.dim, 0, value)
        return full, value, full.index_select(self.spec.dim, value)


class SlicedRunner:
    """Runs ``space`` at hard widths with sliced weights (see the module docstring).

    ``supported`` tells whether slicing is possible for this space; ``reason`` says why
    not. Use ``with runner.widths(w): out = space(x)``; backward may run after the
    block (the autograd graph holds the slices).
    """

    def __init__(self, space, buckets: int = 0) -> None:
        self.space = space
        self.graph = space.graph
        self.buckets = int(buckets)
        #: per group, the ascending widths its tensors may be sliced to (see :func:`bucket_grid`)
        self.grids = {gid: bucket_grid(list(info.candidates), self.buckets) for gid, info in space.groups.items()}
        self.reason: str | None = None
        self._slots: dict[str, list[_Slot]] = {}
        self._edits: dict[str, list[tuple[nn.Module, object]]] = {}
        self._checked = False
        self._constants: list[ChannelConstants] = []
        try:
            self._constants = [ChannelConstants(gm, self.graph, tag) for tag, gm in self._graphs()]
        except Exception as exc:  # noqa: BLE001 - any failure means: use masks
            self.reason = f"the traced forward's channel literals cannot be tabled ({type(exc).__name__}: {exc})"

    @property
    def supported(self) -> bool:
        return self.reason is None

    def _graphs(self) -> list[tuple[str, fx.GraphModule]]:
        space = self.space
        graphs = [("eval", space.graph_eval)]
        if space._separate_train:
            graphs.append(("train", space.graph_train))
        return graphs

    def _plan(self, tag: str, gm: fx.GraphModule) -> tuple[list[_Slot], list[tuple[nn.Module, object]]]:
        if tag not in self._slots:
            slots, edits = [], []
            for spec in self.graph.slices:
                prefix, _, attr = spec.tensor.rpartition(".")
                try:
                    owner = gm.get_submodule(prefix) if prefix else gm
                except AttributeError:
                    continue  # a module only the other trace calls
                if attr in owner._parameters or attr in owner._buffers:
                    if (owner._parameters.get(attr) if attr in owner._parameters else owner._buffers.get(attr)) is not None:
                        slots.append(_Slot(owner, attr, spec, self.graph))
            for edit in self.graph.edits.values():
                try:
                    module = gm.get_submodule(edit.module)
                except AttributeError:
                    continue
                if type(module) is not nn.Module:  # an exported graph's holder of tensors reads no attributes
                    edits.append((module, edit))
            self._slots[tag], self._edits[tag] = slots, edits
        return self._slots[tag], self._edits[tag]

    def sliced_widths(self, widths: Mapping[str, int]) -> dict[str, int]:
        """The widths the tensors are cut to: each group's smallest grid width ``>= widths[gid]``."""
        out = {}
        for gid, w in widths.items():
            grid = self.grids.get(gid)
            out[gid] = next((b for b in grid if b >= w), grid[-1]) if grid else w
        return out

    @contextlib.contextmanager
    def widths(self, widths: Mapping[str, int]) -> Iterator[None]:
        """Within the block, ``space(x)`` runs the sub-net ``widths`` (missing groups: full)."""
        if self.reason is not None:
            raise RuntimeError(f"slimmable execution is not available: {self.reason}")
        slots, edits = [], []
        for tag, gm in self._graphs():  # both exported graphs: train() / eval() may switch inside the block
            more_slots, more_edits = self._plan(tag, gm)
            slots += more_slots
            edits += more_edits
        gates = self.space.gates()
        modes = {gid: (g.mode, g.hard_width) for gid, g in gates.items()}
        cut_to = self.sliced_widths(widths)
        saved_attrs = [(m, {a: m.__dict__[a] for a in _ATTRIBUTES if a in m.__dict__}) for m, _ in edits]
        swapped: list[tuple[_Slot, torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        saved_constants: list[tuple[ChannelConstants, list[int]]] = []
        try:
            windowed = any(widths[gid] < cut_to[gid] for gid in widths)
            for gid, gate in gates.items():
                if windowed and gid in widths and widths[gid] < gate.width:
                    # masks inside the buckets; a sliced group whose width IS its bucket gets an
                    # all-ones mask of its sliced length too, as a mask that concatenates it with
                    # a masked group (a concat's consumer) would otherwise fill in its full length
                    gate.set_mode("width", widths[gid])
                    gate.window = cut_to[gid] if cut_to[gid] < gate.width else None
                else:
                    gate.set_mode("max")  # no masks: the tensors themselves are narrow
            for slot in slots:
                full, idx, cut = slot.cut(self.graph, cut_to)
                if cut.shape == full.shape:
                    continue
                store = slot.owner._parameters if slot.is_param else slot.owner._buffers
                store[slot.attr] = cut
                swapped.append((slot, full, idx, cut))
            for module, edit in edits:
                update_attributes(module, edit, self.graph, cut_to)
            for table in self._constants:
                saved_constants.append((table, table.set(table.values(cut_to))))
            yield
        finally:
            for table, values in saved_constants:
                table.set(values)
            for slot, full, idx, cut in reversed(swapped):  # a weight cut along two dims: undo in reverse
                store = slot.owner._parameters if slot.is_param else slot.owner._buffers
                store[slot.attr] = full
                if not slot.is_param and idx is not None:  # a copy: write running stats back
                    with torch.no_grad():
                        full.index_copy_(slot.spec.dim, idx, cut)
            for module, attrs in saved_attrs:
                module.__dict__.update(attrs)
            for gid, (mode, width) in modes.items():
                gates[gid].window = None
                gates[gid].set_mode(mode, width if mode == "width" else None)

    @torch.no_grad()
    def check(self, widths: Mapping[str, int], rtol: float = 1e-4) -> bool:
        """Compare sliced and masked outputs on the example input (eval mode, no state change),
        in strict arithmetic (:func:`~dmcpfx.numerics.strict_numerics`: no TF32, no autocast,
        also when the caller runs under autocast), on the device the space lives on.

        Sets ``reason`` and returns False on a mismatch or an error.
        """
        if self.reason is not None:
            return False
        space = self.space
        modes = {gid: (g.mode, g.hard_width) for gid, g in space.gates().items()}
        device = next((p.device for p in space.parameters()), torch.device("cpu"))
        inputs = tuple(t.to(device) for t in space.example_inputs)
        dtype = next((p.dtype for p in space.parameters() if p.is_floating_point()), torch.float32)
        inputs = tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)
        try:
            space.set_widths(dict(widths))
            with strict_numerics():  # no TF32 / autocast: both sides in the parameters' dtype
                reference = run_eval(space, inputs)
                with self.widths(widths):
                    if not module_matches(space, inputs, reference, rtol):
                        self.reason = ("the sliced sub-net does not reproduce the masked one on the example input "
                                       f"(compared in strict {str(dtype).removeprefix('torch.')})")
        except Exception as exc:  # noqa: BLE001 - any failure means: use masks
            self.reason = f"the sliced sub-net failed on the example input ({type(exc).__name__}: {exc})"
        finally:
            for gid, (mode, width) in modes.items():
                space.gates()[gid].set_mode(mode, width if mode == "width" else None)
        return self.reason is None
