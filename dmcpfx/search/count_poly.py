"""The MACs and parameter counts as polynomials in the group widths, evaluated in a few kernels.

``ChannelGraph.flops`` / ``params`` (DESIGN.md section 4) walk every layer in Python; with the
expected widths ``E[c]`` as tensors, that is thousands of scalar tensor operations per
architecture step (about 5,700 profiler events on ResNet-50), which on a GPU is thousands of
kernel launches for a number. Both counts are sums of products of affine forms of the widths
(a layer's kept input times kept output channels, times a kept spatial extent), so they are a
polynomial in the widths. :class:`CountPolynomial` obtains that polynomial by running the
graph's own counting code ONCE on symbolic widths (:class:`Poly`), and evaluates it on a
``(G,)`` tensor of widths with one gather, product and dot per degree.

The result equals the graph's count at any widths, integer or expected (the test suite checks
both, and the gradients, over zoo models); exact integer counts keep using the graph itself.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

import torch

__all__ = ["CountPolynomial", "Poly"]

Monomial = tuple[int, ...]  # sorted variable indices, with repeats (x0*x0 -> (0, 0))


class Poly:
    """A sparse polynomial with exact (Fraction) coefficients: ``{monomial: coefficient}``.

    Supports what the graph's counting code does to a width: ``+``, ``*`` (by a number or a
    Poly) and ``/`` by a number.
    """

    __slots__ = ("terms",)

    def __init__(self, terms: dict[Monomial, Fraction] | None = None):
        self.terms = {m: c for m, c in (terms or {}).items() if c != 0}

    @classmethod
    def var(cls, index: int) -> "Poly":
        return cls({(index,): Fraction(1)})

    @staticmethod
    def _lift(other: Any) -> "Poly":
        if isinstance(other, Poly):
            return other
        if isinstance(other, (int, Fraction)) and not isinstance(other, bool):
            return Poly({(): Fraction(other)})
        if isinstance(other, float) and other.is_integer():
            return Poly({(): Fraction(int(other))})
        raise TypeError(f"a count polynomial cannot take {type(other).__name__} {other!r}")

    def __add__(self, other: Any) -> "Poly":
        out = dict(self.terms)
        for m, c in self._lift(other).terms.items():
            out[m] = out.get(m, Fraction(0)) + c
        return Poly(out)

    __radd__ = __add__

    def __mul__(self, other: Any) -> "Poly":
        out: dict[Monomial, Fraction] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in self._lift(other).terms.items():
                m = tuple(sorted(m1 + m2))
                out[m] = out.get(m, Fraction(0)) + c1 * c2
        return Poly(out)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "Poly":
        if not isinstance(other, int) or isinstance(other, bool) or other == 0:
            raise TypeError(f"a count polynomial divides by a non-zero integer only, got {other!r}")
        return Poly({m: c / other for m, c in self.terms.items()})


class CountPolynomial:
    """``count(widths)`` of a counting function, as a polynomial in the widths of ``group_ids``.

    ``count``: a function of ``{group id: width}`` (``ChannelGraph.flops`` or ``params``);
    groups not named keep their full width. :meth:`__call__` takes a ``(G,)`` tensor of widths
    in ``group_ids`` order and returns a 0-dim tensor of its dtype and device, differentiable.
    """

    def __init__(self, count, group_ids: Sequence[str]):
        self.group_ids = list(group_ids)
        total = Poly._lift(count({gid: Poly.var(i) for i, gid in enumerate(self.group_ids)}))
        self.constant = float(total.terms.get((), 0))
        by_degree: dict[int, list[tuple[Monomial, Fraction]]] = {}
        for m, c in total.terms.items():
            if m:
                by_degree.setdefault(len(m), []).append((m, c))
        #: per degree: (indices (M, degree) int64, coefficients (M,) float64), on the CPU
        self.terms = {d: (torch.tensor([m for m, _ in items], dtype=torch.int64),
                          torch.tensor([float(c) for _, c in items], dtype=torch.float64))
                      for d, items in sorted(by_degree.items())}
        self._on: dict[tuple, tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]] = {}

    def _terms_on(self, like: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The constant and the terms on ``like``'s device and dtype, copied there once."""
        key = (like.device, like.dtype)
        if key not in self._on:
            self._on[key] = (torch.tensor(self.constant, dtype=like.dtype).to(like.device),
                             [(i.to(like.device), c.to(like.device, like.dtype)) for i, c in self.terms.values()])
        return self._on[key]

    def __call__(self, widths: torch.Tensor) -> torch.Tensor:
        if widths.shape != (len(self.group_ids),):
            raise ValueError(f"expected {len(self.group_ids)} widths, got shape {tuple(widths.shape)}")
        total, terms = self._terms_on(widths)
        for index, coeff in terms:
            total = total + (coeff * widths[index].prod(dim=1)).sum()
        return total
