"""The DMCP search loop (DESIGN.md section 5, official recipe as the default).

One *iteration* on a batch ``(x, y)``:

1. **weight step** (every iteration): four sub-nets, gradients accumulated, ONE optimizer
   step -- the max width (cross-entropy with the labels), the min width and
   ``num_random`` random sub-nets. During warm-up a random sub-net draws every group's
   width uniformly from its candidates; after warm-up it is instead a Markov sample of
   the gates with probability ``p`` (:mod:`dmcpfx.search.schedule`: official ``1 - 0.9999^s``,
   ``s`` = steps since the architecture phase began; a linear ramp as an option). The
   non-max sub-nets learn from the max net's DETACHED logits (KL divergence, in-place
   distillation).
2. **architecture step** (after the first ``warmup_epochs``, every iteration, same batch):
   gates in ``expected`` mode at max width, ``loss = CE + budget_weight * budget_loss``
   (:func:`dmcpfx.search.budget.budget_loss`), gradient wrt the alphas only, SGD (nesterov,
   momentum 0.9, no weight decay) with lr cosine from ``arch_lr`` to ``arch_min_lr`` over
   the architecture phase. It leaves the BatchNorm running statistics bit-identical
   (:mod:`dmcpfx.search.bn`); by default only the max net of the weight step updates them.

Weights use SGD nesterov (momentum 0.9) with a per-step cosine schedule from ``lr`` to
``min_lr`` over the whole search, weight decay ``weight_decay`` on conv/linear weights and
none on norm weights and biases. Every option and its default is in
:class:`~dmcpfx.search.options.SearchOptions`; the official DMCP values (Zx55/dmcp
``config/res50/dmcp.yaml``: lr 0.5 -> 0.08, arch lr 0.5 -> 0.1, flop loss weight 0.1,
4 sub-nets, KL temperature 1, MobileNetV2 weight decay 4e-5) are in the ImageNet recipes.

Files (``run_dir``, written by rank 0 only): ``metrics.jsonl`` (one JSON object per line:
``kind`` = ``step`` every ``log_interval`` steps, ``epoch`` after each epoch) and
``checkpoint.pt`` (atomic, after each epoch: weights + alphas, both optimizers and
schedulers, every RNG state, epoch and step). ``resume=True`` continues from the last
checkpoint and reaches the same result as an uninterrupted run (same seed, CPU).

Under ``torchrun`` the same call runs data-parallel: the space is wrapped in DDP with the
alphas excluded; alpha gradients are all-reduced by hand (they are unused in the weight
step), so alphas stay bit-identical across ranks; the sub-net sampling generator is
seeded identically on every rank; a plain ``DataLoader`` is rebuilt with a
``DistributedSampler``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..harness import epochs, resolve_device
from ..training import distributed_context
from .options import SearchOptions
from .metric import resolve_budget
from .result import SearchResult
from .run import SearchRun
from .space import check_space

__all__ = ["search"]


def search(
    space: nn.Module,
    train_loader: Iterable,
    options: SearchOptions | None = None,
    *,
    val_loader: Iterable | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    callback: Callable[[dict], Any] | None = None,
    **option_values: Any,
) -> SearchResult:
    """Run the DMCP search on ``space`` (from ``dmcpfx.instrument``) in place.

    Args:
        space: the SearchSpace; trained in place (weights and alphas), moved to ``device``.
        train_loader: yields ``(inputs, labels)``; must have ``len()``. Under torchrun a
            plain DataLoader is rebuilt with a DistributedSampler (per-rank batch size).
        options: a :class:`~dmcpfx.search.options.SearchOptions` (the config's ``search:``
            section; default: its defaults), updated by ``option_values``.
        **option_values: any field of ``SearchOptions`` by name, e.g. ``target=0.5``
            (a ratio of the full model, or absolute MACs per image: ``2e9``, ``"2G"``),
            ``epochs=8``, ``lr=0.2``, ``alpha_init="zero"``; the instrument fields
            (``divisor``, ``min_ratio``, ``step``) are the space's and are ignored here.
            ``target_flops=`` still works, with a DeprecationWarning.
        val_loader: if given, the max-width net is evaluated after every epoch (summed
            over ranks), its BatchNorm statistics first re-estimated on ``calib_batches``
            training batches (official: 5; the supernet's statistics are restored after).
            Also, after the last step, the max-width statistics are re-estimated on
            ``calib_batches`` training batches, so the returned supernet is consistent.
        run_dir: where ``metrics.jsonl`` and ``checkpoint.pt`` go (rank 0); None: no files.
        resume: continue from ``run_dir/checkpoint.pt`` when it exists; every option but
            ``log_interval`` must match the checkpoint's. Without ``resume`` an existing
            checkpoint there is an error (nothing is overwritten silently).
        device: default ``cuda`` when available (``cuda:LOCAL_RANK`` under torchrun), else CPU.
        progress: show a tqdm bar per epoch (rank 0).
        callback: called on every rank after each epoch's checkpoint with the epoch record;
            an exception raised there stops the search (resume later with ``resume=True``).

    ``seed`` seeds Python/NumPy/torch (``seed + rank``) and the sub-net sampler (``seed``,
    identical on every rank) when the search starts from scratch. ``alpha_init="budget"`` (the
    default, a deviation from the official code) starts every alpha at one common value that
    puts the expected count at 99% of the target, so the search is at its budget from the first
    step whatever the number of architecture steps; ``"zero"`` is the official start.

    Returns:
        A :class:`SearchResult`; the space is left with its gates in ``max`` mode.
    """
    check_space(space, "search")
    if not space.gates():
        raise ConfigError(f"search: {space.no_group_reason()}; there is nothing to search")
    opts = SearchOptions.build(options, option_values, "search")
    ctx = distributed_context()
    device = resolve_device(device, ctx, "search.device")
    target, metric = resolve_budget(space, opts.target, opts.budget_metric, opts.latency_table)
    run = SearchRun(space, train_loader, opts, ctx, device, target, metric)
    run.start_or_resume(run_dir, resume)
    for epoch in epochs(run.loader, run.start_epoch, opts.epochs):
        means, seconds, images = run.train_epoch(epoch, progress)
        record = run.end_epoch(epoch, means, seconds, images, val_loader)
        if callback is not None:
            callback(record)
    return run.finish()
