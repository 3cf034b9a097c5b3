"""data.kind fashion-mnist: the idx reader (on fake idx files made here) and the loaders.

The real files (Debian's dataset-fashion-mnist) are read by one test only, skipped when absent."""
from __future__ import annotations

import gzip
import struct

import pytest
import torch

from fake_idx import fake_split, idx_bytes, write_fake
from dmcpfx.data_fashion import DEFAULT_ROOT, fashion_mnist_loaders, read_split
from dmcpfx.errors import ConfigError
from dmcpfx.idx import read_idx


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------- reader


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    images, labels = fake_split(7, side=5)
    for name, array, ndims in (("img", images, 3), ("lab", labels, 1)):
        data = idx_bytes(array)
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if gz else data)
        got = read_idx(path, ndims)
        assert got.dtype == torch.uint8 and got.shape == array.shape and torch.equal(got, array)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda d: b"\x00\x00\x09\x03" + d[4:], r"bad idx magic number 0x00000903"),  # signed bytes
        (lambda d: b"\x00\x00\x08\x02" + d[4:], r"bad idx magic number 0x00000802"),  # wrong dim count
        (lambda d: b"PK\x03\x04" + d[4:], r"bad idx magic number"),
        (lambda d: d[:-3], r"\[7, 5, 5\] = 175 bytes of data but the file holds 172 \(truncated"),
        (lambda d: d + b"\x00", r"(file holds 176|data after the 175 bytes)"),
        (lambda d: d[:9], r"truncated idx header"),
        (lambda d: d[:2], r"not an idx file"),
        (lambda d: d[:4] + struct.pack(">3I", 7, 0, 5) + d[16:], r"empty dim \[7, 0, 5\]"),
        (lambda d: d[:4] + struct.pack(">3I", 2**31, 2**31, 5) + d[16:], r"but the file holds 175"),
    ],
)
def test_read_idx_bad_file_is_one_line_naming_it(tmp_path, gz, damage, match):
    data = damage(idx_bytes(fake_split(7, side=5)[0]))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ConfigError, match=match) as exc:
        read_idx(path, 3)
    assert str(path) in _one_line(exc)


def test_read_idx_broken_gzip_stream(tmp_path):
    good = gzip.compress(idx_bytes(fake_split(7, side=5)[0]))
    path = tmp_path / "images.gz"
    path.write_bytes(good[: len(good) // 2])  # cut mid-stream
    with pytest.raises(ConfigError, match="cannot read idx file") as exc:
        read_idx(path, 3)
    assert str(path) in _one_line(exc)


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("gz", [True, False])
def test_loaders_on_fake_files(tmp_path, gz):
    written = write_fake(tmp_path / "fm", gz=gz, side=6)
    bundle = fashion_mnist_loaders(tmp_path / "fm", batch_size=8, image_size=6)
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 3, 6, 6)
    assert len(bundle.train.dataset) == 40 and len(bundle.val.dataset) == 20  # the official split, kept
    train_x = written["train"][0].float() / 255
    mean, std = train_x.mean().item(), train_x.std().item()
    xs, ys = zip(*bundle.val)  # val is not shuffled: file order
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (20, 3, 6, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, written["test"][1].long())
    want = (written["test"][0].float() / 255 - mean) / std  # normalized with the TRAINING statistics
    assert torch.allclose(x[:, 0], want, atol=1e-5)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    tx, ty = zip(*bundle.train)
    tx = torch.cat(tx)
    assert abs(tx.mean().item()) < 1e-4 and abs(tx.std().item() - 1) < 1e-3
    assert sorted(torch.cat(ty).tolist()) == sorted(written["train"][1].long().tolist())


def test_loaders_resize_and_augment(tmp_path):
    write_fake(tmp_path, side=6)
    bundle = fashion_mnist_loaders(tmp_path, batch_size=4, image_size=12, augment=True)
    x, _ = next(iter(bundle.train))
    assert x.shape == (4, 3, 12, 12) and bundle.input_shape == (1, 3, 12, 12)
    vx, _ = next(iter(bundle.val))
    assert vx.shape == (4, 3, 12, 12)


def test_train_subset_is_fixed_seeded_and_stratified(tmp_path):
    write_fake(tmp_path, train=60)
    a = fashion_mnist_loaders(tmp_path, train_subset=20, seed=1).train.dataset
    b = fashion_mnist_loaders(tmp_path, train_subset=20, seed=1).train.dataset
    c = fashion_mnist_loaders(tmp_path, train_subset=20, seed=2).train.dataset
    assert len(a) == 20 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels, minlength=10).tolist() == [2] * 10
    with pytest.raises(ConfigError, match=r"train_subset must be in \[1, 60\], got 61"):
        fashion_mnist_loaders(tmp_path, train_subset=61)


def test_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist") as exc:
        fashion_mnist_loaders(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in _one_line(exc)


def test_missing_file_and_inconsistent_files(tmp_path):
    write_fake(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="idx file not found: .*t10k-labels-idx1-ubyte") as exc:
        fashion_mnist_loaders(tmp_path)
    _one_line(exc)
    labels = torch.arange(19, dtype=torch.uint8) % 10  # 19 labels for 20 images
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(ConfigError, match="holds 20 images but .*t10k-labels-idx1-ubyte holds 19 labels"):
        read_split(tmp_path, "test")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(torch.full((20,), 10, dtype=torch.uint8)))
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte: label 10 outside \[0, 10\)"):
        read_split(tmp_path, "test")


def test_config_kind_fashion_mnist(tmp_path):
    """data.kind fashion-mnist passes validation and reaches the loaders with data.root."""
    from dmcpfx.config import load_config
    from dmcpfx.config_checks import validate_config
    from dmcpfx.pipeline import make_data

    write_fake(tmp_path, side=6)
    cfg = load_config(None, ["data.kind=fashion-mnist", f"data.root={tmp_path}", "data.image_size=6",
                             "data.train_subset=20", "data.batch_size=5"])
    validate_config(cfg)
    bundle = make_data(cfg, distributed=False)
    assert len(bundle.train.dataset) == 20 and len(bundle.val.dataset) == 20
    assert next(iter(bundle.train))[0].shape == (5, 3, 6, 6)
    cfg = load_config(None, ["data.kind=fashion-mnist", f"data.root={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        make_data(cfg, distributed=False)


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason=f"{DEFAULT_ROOT} absent: apt-get install dataset-fashion-mnist")
def test_real_package_files():
    images, labels = read_split(DEFAULT_ROOT, "test")
    assert images.shape == (10000, 28, 28) and torch.bincount(labels).tolist() == [1000] * 10
    images, labels = read_split(DEFAULT_ROOT, "train")
    assert images.shape == (60000, 28, 28) and torch.bincount(labels).tolist() == [6000] * 10
    assert labels[:4].tolist() == [9, 0, 0, 3]  # the first training images: ankle boot, T-shirt x2, dress


@pytest.mark.parametrize("corrupt", [False, True])
def test_cli_missing_or_corrupt_data_is_one_line(tmp_path, capsys, corrupt):
    """`dmcpfx demo` with data.kind fashion-mnist: a missing folder or a corrupt file is one
    `error:` line (exit 2) and no run directory."""
    from dmcpfx.cli import main

    root = tmp_path / "fm"
    if corrupt:
        write_fake(root, side=6)
        (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 5))
    code = main(["demo", "--run-dir", str(tmp_path / "run"), "--set", "data.kind=fashion-mnist",
                 "--set", f"data.root={root}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    assert ("truncated idx header" if corrupt else "apt-get install dataset-fashion-mnist") in err[0]
    assert not (tmp_path / "run").exists()
