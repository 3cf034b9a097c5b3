"""Accuracy of a plain model on a loader: top-1 / top-5 (percent) and mean cross-entropy.

Used by :func:`dmcpfx.product.retrain.retrain` after every epoch and by the benchmarks. Under
torch.distributed with a sharded loader the counts are summed over the ranks.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .amp import autocast_for, to_device
from .batches import first_batch_fails_on
from .errors import ConfigError
from .data import ShardSampler
from .labels import IGNORE_INDEX, checked_loss, host_labels, logits_tensor

__all__ = ["evaluate", "sum_over_ranks"]


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all ranks (identity outside torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _is_sharded(loader: Iterable) -> bool:
    """Whether ``loader`` reads only this rank's share of its data set."""
    from torch.utils.data import DistributedSampler

    return isinstance(getattr(loader, "sampler", None), (DistributedSampler, ShardSampler))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str | None = None,
    *,
    amp: str | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy (nats) of ``model`` on ``loader``.

    ``loader`` yields ``(images (N, C, H, W), labels (N,) int64)``. The model is put in
    eval mode and restored to its previous mode afterwards. When the loader is
    sharded over ranks (DistributedSampler / :class:`dmcpfx.data.ShardSampler`) the
    counts are summed over all ranks, so every rank returns the global metrics.
    With fewer than 5 classes, top-5 is top-k with k = number of classes.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = count = 0.0
    try:
        for i, batch in enumerate(loader):
            host = host_labels(batch)
            images, labels = to_device(batch, device, channels_last=False)
            with autocast_for(amp, device), first_batch_fails_on("evaluate", images, i):
                logits = model(images)
            logits = logits_tensor(logits, "evaluate").float()
            loss_sum += checked_loss(F.cross_entropy, logits, labels, "evaluate", host=host, reduction="sum").item()
            k = min(5, logits.shape[1])
            topk = logits.topk(k, dim=1).indices
            hits = topk.eq(labels[:, None])
            scored = labels != IGNORE_INDEX  # a void pixel is neither a hit nor a miss
            correct1 += (hits[:, 0] & scored).sum().item()
            correct5 += (hits.any(dim=1) & scored).sum().item()
            count += scored.sum().item()
    finally:
        model.train(was_training)
    if _is_sharded(loader):
        correct1, correct5, loss_sum, count = sum_over_ranks([correct1, correct5, loss_sum, count], device)
    if count == 0:
        raise ConfigError(f"evaluate: the validation loader yielded no samples (or only labels {IGNORE_INDEX}, the ignored label)")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count}
