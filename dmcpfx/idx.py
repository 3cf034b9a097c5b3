"""Reader of idx files (the MNIST / Fashion-MNIST format), gzipped or plain.

An idx file is a 4-byte magic number ``0x00 0x00 <type> <ndims>``, then ``ndims``
big-endian uint32 dimension sizes, then the data in C order. Only unsigned bytes
(type ``0x08``) are read: what the MNIST family uses for images and labels. The header is
checked against the file (magic number, expected number of dims, data size equal to the
product of the dims, nothing after it); every failure is one :class:`~dmcpfx.errors.ConfigError`
line naming the file.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import torch

from .errors import ConfigError

__all__ = ["read_idx", "find_idx"]

UBYTE = 0x08
_CHUNK = 1 << 20


def find_idx(folder: Path, name: str) -> Path:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first); else a one-line error."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"idx file not found: {folder / name} (nor {name}.gz) in {folder}")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_exact(f: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, read in chunks (a bogus header never allocates its claimed size)."""
    parts, left = [], size
    while left > 0:
        part = f.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _parse(f: BinaryIO, path: Path, ndims: int, plain_size: int | None) -> torch.Tensor:
    magic = f.read(4)
    if len(magic) < 4:
        raise ConfigError(f"{path}: not an idx file (shorter than its 4-byte magic number)")
    if magic[:2] != b"\x00\x00" or magic[2] != UBYTE or magic[3] != ndims:
        raise ConfigError(f"{path}: bad idx magic number 0x{magic.hex()} (expected 0x0000{UBYTE:02x}{ndims:02x}: "
                          f"unsigned bytes, {ndims} dim(s))")
    raw = f.read(4 * ndims)
    if len(raw) < 4 * ndims:
        raise ConfigError(f"{path}: truncated idx header ({4 + len(raw)} of {4 + 4 * ndims} bytes)")
    dims = struct.unpack(f">{ndims}I", raw)
    if any(d == 0 for d in dims):
        raise ConfigError(f"{path}: idx header has an empty dim {list(dims)}")
    size = 1
    for d in dims:
        size *= d
    header = 4 + 4 * ndims
    if plain_size is not None and plain_size != header + size:
        raise ConfigError(f"{path}: idx header says {list(dims)} = {size:,} bytes of data but the file holds "
                          f"{plain_size - header:,} (truncated or corrupt)")
    data = _read_exact(f, size)
    if len(data) < size:
        raise ConfigError(f"{path}: idx header says {list(dims)} = {size:,} bytes of data but the file holds "
                          f"{len(data):,} (truncated)")
    if f.read(1):
        raise ConfigError(f"{path}: data after the {size:,} bytes the idx header {list(dims)} announces (corrupt)")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(dims)


def read_idx(path: str | os.PathLike, ndims: int) -> torch.Tensor:
    """The ``uint8`` tensor of shape ``dims`` stored in the idx file ``path``.

    Args:
        path: an idx file, gzipped (recognized by its content, not its name) or plain.
        ndims: the number of dims the file must have (3 for images ``(N, H, W)``, 1 for
            labels ``(N,)``).

    Raises:
        ConfigError: (one line naming the file) missing or unreadable file, bad gzip
            stream, wrong magic number or dim count, data shorter or longer than the header says.
    """
    path = Path(path)
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                return _parse(f, path, ndims, None)
        with open(path, "rb") as f:
            return _parse(f, path, ndims, path.stat().st_size)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{path}: cannot read idx file ({type(exc).__name__}: {exc})") from exc
