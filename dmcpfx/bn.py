"""BatchNorm statistics during a DMCP search (DESIGN.md section 5, "BatchNorm").

Sub-nets share the BatchNorm layers (official). In train mode a BatchNorm normalizes
with the BATCH statistics; its running buffers are only read in eval mode. So which
forwards update the running buffers changes no gradient of the search, only what an
evaluation with the supernet's own statistics sees:

- the architecture forward (max width, gates in ``expected`` mode) scales activations
  by marginals as small as ``0.5^9``: it must never touch the buffers
  (:class:`FrozenStats` saves and restores them around it);
- the min and random sub-nets see other widths; by default (``bn_stats="max"``) they
  leave the buffers alone too, so the running statistics track the max net only and the
  supernet at max width can be evaluated with its own statistics. ``bn_stats="all"``
  lets every weight-step forward update them (the official code's behaviour).

Before any evaluation of a sub-net (or of the supernet) the statistics are re-estimated
on a few training batches anyway (:func:`recalibrate_bn`, official: 5 batches).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn

__all__ = ["BN_STATS", "FrozenStats", "bn_modules", "recalibrate_bn"]

#: which weight-step forwards update the BatchNorm running statistics
BN_STATS = ("max", "all")


def bn_modules(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm of ``module`` that tracks running statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class FrozenStats:
    """Save/restore of every BatchNorm buffer (``running_mean``, ``running_var``,
    ``num_batches_tracked``) of a module; the backups are allocated once and reused.

    ``with frozen():`` -- the buffers after the block are bit-identical to before it
    (forwards inside still normalize with batch statistics in train mode, so gradients
    are unchanged). Buffers that a slimmable runner swapped for slices are restored
    through the full tensors, which is where the slices write.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._targets: list[torch.Tensor] = []
        self._backups: list[torch.Tensor] = []
        self._refresh()

    def _refresh(self) -> None:
        targets = []
        for m in bn_modules(self.module):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                buf = m._buffers.get(name)
                if buf is not None:
                    targets.append(buf)
        if len(targets) != len(self._targets) or any(a is not b for a, b in zip(targets, self._targets)):
            self._targets = targets
            self._backups = [t.detach().clone() for t in targets]

    def save(self) -> None:
        """Copy the current buffers into the backups."""
        self._refresh()  # .to(device) or load_state_dict may have replaced the tensors
        with torch.no_grad():
            if self._targets:
                torch._foreach_copy_(self._backups, self._targets)

    def restore(self) -> None:
        """Write the backups back into the buffers (in place, through ``.data``).

        ``.data`` keeps the buffers' autograd version counters unchanged: a train-mode
        batch norm saves its running buffers for backward (its backward never reads
        them), so a tracked in-place write between forward and backward would fail.
        """
        with torch.no_grad():
            if self._targets:
                torch._foreach_copy_([t.data for t in self._targets], self._backups)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.save()
        try:
            yield
        finally:
            self.restore()


@torch.no_grad()
def recalibrate_bn(space: nn.Module, loader: Iterable, batches: int, *, device: torch.device | None = None,
                   amp: str | None = None, channels_last: bool = False) -> None:
    """Re-estimate every BatchNorm's running statistics at the space's CURRENT widths.

    Running stats are reset and averaged (cumulative, ``momentum=None``) over ``batches``
    batches of ``loader`` (inputs ``(N, C, H, W)``) with only the norm layers in train
    mode. Fewer batches than asked (a short loader) is fine; zero batches is an error.
    """
    from .errors import ConfigError
    from .search_step import _amp_dtype, _autocast, to_device

    device = device or next(space.parameters()).device
    bns = bn_modules(space)
    flags = {m: m.training for m in space.modules()}
    momenta = {m: m.momentum for m in bns}
    space.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    dtype = _amp_dtype(amp)
    seen = 0
    try:
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            x, _ = to_device(batch, device, channels_last)
            with _autocast(device, dtype):
                space(x)
            seen += 1
    finally:
        for m, flag in flags.items():
            m.train(flag)
        for m, mom in momenta.items():
            m.momentum = mom
    if seen == 0 and bns:
        raise ConfigError("recalibrate_bn() got an empty calibration loader")


def bn_state(module: nn.Module) -> list[tuple[Any, dict[str, torch.Tensor]]]:
    """A copy of every BatchNorm's state (for :func:`load_bn_state`)."""
    return [(m, {k: v.clone() for k, v in m.state_dict().items()}) for m in bn_modules(module)]


def load_bn_state(state: list[tuple[Any, dict[str, torch.Tensor]]]) -> None:
    for m, sd in state:
        m.load_state_dict(sd)
