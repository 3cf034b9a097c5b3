"""The records of a channel analysis (DESIGN.md section 2): tensors to slice, module
attributes to edit, conv/linear calls to count, mask and constant sites, groups."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch

from .layout import Layout, Seg

Width = Union[int, torch.Tensor]


# --- records ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceSpec:
    """Slice dimension ``dim`` of tensor ``tensor`` (a qualified parameter/buffer name).

    ``grouped > 1``: the dimension holds the per-group input channels of a grouped
    convolution with that many groups; the kept local indices are the ones kept in
    group 0 (every group keeps the same relative positions).
    """

    tensor: str
    dim: int
    layout: Layout
    role: str
    grouped: int = 1


@dataclass(frozen=True)
class ModuleEdit:
    """A module whose attributes (in/out_channels, num_features, ...) follow its slices."""

    module: str
    kind: str  # conv | dwconv | linear | batchnorm | layernorm | instancenorm | prelu
    layout: Layout | None = None


@dataclass(frozen=True)
class MacRecord:
    """One conv/linear call: MACs = spatial * kernel * (c_in / groups) * c_out.

    ``spatial``: output elements per output channel for ONE image (MACs are per image,
    whatever the batch of the example input);
    ``kernel``: product of the kernel size (1 for linear). ``kind`` is ``conv``,
    ``gconv`` (grouped: c_in / groups), ``dwconv`` (depthwise: c_in / groups == 1)
    or ``linear``. A side whose layout is None keeps its full width.
    """

    module: str
    kind: str
    spatial: int
    kernel: int
    groups: int
    in_channels: int
    out_channels: int
    in_layout: Layout | None
    out_layout: Layout | None
    #: a channel dim among the rows of the product (a Linear over the tokens of a
    #: ``(N, C, tokens)`` tensor: ResMLP, MLP-Mixer): ``spatial`` then counts per kept channel
    spatial_layout: Layout | None = None


@dataclass(frozen=True)
class MaskSite:
    """Where the instrumented graph masks channels: argument ``arg`` of node ``node``.

    ``kind`` is ``consumer`` (a conv/linear input: multiply by the mask) or
    ``layernorm`` (a LayerNorm over channels: statistics over kept channels only).
    ``graph`` is ``eval`` or ``train`` (which traced graph the node lives in).
    """

    graph: str
    node: str
    arg: int
    layout: Layout
    kind: str


@dataclass(frozen=True)
class ConstantEntry:
    """One literal channel count in a node's arguments.

    ``arg``: the argument index; ``index``: the position inside a list argument (None
    for a scalar argument). After pruning the literal becomes
    ``kept_extent(layout) // divide``.
    """

    arg: int
    index: int | None
    layout: Layout
    divide: int = 1


@dataclass(frozen=True)
class ConstantSite:
    """A node whose arguments hold channel counts as literals (a view size, a split size,
    a depthwise conv's ``groups``, a GroupNorm's ``num_groups``, a LayerNorm's shape).

    ``kind`` is ``literal`` (patch the entries) or ``split`` (a ``split.Tensor`` that
    becomes ``split_with_sizes`` with the entries as sizes).
    """

    graph: str
    node: str
    kind: str
    entries: tuple[ConstantEntry, ...]


@dataclass(frozen=True)
class Member:
    """A module (or parameter) touching a group: role out / in / norm / param."""

    module: str
    role: str
    tensor: str


@dataclass
class Group:
    """A set of channel spaces that keep or lose channel j together.

    ``order`` lists physical channels in Markov order (None: identity, i.e. the
    leading channels are kept); ``divisor``: structural constraint on widths.
    """

    id: str
    width: int
    spaces: list[int]
    divisor: int = 1
    order: list[int] | None = None
    members: list[Member] = field(default_factory=list)
    frozen_reasons: list[str] = field(default_factory=list)

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    @property
    def prunable(self) -> bool:
        return not self.frozen

    def kept_indices(self, width: int) -> torch.Tensor:
        """Physical channel indices kept at ``width``, ascending, shape ``(width,)``."""
        if self.order is None:
            return torch.arange(width)
        return torch.sort(torch.tensor(self.order[:width])).values


# --- the builder -------------------------------------------------------------------------


def segment_boundaries(layout: Layout) -> set[int]:
    """Interior channel offsets where one segment ends and the next begins."""
    cuts, offset = set(), 0
    for seg in layout.segs[:-1]:
        offset += seg.length
        cuts.add(offset)
    return cuts
