"""How the channels of one tensor map onto channel spaces (DESIGN.md section 2).

A *channel space* is a set of channels born together (a conv / linear output) that
must keep or lose channel ``j`` together. A tensor's channel dimension is described
by a :class:`Layout`: the dimension index, the list of space segments laid end to
end along it (concatenation makes several), and ``block`` — how many consecutive
elements of that dimension belong to one channel (a flatten that folds ``H*W``
positions per channel into features gives ``block = H*W``).

Values that carry no tracked channel layout are described by :data:`OPAQUE`
(a tensor whose channels we do not follow: the model input, the result of an
unsupported op) or a :class:`ParamRef` (a tensor read with ``get_attr``: a
parameter or buffer that can be sliced once we learn which of its dims is a
channel dim).
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Seg:
    """Channels ``[start, stop)`` of space ``space`` (an int id)."""

    space: int
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Layout:
    """Channel structure of dimension ``dim`` of one tensor.

    The dimension's extent is ``channels * block``; channel ``i`` (counted over the
    concatenated segments) occupies elements ``[i*block, (i+1)*block)``.
    """

    dim: int
    segs: tuple[Seg, ...]
    block: int = 1

    @property
    def channels(self) -> int:
        return sum(s.length for s in self.segs)

    @property
    def extent(self) -> int:
        return self.channels * self.block

    @property
    def spaces(self) -> set[int]:
        return {s.space for s in self.segs}

    def at(self, dim: int) -> "Layout":
        return replace(self, dim=dim)

    def with_block(self, block: int) -> "Layout":
        return replace(self, block=block)


class Opaque:
    """A tensor whose channels are not tracked (model input, unsupported op output)."""

    _instance: "Opaque | None" = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OPAQUE"


OPAQUE = Opaque()


@dataclass(frozen=True)
class ParamRef:
    """A tensor read with ``get_attr`` (or a view of one).

    ``dims[t]`` is the parameter dimension that tensor dimension ``t`` shows, or
    None for a dimension the view added.
    """

    target: str
    dims: tuple[int | None, ...]


def iter_infos(info, kinds):
    """Yield every value of type ``kinds`` inside a (possibly nested) info value."""
    if isinstance(info, kinds):
        yield info
    elif isinstance(info, (tuple, list)):
        for item in info:
            yield from iter_infos(item, kinds)
    elif isinstance(info, dict):
        for item in info.values():
            yield from iter_infos(item, kinds)


def iter_layouts(info):
    """Yield every :class:`Layout` inside a (possibly nested) info value."""
    return iter_infos(info, Layout)


def iter_paramrefs(info):
    """Yield every :class:`ParamRef` inside a (possibly nested) info value."""
    return iter_infos(info, ParamRef)


@dataclass(frozen=True)
class SizeRef:
    """An int computed from the channel count of tracked tensors (``x.size(1)``, ``C // 2``).

    If the count changes after pruning, so does this value: it may only shape the
    very tensors it was read from.
    """

    layouts: tuple[Layout, ...]


@dataclass(frozen=True)
class ShapeRef:
    """``x.shape`` / ``x.size()`` of a tensor whose channel dim is tracked."""

    layout: Layout
    ndim: int


def iter_sizerefs(info):
    """Yield every :class:`SizeRef` / :class:`ShapeRef` inside a nested info value."""
    return iter_infos(info, (SizeRef, ShapeRef))
