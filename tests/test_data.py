"""dmcpfx.data: digits, ImageFolder and synthetic loaders."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from dmcpfx.data import DataBundle, ShardSampler, digits_loaders, imagefolder_loaders, synthetic_loaders
from dmcpfx.errors import ConfigError


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_digits_shapes_and_bundle():
    bundle = digits_loaders(batch_size=32, image_size=16)
    assert isinstance(bundle, DataBundle)
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 3, 16, 16)
    x, y = next(iter(bundle.train))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated
    assert len(bundle.train.dataset) == 1437 and len(bundle.val.dataset) == 360
    train, val = bundle  # unpacks like a pair
    assert train is bundle.train and val is bundle.val


def test_digits_normalized_and_native_size():
    bundle = digits_loaders(image_size=8, batch_size=2048)
    x, _ = _all(bundle.train)
    assert x.shape[1:] == (3, 8, 8)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3


def test_digits_split_is_deterministic_and_seeded():
    a = digits_loaders(image_size=8, seed=3)
    b = digits_loaders(image_size=8, seed=3)
    c = digits_loaders(image_size=8, seed=4)
    for name in ("train", "val"):
        ta, tb = getattr(a, name).dataset.tensors, getattr(b, name).dataset.tensors
        assert torch.equal(ta[0], tb[0]) and torch.equal(ta[1], tb[1])
    assert not torch.equal(a.val.dataset.tensors[0], c.val.dataset.tensors[0])


def test_digits_split_is_stratified():
    bundle = digits_loaders(image_size=8, val_fraction=0.25)
    train_counts = Counter(bundle.train.dataset.tensors[1].tolist())
    val_counts = Counter(bundle.val.dataset.tensors[1].tolist())
    for label in range(10):
        total = train_counts[label] + val_counts[label]
        assert abs(val_counts[label] - 0.25 * total) <= 1, label


def test_digits_train_subset_is_stratified():
    bundle = digits_loaders(image_size=8, train_subset=200)
    labels = bundle.train.dataset.tensors[1]
    assert len(labels) == 200
    counts = Counter(labels.tolist())
    assert min(counts.values()) >= 18 and max(counts.values()) <= 22
    tiny = digits_loaders(image_size=8, train_subset=5)
    assert len(tiny.train.dataset) == 5


def test_digits_augment_shifts_but_keeps_shape():
    torch.manual_seed(0)
    plain = digits_loaders(image_size=16, train_subset=64, batch_size=64)
    aug = digits_loaders(image_size=16, train_subset=64, batch_size=64, augment=True)
    base = plain.train.dataset.tensors[0]
    shifted = torch.stack([aug.train.dataset[i][0] for i in range(len(base))])
    assert shifted.shape == base.shape
    assert not torch.equal(shifted, base)
    assert aug.train.dataset[0][1] == plain.train.dataset[0][1]


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0.0}, {"val_fraction": 1.0}, {"train_subset": 0}, {"batch_size": 0}])
def test_digits_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        digits_loaders(**kwargs)


def test_distributed_without_process_group_is_a_clear_error():
    with pytest.raises(ConfigError, match="torchrun"):
        digits_loaders(image_size=8, distributed=True)


def test_shard_sampler_partitions_without_duplicates():
    shards = [list(ShardSampler(10, rank, 3)) for rank in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(ShardSampler(10, r, 3)) for r in range(3)] == [4, 3, 3]


# --------------------------------------------------------------------------- ImageFolder


def _make_tree(root, splits=("train", "val"), classes=("cat", "dog"), per_class=3):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in splits:
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (30, 40, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "no_such_imagenet"
    with pytest.raises(ConfigError, match="no_such_imagenet"):
        imagefolder_loaders(missing, batch_size=2, workers=0)


def test_imagefolder_missing_val_split_names_the_path(tmp_path):
    _make_tree(tmp_path, splits=("train",))
    with pytest.raises(ConfigError, match="val"):
        imagefolder_loaders(tmp_path, batch_size=2, workers=0)


def test_imagefolder_class_mismatch(tmp_path):
    _make_tree(tmp_path, splits=("train",), classes=("cat", "dog"))
    _make_tree(tmp_path, splits=("val",), classes=("cat", "eel"))
    with pytest.raises(ConfigError, match="differ"):
        imagefolder_loaders(tmp_path, batch_size=2, workers=0)


def test_imagefolder_tiny_tree(tmp_path):
    _make_tree(tmp_path, per_class=3)
    bundle = imagefolder_loaders(tmp_path, image_size=32, batch_size=2, workers=0)
    assert bundle.num_classes == 2 and bundle.input_shape == (1, 3, 32, 32)
    x, y = next(iter(bundle.train))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(bundle.train) == 3  # 6 images, drop_last
    vx, vy = _all(bundle.val)
    assert vx.shape == (6, 3, 32, 32) and sorted(vy.tolist()) == [0, 0, 0, 1, 1, 1]


# --------------------------------------------------------------------------- synthetic


def test_synthetic_loaders():
    bundle = synthetic_loaders(num_classes=7, image_size=24, batch_size=5, steps=4, seed=1)
    assert bundle.num_classes == 7 and bundle.input_shape == (1, 3, 24, 24)
    batches = list(bundle.train)
    assert len(batches) == len(bundle.train) == 4
    x, y = batches[0]
    assert x.shape == (5, 3, 24, 24) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < 7
    assert len(bundle.val) == 1
    again = synthetic_loaders(num_classes=7, image_size=24, batch_size=5, steps=4, seed=1)
    assert torch.equal(next(iter(again.train))[0], x)
    with pytest.raises(ConfigError):
        synthetic_loaders(batch_size=1, steps=0)
