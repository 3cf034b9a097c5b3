"""Checkpoint/resume and data-parallel helpers of :func:`dmcpfx.search.loop.search`.

A checkpoint (format :data:`CHECKPOINT_FORMAT`) holds the weights and alphas, both
optimizers and schedulers, every RNG state (per rank), the sub-net sampler's and the
loader's generators, the epoch, the step and the config that must match on resume
(targets, epochs, seed, the Markov schedule, ``bn_stats``, ...).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import ConfigError
from ..training import DistContext, restore_rng_states

__all__ = ["CHECKPOINT_FORMAT", "distributed_loader", "load_state", "loader_generators"]

CHECKPOINT_FORMAT = "dmcpfx-search/1"


def loader_generators(loader: Any) -> list[torch.Generator]:
    gens: list[torch.Generator] = []
    for obj in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in gens):
            gens.append(g)
    return gens


def distributed_loader(loader: Any, ctx: DistContext, seed: int) -> Any:
    """Rebuild a plain DataLoader with a DistributedSampler (one shard per rank)."""
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

    if not ctx.distributed or isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    if not isinstance(loader, DataLoader) or loader.batch_size is None or type(loader.batch_sampler) is not BatchSampler:
        raise ConfigError(
            "under torchrun the train loader must be a DataLoader with batch_size (it is rebuilt with a "
            "DistributedSampler) or already use a DistributedSampler"
        )
    sampler = DistributedSampler(
        loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
        shuffle=isinstance(loader.sampler, RandomSampler), seed=seed,
    )
    kwargs = dict(
        batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
    )
    if loader.num_workers > 0:
        kwargs.update(persistent_workers=loader.persistent_workers, prefetch_factor=loader.prefetch_factor)
    return DataLoader(loader.dataset, **kwargs)


def load_state(loaded: Mapping[str, Any], stateful: Mapping[str, Any], generator: torch.Generator,
                train_loader: Any, ctx: DistContext, seed: int) -> None:
    for key, obj in stateful.items():
        if obj is not None and loaded.get(key):
            obj.load_state_dict(loaded[key])
    generator.set_state(loaded["subnet_rng"])
    gens = loader_generators(train_loader)
    if len(gens) == len(loaded["loader_rng"]):
        for g, s in zip(gens, loaded["loader_rng"]):
            g.set_state(s)
    restore_rng_states(loaded["rng"], ctx.rank, ctx.world_size, seed, int(loaded["epoch"]))
