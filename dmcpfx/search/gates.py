"""The Markov channel gate: one per prunable channel group (DESIGN.md section 3).

A group of ``C`` channels is split into ``min_ch`` always-kept channels followed by
``n`` blocks of ``g`` channels. Block ``k`` is kept only if block ``k-1`` is kept,
with transition probability ``p_k = sigmoid(alpha_k)``; its marginal keep
probability is ``P_k = prod_{i<=k} p_i`` and the expected width is
``E[c] = min_ch + g * sum_k P_k``.

Channels are addressed in *Markov order*: logical channel ``l`` is physical channel
``order[l]``. For plain groups ``order`` is the identity (the LEADING channels are
kept); for groups coupled to a grouped convolution with ``G`` groups the order
interleaves the groups so that keeping the first ``w`` logical channels keeps the
first ``w / G`` channels of each convolution group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("max", "min", "width", "expected", "off")


@dataclass(frozen=True)
class GateSplit:
    """How a group of ``width`` channels splits into Markov blocks.

    ``n`` blocks follow ``min_ch``: ``n - 1`` of ``g`` channels and a last one of
    ``tail`` channels (``tail == g`` unless the width is not a multiple of the
    divisor; then the short tail holds the remainder, so every candidate except the
    full width stays a multiple of the divisor). ``candidates`` are the widths a
    Markov sample can take (``min_ch`` plus the first ``k`` blocks); the last one is
    ``width``.
    """

    width: int
    min_ch: int
    g: int
    n: int
    divisor: int
    tail: int = 0

    @property
    def blocks(self) -> list[int]:
        """Channels per Markov block, length ``n``."""
        if self.n == 0:
            return []
        return [self.g] * (self.n - 1) + [self.tail or self.g]

    @property
    def candidates(self) -> list[int]:
        out = [self.min_ch]
        for size in self.blocks:
            out.append(out[-1] + size)
        return out

    def widths_at(self, kept: torch.Tensor) -> torch.Tensor:
        """Width for each count of kept blocks (an int64 tensor of any shape)."""
        return torch.tensor(self.candidates, dtype=torch.int64)[kept]


def split_channels(width: int, *, min_ratio: float = 0.1, step: float = 0.1, divisor: int = 1) -> GateSplit:
    """Split ``width`` channels into ``min_ch + n * g`` (official defaults: ratio 0.1, step 0.1).

    ``g = floor(step * C)`` rounded down to a multiple of ``divisor`` (at least
    ``divisor``), ``n = round((1 - min_ratio) / step)`` blocks at most, fewer when the
    group is too narrow for ``min_ch`` to stay at or above
    ``max(divisor, ceil(min_ratio * C))``. ``n == 0`` means the group cannot be pruned.
    """
    if width < 1:
        raise ValueError(f"a channel group needs at least one channel, got {width}")
    if not (0.0 < min_ratio <= 1.0) or not (0.0 < step <= 1.0):
        raise ValueError(f"min_ratio and step must be in (0, 1], got {min_ratio}, {step}")
    divisor = max(1, int(divisor))
    tail = width % divisor
    base = width - tail  # the largest multiple of the divisor
    g = max(divisor, (int(math.floor(step * width + 1e-9)) // divisor) * divisor)
    n_max = int(round((1.0 - min_ratio) / step))
    floor_ch = max(divisor, int(math.ceil(min_ratio * width - 1e-9)))
    n = max(0, min(n_max, (base - floor_ch) // g)) if base >= floor_ch else 0
    if tail and base >= floor_ch:
        return GateSplit(width=width, min_ch=base - n * g, g=g, n=n + 1, divisor=divisor, tail=tail)
    if tail:
        return GateSplit(width=width, min_ch=width, g=g, n=0, divisor=divisor)
    return GateSplit(width=width, min_ch=width - n * g, g=g, n=n, divisor=divisor, tail=g)


class MarkovGate(nn.Module):
    """Markov gate of one channel group; ``forward()`` returns the channel mask.

    The mask is a float tensor of shape ``(C,)`` in PHYSICAL channel order, or
    ``None`` when every channel is fully kept (mode ``max`` / ``off``), which callers
    treat as all ones.
    """

    def __init__(self, split: GateSplit, order: torch.Tensor | None = None):
        super().__init__()
        self.split = split
        self.alpha = nn.Parameter(torch.zeros(split.n))
        if order is None:
            order = torch.arange(split.width)
        if sorted(order.tolist()) != list(range(split.width)):
            raise ValueError("gate order must be a permutation of the group's channels")
        self.register_buffer("order", order.clone().long(), persistent=False)
        # on the gate's device, so that no step copies a host list to the GPU (a stream sync)
        self.register_buffer("block_sizes", torch.tensor(split.blocks, dtype=torch.int64), persistent=False)
        self.mode = "max"
        self.hard_width = split.width
        #: sliced extent (slimmable execution with buckets): the hard mask covers only the channels
        #: ``kept_indices(window)`` that a runner sliced the tensors to; None: all ``C`` channels
        self.window: int | None = None
        self._hard_masks: dict[tuple[int, int | None, torch.device], torch.Tensor] = {}  # see forward()

    # --- the chain (DESIGN.md section 3) -------------------------------------------
    @property
    def width(self) -> int:
        return self.split.width

    @property
    def candidates(self) -> list[int]:
        return self.split.candidates

    def transitions(self) -> torch.Tensor:
        """``p_k = sigmoid(alpha_k)``, shape ``(n,)``."""
        return torch.sigmoid(self.alpha)

    def marginals(self) -> torch.Tensor:
        """``P_k = prod_{i<=k} p_i``, shape ``(n,)``: probability that block k is kept."""
        return torch.cumprod(self.transitions(), dim=0)

    def _block_sizes(self) -> torch.Tensor:
        return self.block_sizes.to(device=self.alpha.device, dtype=self.alpha.dtype)

    def expected_width(self) -> torch.Tensor:
        """``E[c] = min_ch + sum_k g_k P_k`` (channels; ``g_k = g`` but for a short tail)."""
        return self.split.min_ch + (self._block_sizes() * self.marginals()).sum()

    @torch.no_grad()
    def sample(self, generator: torch.Generator | None = None) -> int:
        """Walk the chain: keep blocks until the first failed Bernoulli; returns a width."""
        p = self.transitions().detach().float().cpu()
        u = torch.rand(p.shape, generator=generator)
        kept = 0
        for k in range(p.numel()):
            if u[k] >= p[k]:
                break
            kept += 1
        return self.split.candidates[kept]

    # --- modes ------------------------------------------------------------------------
    def set_mode(self, mode: str, width: int | None = None) -> None:
        """``max`` | ``min`` | ``width`` (hard prefix of ``width`` channels) | ``expected`` | ``off``."""
        if mode not in MODES:
            raise ValueError(f"unknown gate mode {mode!r}; expected one of {MODES}")
        if mode == "width":
            if width is None or not (1 <= int(width) <= self.split.width):
                raise ValueError(f"gate width must be in [1, {self.split.width}], got {width}")
            self.hard_width = int(width)
        self.mode = mode

    def current_width(self) -> int:
        """Width kept by the hard modes (``max``/``off``: full, ``min``: ``min_ch``)."""
        if self.mode == "min":
            return self.split.min_ch
        if self.mode == "width":
            return self.hard_width
        return self.split.width

    def logical_mask(self) -> torch.Tensor | None:
        """Mask in Markov (logical) order, shape ``(C,)``, or None for all ones."""
        if self.mode in ("max", "off"):
            return None
        device = self.alpha.device
        if self.mode == "expected":
            marg = self.marginals()
            head = torch.ones(self.split.min_ch, device=device, dtype=marg.dtype)
            sizes = self.block_sizes.to(device)
            tail = marg.repeat_interleave(sizes, output_size=self.split.width - self.split.min_ch)  # no size sync
            return torch.cat([head, tail])
        keep = self.current_width()
        mask = torch.zeros(self.split.width, device=device)
        mask[:keep] = 1.0
        return mask

    def forward(self) -> torch.Tensor | None:
        """The physical mask: a fresh, differentiable tensor in ``expected`` mode; in the hard
        modes a constant built once per ``(width, window, device)`` and reused (callers never write
        into it), so a sub-net pays no mask-building kernels after its first run. (Not under
        ``inference_mode``: autograd could not save such a tensor later.)

        With a ``window`` (hard modes only), the mask has shape ``(window,)``: the full mask at
        ``kept_indices(window)``, for tensors that a runner sliced to those channels."""
        if self.mode in ("max", "off"):
            return None
        hard = self.mode != "expected"
        window = self.window if hard else None
        cache = hard and not torch.is_inference_mode_enabled()  # an inference tensor
        key = (self.current_width(), window, self.alpha.device)
        if cache and key in self._hard_masks:
            return self._hard_masks[key]
        mask = self.logical_mask()
        physical = torch.empty_like(mask).index_copy(0, self.order.to(mask.device), mask)
        if window is not None:
            physical = physical[self.kept_indices(window).to(mask.device)]
        if cache:
            self._hard_masks[key] = physical
        return physical

    def kept_indices(self, width: int) -> torch.Tensor:
        """Physical indices kept at ``width``, sorted ascending, shape ``(width,)``."""
        return torch.sort(self.order[:width]).values

    def extra_repr(self) -> str:
        s = self.split
        return f"C={s.width}, min_ch={s.min_ch}, g={s.g}, n={s.n}, mode={self.mode}"


class StackedExpectedWidths:
    """``E[c]`` of many gates at once: a ``(G,)`` float64 tensor in ``gates`` order, differentiable
    wrt every alpha, in a handful of kernels however many gates there are.

    Equal to ``torch.stack([g.expected_width() for g in gates])`` (to float64 rounding): the
    marginals ``P_k = prod_{i<=k} sigmoid(alpha_i)`` are ``exp`` of a cumulative sum of
    ``logsigmoid(alpha)`` over the concatenated alphas, minus its value before each gate's first
    alpha. The index tensors are built once per device.
    """

    def __init__(self, gates):
        self.gates = list(gates)
        owner, first, sizes = [], [], []
        for i, gate in enumerate(self.gates):
            start = len(owner)
            owner += [i] * gate.alpha.numel()
            first += [start] * gate.alpha.numel()
            sizes += gate.split.blocks
        self._cpu = (torch.tensor(owner, dtype=torch.int64), torch.tensor(first, dtype=torch.int64),
                     torch.tensor(sizes, dtype=torch.float64),
                     torch.tensor([float(g.split.min_ch) for g in self.gates], dtype=torch.float64))
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __call__(self) -> torch.Tensor:
        if not self.gates:
            return torch.zeros(0, dtype=torch.float64)
        alphas = torch.cat([g.alpha.reshape(-1) for g in self.gates]).double()
        if alphas.device not in self._on:
            self._on[alphas.device] = tuple(t.to(alphas.device) for t in self._cpu)
        owner, first, sizes, min_ch = self._on[alphas.device]
        log_p = F.logsigmoid(alphas)
        running = log_p.cumsum(0)
        before = (running - log_p)[first]  # the running sum before each gate's first alpha
        marginals = torch.exp(running - before)
        return min_ch.index_add(0, owner, sizes * marginals)
