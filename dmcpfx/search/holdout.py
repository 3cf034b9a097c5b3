"""A held-out part of the TRAINING data (for ``derive(direct)``'s ranking).

``derive(..., "direct")`` picks the best of a few in-band Markov samples. Ranking them on
the split a report then scores would select on the test set; :func:`split_holdout`
instead sets aside a fixed, seeded part of the training set that the search never sees.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from ..errors import ConfigError

__all__ = ["split_holdout"]


def split_holdout(loader: DataLoader, images: int, *, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """``(train loader without the held-out images, held-out loader)``.

    ``images`` samples of ``loader.dataset`` (a seeded permutation, the same for a given
    ``seed``) go to the held-out loader (no shuffling, same batch size and workers); the
    rest keep ``loader``'s batch size, shuffling, workers and ``drop_last``. Augmentation
    is whatever the dataset applies (the held-out images are training images).
    """
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        raise ConfigError("split_holdout needs a DataLoader with a batch_size")
    n = len(loader.dataset)  # type: ignore[arg-type]
    images = int(images)
    if not 0 < images < n:
        raise ConfigError(f"held-out images must be in (0, {n}) for this training set, got {images}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    held, kept = sorted(perm[:images]), sorted(perm[images:])
    shuffle = not isinstance(loader.sampler, torch.utils.data.SequentialSampler)
    common: dict[str, Any] = dict(batch_size=loader.batch_size, num_workers=loader.num_workers,
                                  collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
    train = DataLoader(Subset(loader.dataset, kept), shuffle=shuffle, drop_last=loader.drop_last,
                       generator=loader.generator, **common)
    holdout = DataLoader(Subset(loader.dataset, held), shuffle=False, **common)
    return train, holdout
