"""Evaluation of a SearchSpace sub-net (or of the supernet) with clean BatchNorm statistics.

:func:`evaluate_space` re-estimates the BatchNorm statistics at the evaluated widths on
``calib_batches`` TRAINING batches first (official: 5; :func:`dmcpfx.search.bn.recalibrate_bn`)
and restores the supernet's own statistics afterwards. ``calib_batches=0`` evaluates with
the supernet's own running statistics, and must be asked for explicitly.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .bn import FrozenStats, batchnorm_sites, recalibrate_bn
from ..errors import ConfigError
from ..amp import amp_dtype, autocast, to_device
from ..batches import model_fails_on
from .step import gate_state, restore_gate_state
from ..labels import IGNORE_INDEX, checked_loss, host_labels, logits_tensor

__all__ = ["evaluate_space"]


def _bn_tracked(space: nn.Module) -> bool:
    return bool(batchnorm_sites(space))


@torch.no_grad()
def evaluate_space(
    space: nn.Module,
    loader: Iterable,
    *,
    widths: Mapping[str, int] | None = None,
    mode: str = "max",
    device: str | torch.device | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    max_batches: int | None = None,
    calib_loader: Iterable | None = None,
    calib_batches: int = 5,
    all_reduce: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy of the space in eval mode.

    The sub-net is ``widths`` (hard prefix masks, missing groups at full width) when given,
    else the gate ``mode`` (``max``, ``min`` or ``expected``). The BatchNorm statistics are
    first re-estimated at that sub-net on ``calib_batches`` batches of ``calib_loader``
    (TRAINING data; see :func:`dmcpfx.search.bn.recalibrate_bn`); ``calib_batches=0`` keeps the
    supernet's own statistics. Without a ``calib_loader`` the own statistics are used, with a
    warning unless ``calib_batches=0`` says so on purpose. The
    space's own statistics, gate modes and train/eval flag are restored afterwards, so
    evaluating never changes the supernet.
    ``all_reduce=True`` (under torch.distributed): sums over every rank's loader -- right
    for sharded val loaders, and harmless for unsharded ones (same ratios).
    Returns ``{"loss": mean CE (nats), "top1": accuracy in percent [0, 100], "n": samples}`` --
    the units of :func:`dmcpfx.accuracy.evaluate` (a plain model's top-1/top-5).
    """
    if calib_batches < 0:
        raise ConfigError(f"calib_batches must be >= 0, got {calib_batches}")
    if calib_batches > 0 and calib_loader is None and _bn_tracked(space):
        warnings.warn(
            f"evaluate_space(): no calib_loader, so the BatchNorm statistics are NOT re-estimated (calib_batches="
            f"{calib_batches} asked for); pass calib_loader= (training data), or calib_batches=0 to use the "
            "supernet's own statistics on purpose",
            stacklevel=2,
        )
    device = torch.device(device) if device is not None else next(space.parameters()).device
    saved_gates = gate_state(space)
    was_training = space.training
    bn_backup = None
    try:
        if widths is not None:
            space.set_widths(dict(widths))
        else:
            space.set_mode(mode)
        if calib_loader is not None and calib_batches > 0:
            bn_backup = FrozenStats(space)
            bn_backup.save()
            recalibrate_bn(space, calib_loader, calib_batches, device=device, amp=amp, channels_last=channels_last)
        space.eval()
        dtype = amp_dtype(amp)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        n = torch.zeros((), dtype=torch.int64, device=device)  # scored predictions (void labels left out)
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = to_device(batch, device, channels_last)
            with autocast(device, dtype), model_fails_on("evaluate", x, space.example_inputs[0]):
                out = space(x)
            out = logits_tensor(out, "evaluate").float()
            loss_sum += checked_loss(F.cross_entropy, out, y, "evaluate", host=host_labels(batch),
                                     reduction="sum").double()
            scored = y != IGNORE_INDEX
            correct += ((out.argmax(1) == y) & scored).sum()
            n += scored.sum()
    finally:
        space.train(was_training)
        restore_gate_state(space, saved_gates)
        if bn_backup is not None:
            bn_backup.restore()
    totals = torch.stack([loss_sum, correct.double(), n.double()])
    if all_reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    loss_total, correct_total, n_total = totals.tolist()
    if n_total == 0:
        raise ConfigError(f"evaluate_space() got an empty loader (or only labels {IGNORE_INDEX}, the ignored label)")
    return {"loss": loss_total / n_total, "top1": 100.0 * correct_total / n_total, "n": int(n_total)}

