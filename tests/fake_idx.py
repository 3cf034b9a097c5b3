"""Fake Fashion-MNIST idx files for tests (made in a tmp folder; the real data are never needed)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: torch.Tensor) -> bytes:
    """An idx file of unsigned bytes holding ``array`` (uint8)."""
    head = bytes([0, 0, 0x08, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    return head + array.contiguous().numpy().tobytes()


def fake_split(n: int, side: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, side, side), generator=g, dtype=torch.uint8)
    return images, torch.arange(n, dtype=torch.uint8) % 10


def write_fake(folder: Path, *, train: int = 40, test: int = 20, side: int = 6, gz: bool = True) -> dict:
    """The four Fashion-MNIST idx files (fake content) in ``folder``; returns the tensors written."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", train), ("test", test)):
        images, labels = fake_split(n, side, seed=len(split))
        out[split] = (images, labels)
        for name, array in zip(NAMES[split], (images, labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return out
