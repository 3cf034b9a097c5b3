"""Image files read by an ImageFolder: an empty or corrupt file is named by its path.

:func:`check_image_files` runs before anything is written (every file's size and header:
seconds per 100,000 files on a local disk); :func:`load_rgb` is the loader, which names a file
whose pixel data turns out to be truncated when it is decoded during training."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from .errors import ConfigError

__all__ = ["check_image_files", "load_rgb"]


def _problem(path: str) -> str | None:
    """Why ``path`` cannot be an image (empty, unreadable, unknown format), or None."""
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            return f"image {path} is empty (0 bytes); delete it or replace it"
        with Image.open(path) as image:  # reads the header only
            image.size
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"image {path} is corrupt or not an image ({first}); delete it or replace it"
    return None


def check_image_files(paths: Sequence[str], threads: int = 8) -> None:
    """A :class:`ConfigError` naming the first of ``paths`` that is empty or whose header is not an
    image's (checked ``threads`` files at a time; the pixel data is not decoded here)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for problem in pool.map(_problem, paths, chunksize=256):
            if problem is not None:
                raise ConfigError(problem)


def load_rgb(path: str):
    """An image file as an RGB PIL image; an empty, truncated or corrupt file is a one-line
    :class:`ConfigError` naming it (ImageFolder's loader; runs in the loader workers)."""
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            raise ConfigError(f"image {path} is empty (0 bytes); delete it or replace it")
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"image {path} is corrupt or not an image ({first}); delete it or replace it") from None
