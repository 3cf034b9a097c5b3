"""FX pass: switch an exported graph's ATen batch-norm calls to training, momentum settable.

An exported eval graph calls ``batch_norm(..., training=False, momentum, ...)`` with literal
arguments. :func:`cumulative_batch_norm` rewrites the ``training`` and ``momentum``
arguments of the given calls for the duration of a ``with`` block (the BatchNorm
re-calibration of :func:`dmcpfx.search.bn.recalibrate_bn`) and restores them afterwards.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import fx

__all__ = ["BN_CALLS", "cumulative_batch_norm"]

ATEN = torch.ops.aten
#: ATen batch-norm calls that update running buffers in place when training:
#: op -> argument positions of (running_mean, running_var, training, momentum)
BN_CALLS = {
    ATEN.batch_norm.default: (3, 4, 5, 6),
    ATEN.native_batch_norm.default: (3, 4, 5, 6),
    ATEN._native_batch_norm_legit.default: (3, 4, 5, 6),
    ATEN.cudnn_batch_norm.default: (3, 4, 5, 6),
}


@contextlib.contextmanager
def cumulative_batch_norm(calls: list[tuple[fx.GraphModule, fx.Node]]) -> Iterator[Callable[[float], None]]:
    """The batch-norm ``calls`` (GraphModule, node) switched to training with a settable momentum;
    yields ``set_momentum(m)`` (recompiles the graphs). Arguments are restored afterwards."""
    saved = [(gm, node, node.args) for gm, node in calls]
    graphs = {id(gm): gm for gm, _, _ in saved}

    def set_momentum(momentum: float) -> None:
        for gm, node, args in saved:
            pos = BN_CALLS[node.target]
            new = list(args)
            new[pos[2]], new[pos[3]] = True, float(momentum)
            node.args = tuple(new)
        for gm in graphs.values():
            gm.recompile()

    try:
        yield set_momentum
    finally:
        for gm, node, args in saved:
            node.args = args
        for gm in graphs.values():
            gm.recompile()
