"""How much host memory a new allocation can take (for checks that refuse or skip a job that
would not fit)."""
from __future__ import annotations

import os

__all__ = ["available_memory"]


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable; else physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 62
