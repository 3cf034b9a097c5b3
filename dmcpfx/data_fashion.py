"""Fashion-MNIST loaders (``data.kind: fashion-mnist``) from the original idx files.

Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``,
MIT licence, 30 MB) installs the four gzipped idx files in :data:`DEFAULT_ROOT`: 60,000
training and 10,000 test grey 28x28 images of 10 clothing classes. Any folder holding the
same four files (gzipped or plain) works as ``root``.

The official split is kept: train is the 60,000 training images (or a fixed, seeded,
stratified ``train_subset`` of them), val is all 10,000 test images. The held-out part of
the training set that ``derive(direct)`` ranks on is split off the train loader by the
caller (:func:`dmcpfx.search.holdout.split_holdout`, ``derive.holdout_images`` in a run), as
for every other kind; BatchNorm re-estimation uses the remaining training images.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .data import DataBundle, RandomShift, train_sampler, val_sampler, subset_indices
from .errors import ConfigError
from .idx import find_idx, read_idx

__all__ = ["DEFAULT_ROOT", "CLASSES", "GreyImages", "fashion_mnist_loaders", "read_split"]

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_split(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, H, W) uint8, labels (N,) int64)`` of ``split`` ("train" or "test") in ``root``.

    Raises:
        ConfigError: a missing or corrupt file, image and label counts that differ, or a
            label outside ``[0, 10)`` (each one line naming the file).
    """
    root = Path(root)
    image_file, label_file = (find_idx(root, name) for name in FILES[split])
    images = read_idx(image_file, 3)
    labels = read_idx(label_file, 1).to(torch.int64)
    if len(images) != len(labels):
        raise ConfigError(f"{image_file} holds {len(images):,} images but {label_file} holds {len(labels):,} labels")
    if int(labels.max()) >= len(CLASSES):
        raise ConfigError(f"{label_file}: label {int(labels.max())} outside [0, {len(CLASSES)}) (not Fashion-MNIST?)")
    return images, labels


def _pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std of the pixels (scaled to [0, 1]) of ``uint8`` images, exactly, from a histogram."""
    counts = torch.bincount(images.reshape(-1), minlength=256).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    n = counts.sum()
    mean = float((counts * values).sum() / n)
    var = float((counts * (values - mean) ** 2).sum() / max(float(n) - 1.0, 1.0))
    return mean, max(var, 0.0) ** 0.5


class GreyImages(Dataset):
    """``uint8`` grey images served as normalized ``(3, S, S)`` float32 tensors.

    Item ``i``: ``((images[i] / 255 - mean) / std)``, bilinearly resized to ``size`` when it
    differs from the stored side, repeated to 3 channels; and ``labels[i]`` (int64). The
    images stay stored as bytes (47 MB for Fashion-MNIST's training set at 28 px).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float, size: int) -> None:
        self.images, self.labels, self.mean, self.std, self.size = images, labels, mean, std, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.images[index].to(torch.float32) / 255.0 - self.mean) / self.std
        if tuple(x.shape) != (self.size, self.size):
            x = F.interpolate(x[None, None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0, 0]
        return x.expand(3, self.size, self.size), self.labels[index]


def check_root(root: str | os.PathLike | None) -> Path:
    """The Fashion-MNIST folder (``root`` or :data:`DEFAULT_ROOT`); a one-line error saying how
    to install the package when it is missing."""
    folder = DEFAULT_ROOT if root is None else Path(root).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"Fashion-MNIST folder not found: {folder}; install the data with `apt-get install "
                          f"dataset-fashion-mnist` (Debian/Ubuntu, files in {DEFAULT_ROOT}) or set data.root to a "
                          f"folder holding its four idx files (train-images-idx3-ubyte[.gz], ...)")
    return folder


def fashion_mnist_loaders(
    root: str | os.PathLike | None = None,
    *,
    batch_size: int = 64,
    image_size: int = 28,
    seed: int = 0,
    train_subset: int | None = None,
    augment: bool = False,
    num_workers: int = 0,
    distributed: bool = False,
) -> DataBundle:
    """Fashion-MNIST as ``(N, 3, image_size, image_size)`` normalized images, 10 classes.

    Pixels are scaled to [0, 1] and normalized with the mean/std of the training images
    used (one scalar for all channels), then repeated to 3 channels.

    Args:
        root: folder holding the four idx files (gzipped or plain); None: :data:`DEFAULT_ROOT`.
        batch_size: samples per batch (train and val). Train drops no batch.
        image_size: side S of the square images in pixels (28: the stored size, no resizing).
        seed: seeds the ``train_subset`` choice (shuffling uses torch's global RNG, or the
            DistributedSampler's ``seed`` when ``distributed``).
        train_subset: keep only this many training images: a fixed, seeded, stratified
            choice (the same for a given ``seed``); None keeps all 60,000.
        augment: random shift by up to ``image_size // 8`` pixels on train images.
        num_workers: DataLoader worker processes.
        distributed: shard train (DistributedSampler) and val (ShardSampler) over the
            initialized process group.

    Returns:
        A :class:`~dmcpfx.data.DataBundle`: train (60,000 or ``train_subset`` images), val (the
        10,000 test images), ``num_classes=10``, ``input_shape=(1, 3, S, S)``.

    Raises:
        ConfigError: the folder or a file is missing (the message says how to install the
            package), a file is corrupt, or an argument is out of range.
    """
    if image_size < 1 or batch_size < 1:
        raise ConfigError(f"image_size and batch_size must be positive, got {image_size} and {batch_size}")
    folder = check_root(root)
    train_x, train_y = read_split(folder, "train")
    test_x, test_y = read_split(folder, "test")
    if train_subset is not None:
        keep = torch.as_tensor(subset_indices(train_y, train_subset, seed, classes=len(CLASSES)))
        train_x, train_y = train_x[keep], train_y[keep]
    mean, std = _pixel_stats(train_x)
    std = max(std, 1e-6)
    train_ds: Dataset = GreyImages(train_x, train_y, mean, std, image_size)
    if augment:
        train_ds = RandomShift(train_ds, pad=max(1, image_size // 8))
    val_ds = GreyImages(test_x, test_y, mean, std, image_size)
    sampler = train_sampler(train_ds, distributed, seed)
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                       num_workers=num_workers, drop_last=False)
    val = DataLoader(val_ds, batch_size=batch_size, shuffle=False, sampler=val_sampler(val_ds, distributed),
                     num_workers=num_workers)
    return DataBundle(train=train, val=val, num_classes=len(CLASSES), input_shape=(1, 3, image_size, image_size))
