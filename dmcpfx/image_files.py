"""Image files read by an ImageFolder: an empty or corrupt file is named by its path."""
from __future__ import annotations

import os

from .errors import ConfigError

__all__ = ["load_rgb"]


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
