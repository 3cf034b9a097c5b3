"""Leave a model as it was: buffers, submodule modes and the global RNG state."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["preserved_state"]


@contextlib.contextmanager
def preserved_state(model: nn.Module):
    """Restore ``model``'s buffers, submodule modes and the RNG state on exit."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, mode in modes.items():
            m.training = mode
