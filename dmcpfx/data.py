"""Data loaders for search and retraining: bundled digits, ImageFolder, synthetic.

Every factory returns a :class:`DataBundle`: the train and val ``DataLoader``\\ s
plus what a model factory needs to know (``num_classes``, ``input_shape``). A
bundle unpacks like a pair, so both styles work::

    bundle = digits_loaders()
    model = small_resnet(num_classes=bundle.num_classes)
    train, val = digits_loaders()

All image batches are ``float32`` tensors of shape ``(N, 3, H, W)`` (NCHW),
normalized per channel; labels are ``int64`` tensors of shape ``(N,)``.

Sources:

- :func:`digits_loaders`: scikit-learn's bundled digits (1,797 real 8x8 grey
  images, 10 classes, offline), upsampled and repeated to 3 channels. The
  embedded default for tests and demos.
- :func:`imagefolder_loaders`: any ``root/train/<class>/*`` + ``root/val/<class>/*``
  tree (ImageNet layout) with the standard ImageNet transforms.
- :func:`synthetic_loaders`: fixed random tensors for throughput runs.
- :func:`dmcpfx.data_fashion.fashion_mnist_loaders`: Fashion-MNIST's idx files (a module of its own).

Multi-process training (torchrun): ``distributed=True`` shards the train set
with a :class:`~torch.utils.data.DistributedSampler` (the training loop must call
``sampler.set_epoch(epoch)``, as :func:`dmcpfx.product.retrain.retrain` does).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from dmcpfx.errors import ConfigError

__all__ = [
    "DataBundle",
    "ShardSampler",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "digits_loaders",
    "imagefolder_loaders",
    "synthetic_loaders",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataBundle:
    """Train/val loaders of one data set and the facts a model needs.

    Attributes:
        train: training loader, yields ``(images (N, 3, H, W) float32, labels (N,) int64)``.
        val: validation loader, same batch format, never shuffled.
        num_classes: number of classes; labels lie in ``[0, num_classes)``.
        input_shape: ``(1, 3, H, W)``, an example-input shape for tracing / FLOPs.

    Unpacks as ``train, val = bundle``.
    """

    train: DataLoader
    val: DataLoader
    num_classes: int
    input_shape: tuple[int, int, int, int]

    def __iter__(self) -> Iterator[DataLoader]:
        return iter((self.train, self.val))


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index starting at ``rank``, in order, without padding.

    For distributed *evaluation*: unlike ``DistributedSampler`` no sample is
    duplicated, so summing per-rank counts (``all_reduce``) gives exact metrics.
    Ranks may get one batch more or less, which is fine for forward-only loops.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def _dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialized process group; a clear error otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(
            "distributed=True needs an initialized torch.distributed process group "
            "(launch with torchrun; dmcpfx.training.distributed_context() sets it up)"
        )
    return dist.get_rank(), dist.get_world_size()


def train_sampler(dataset: Dataset, distributed: bool, seed: int) -> Sampler | None:
    if not distributed:
        return None
    from torch.utils.data import DistributedSampler

    rank, world = _dist_rank_world()
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)


def val_sampler(dataset: Dataset, distributed: bool) -> Sampler | None:
    if not distributed:
        return None
    rank, world = _dist_rank_world()
    return ShardSampler(len(dataset), rank, world)


# --------------------------------------------------------------------------- digits


class RandomShift(Dataset):
    """Wrap a tensor dataset; shift each image by up to ``pad`` pixels (zero-padded crop).

    Padding uses the normalized background value (the image's minimum), so a shift
    looks like moving the digit on its blank page. Randomness comes from torch's
    global RNG (worker-seeded in DataLoader workers), so a seeded run is repeatable.
    """

    def __init__(self, base: TensorDataset, pad: int) -> None:
        self.base, self.pad = base, pad

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.base[index]
        p = self.pad
        if p == 0:
            return image, label
        background = float(image.min())
        padded = F.pad(image, (p, p, p, p), value=background)
        dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
        h, w = image.shape[-2:]
        return padded[:, dy : dy + h, dx : dx + w].contiguous(), label


def _digits_tensors(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(images (N, 1, S, S) in [0, 1], labels (N,) int64)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        images = images.clamp_(0.0, 1.0)
    return images, torch.as_tensor(digits.target, dtype=torch.int64)


def _stratified_split(labels: torch.Tensor, test_size: float | int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic stratified split of ``range(len(labels))`` -> (kept, held-out) index lists."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(labels)))
    kept, held = train_test_split(indices, test_size=test_size, random_state=seed, stratify=labels.numpy())
    return sorted(kept), sorted(held)


def subset_indices(labels: torch.Tensor, size: int, seed: int, classes: int = 10) -> list[int]:
    """A fixed, seeded choice of ``size`` indices of ``labels`` (sorted): stratified when there
    are at least ``classes`` images both kept and left out, else a seeded random choice."""
    n = len(labels)
    if not 1 <= size <= n:
        raise ConfigError(f"train_subset must be in [1, {n}], got {size}")
    if size == n:
        return list(range(n))
    if size >= classes and n - size >= classes:
        return _stratified_split(labels, n - size, seed)[0]
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[:size].tolist())


def digits_loaders(
    *,
    batch_size: int = 64,
    image_size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    train_subset: int | None = None,
    augment: bool = False,
    num_workers: int = 0,
    distributed: bool = False,
) -> DataBundle:
    """scikit-learn's bundled digits as ``(1, 3, image_size, image_size)`` RGB-like images.

    The 8x8 images (ink 0..16) are scaled to [0, 1], bilinearly upsampled to
    ``image_size`` and repeated to 3 channels, then normalized with the mean/std of
    the training split (one scalar for all channels). The split is stratified and
    depends only on ``seed`` and ``val_fraction`` (1,437 train / 360 val by default).

    Args:
        batch_size: samples per batch (train and val). Train drops no batch.
        image_size: side length S of the square output images, in pixels (>= 8 is sensible).
        val_fraction: share of the 1,797 images held out for validation, in (0, 1).
        seed: seeds the split and the subset choice (shuffling uses torch's global RNG,
            or the DistributedSampler's ``seed`` when ``distributed``).
        train_subset: keep only this many training images (stratified when it has at
            least one image per class), for fast tests.
        augment: random shift by up to ``image_size // 8`` pixels on train images.
        num_workers: DataLoader worker processes.
        distributed: shard train (DistributedSampler) and val (:class:`ShardSampler`)
            over the initialized process group.

    Returns:
        A :class:`DataBundle` with ``num_classes=10`` and ``input_shape=(1, 3, S, S)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if image_size < 1 or batch_size < 1:
        raise ConfigError(f"image_size and batch_size must be positive, got {image_size} and {batch_size}")
    images, labels = _digits_tensors(image_size)
    train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
    if train_subset is not None:
        train_idx = [train_idx[i] for i in subset_indices(labels[train_idx], train_subset, seed)]

    train_x, val_x = images[train_idx], images[val_idx]
    mean, std = train_x.mean(), train_x.std().clamp_min(1e-6)
    train_x = ((train_x - mean) / std).repeat(1, 3, 1, 1).contiguous()
    val_x = ((val_x - mean) / std).repeat(1, 3, 1, 1).contiguous()

    train_ds: Dataset = TensorDataset(train_x, labels[train_idx])
    if augment:
        train_ds = RandomShift(train_ds, pad=max(1, image_size // 8))
    val_ds = TensorDataset(val_x, labels[val_idx])

    sampler = train_sampler(train_ds, distributed, seed)
    train = DataLoader(
        train_ds,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=False,
    )
    val = DataLoader(
        val_ds,
        batch_size=batch_size,
        shuffle=False,
        sampler=val_sampler(val_ds, distributed),
        num_workers=num_workers,
    )
    return DataBundle(train=train, val=val, num_classes=10, input_shape=(1, 3, image_size, image_size))


# --------------------------------------------------------------------------- ImageFolder


def imagenet_transforms(image_size: int = 224):
    """The standard ImageNet ``(train, val)`` torchvision transforms for ``image_size``.

    train: RandomResizedCrop(image_size), horizontal flip, to tensor, normalize.
    val: resize the short side to ``round(image_size * 256 / 224)``, center crop
    ``image_size``, to tensor, normalize.
    """
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    val = T.Compose(
        [T.Resize(int(round(image_size * 256 / 224))), T.CenterCrop(image_size), T.ToTensor(), normalize]
    )
    return train, val


def _image_folder(path: Path, transform):
    from torchvision.datasets import ImageFolder

    from .image_files import check_image_files, load_rgb

    if not path.is_dir():
        raise ConfigError(f"image folder not found: {path} (expected <root>/train/<class>/... and <root>/val/<class>/...)")
    try:
        dataset = ImageFolder(str(path), transform=transform, loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
        raise ConfigError(f"unusable image folder {path}: {exc}") from exc
    check_image_files([p for p, _ in dataset.samples])  # empty or non-image files: named before any run starts
    return dataset


def imagefolder_loaders(
    root: str | os.PathLike,
    *,
    image_size: int = 224,
    batch_size: int,
    workers: int,
    distributed: bool = False,
    seed: int = 0,
) -> DataBundle:
    """Loaders over an ImageNet-style tree ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Transforms are :func:`imagenet_transforms`. Class indices follow torchvision's
    ``ImageFolder`` (sorted folder names); train and val must have the same classes.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        image_size: crop side in pixels (train and val).
        batch_size: samples per batch per process.
        workers: DataLoader worker processes per loader.
        distributed: DistributedSampler on train, :class:`ShardSampler` on val.
        seed: the DistributedSampler's shuffle seed.

    Raises:
        ConfigError: ``root``, ``root/train`` or ``root/val`` is missing or holds no
            images, or the class lists of train and val differ.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"image folder root not found: {root}")
    train_tf, val_tf = imagenet_transforms(image_size)
    train_ds = _image_folder(root / "train", train_tf)
    val_ds = _image_folder(root / "val", val_tf)
    if train_ds.classes != val_ds.classes:
        only_train = sorted(set(train_ds.classes) - set(val_ds.classes))[:5]
        only_val = sorted(set(val_ds.classes) - set(train_ds.classes))[:5]
        raise ConfigError(
            f"class folders differ between {root / 'train'} and {root / 'val'}: "
            f"only in train {only_train}, only in val {only_val}"
        )
    if len(train_ds.classes) < 2:
        raise ConfigError(f"{root / 'train'} holds {len(train_ds.classes)} class folder(s) "
                          f"{train_ds.classes}; classification needs at least 2")
    persistent = workers > 0
    sampler = train_sampler(train_ds, distributed, seed)
    train = DataLoader(
        train_ds,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=persistent,
    )
    val = DataLoader(
        val_ds,
        batch_size=batch_size,
        shuffle=False,
        sampler=val_sampler(val_ds, distributed),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=persistent,
    )
    return DataBundle(train=train, val=val, num_classes=len(train_ds.classes), input_shape=(1, 3, image_size, image_size))


# --------------------------------------------------------------------------- synthetic


class SyntheticBatches(Dataset):
    """``steps`` ready-made batches; item ``i`` is one whole batch (not one sample).

    The batch ``(images (B, 3, S, S) float32 ~ N(0, 1), labels (B,) int64)`` is drawn
    once from ``seed`` and returned for every step, so loading costs nothing and a
    throughput run measures the model only. Use with ``DataLoader(batch_size=None)``.
    """

    def __init__(self, *, num_classes: int, image_size: int, batch_size: int, steps: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.steps:
            raise IndexError(index)
        return self.images, self.labels


def synthetic_loaders(
    *,
    num_classes: int = 1000,
    image_size: int = 224,
    batch_size: int,
    steps: int,
    seed: int = 0,
    val_steps: int | None = None,
) -> DataBundle:
    """Random-tensor loaders for throughput benchmarks (no learning signal).

    ``train`` yields ``steps`` batches of ``(batch_size, 3, image_size, image_size)``;
    ``val`` yields ``val_steps`` (default ``max(1, steps // 10)``) batches of another
    fixed random batch.
    """
    if steps < 1 or batch_size < 1 or num_classes < 1:
        raise ConfigError(f"steps, batch_size and num_classes must be positive, got {steps}, {batch_size}, {num_classes}")
    val_steps = max(1, steps // 10) if val_steps is None else val_steps
    common = dict(num_classes=num_classes, image_size=image_size, batch_size=batch_size)
    train_ds = SyntheticBatches(steps=steps, seed=seed, **common)
    val_ds = SyntheticBatches(steps=val_steps, seed=seed + 1, **common)
    return DataBundle(
        train=DataLoader(train_ds, batch_size=None, shuffle=False),
        val=DataLoader(val_ds, batch_size=None, shuffle=False),
        num_classes=num_classes,
        input_shape=(1, 3, image_size, image_size),
    )
