"""BatchNorm statistics during a DMCP search (DESIGN.md section 5, "BatchNorm").

Sub-nets share the BatchNorm layers (official). In train mode a BatchNorm normalizes
with the BATCH statistics; its running buffers are only read in eval mode. So which
forwards update the running buffers changes no gradient of the search, only what an
evaluation with the supernet's own statistics sees:

- the architecture forward (max width, gates in ``expected`` mode) scales activations
  by marginals as small as ``0.5^9``: it must never touch the buffers
  (:class:`FrozenStats` saves and restores them around it);
- the min and random sub-nets see other widths; by default (``bn_stats="max"``) they
  leave the buffers alone too, so the running statistics track the max net only and the
  supernet at max width can be evaluated with its own statistics. ``bn_stats="all"``
  lets every weight-step forward update them (the official code's behaviour).

Before any evaluation of a sub-net (or of the supernet) the statistics are re-estimated
on a few training batches anyway (:func:`recalibrate_bn`, official: 5 batches).

A BatchNorm is found in two forms (:func:`batchnorm_sites`): an eager
``nn.BatchNorm*`` module, or an ATen ``batch_norm`` call of an exported graph (a
:class:`~dmcpfx.search.space.SearchSpace`, a GraphModule fallback) whose running buffers
live in plain holder modules. Both are handled alike.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import fx, nn

from ..amp import amp_dtype, autocast, to_device
from ..batches import model_fails_on
from ..passes.batchnorm_args import BN_CALLS, cumulative_batch_norm
from ..errors import ConfigError

__all__ = ["BN_STATS", "BatchNormSite", "FrozenStats", "batchnorm_sites", "bn_buffers", "recalibrate_bn"]

#: which weight-step forwards update the BatchNorm running statistics
BN_STATS = ("max", "all")

_COUNT = "num_batches_tracked"


@dataclass
class BatchNormSite:
    """One BatchNorm's running statistics: ``owner._buffers[mean | var]`` (shape ``(C,)``),
    ``count_owner._buffers["num_batches_tracked"]`` when there is one, and either the eager
    ``module`` or the graph ``calls`` (GraphModule, node) that read them."""

    owner: nn.Module
    mean: str
    var: str
    count_owner: nn.Module | None = None
    module: nn.modules.batchnorm._BatchNorm | None = None
    calls: list[tuple[fx.GraphModule, fx.Node]] = field(default_factory=list)

    def tensors(self) -> list[torch.Tensor]:
        out = [self.owner._buffers[self.mean], self.owner._buffers[self.var]]
        if self.count_owner is not None:
            out.append(self.count_owner._buffers[_COUNT])
        return out


def _graph_sites(gm: fx.GraphModule, sites: dict[int, BatchNormSite]) -> None:
    for node in gm.graph.nodes:
        pos = BN_CALLS.get(node.target) if node.op == "call_function" else None
        if pos is None or len(node.args) <= pos[1]:
            continue
        mean, var = node.args[pos[0]], node.args[pos[1]]
        if not (isinstance(mean, fx.Node) and mean.op == "get_attr" and isinstance(var, fx.Node) and var.op == "get_attr"):
            continue  # no running statistics (None), or computed ones
        prefix, _, mean_attr = mean.target.rpartition(".")
        vprefix, _, var_attr = var.target.rpartition(".")
        owner, vowner = gm.get_submodule(prefix), gm.get_submodule(vprefix)
        if mean_attr not in owner._buffers or var_attr not in vowner._buffers or vowner is not owner:
            continue
        site = sites.get(id(owner._buffers[mean_attr]))
        if site is None:
            site = sites[id(owner._buffers[mean_attr])] = BatchNormSite(owner, mean_attr, var_attr)
        if site.count_owner is None and owner._buffers.get(_COUNT) is not None:
            site.count_owner = owner
        site.calls.append((gm, node))


def batchnorm_sites(module: nn.Module) -> list[BatchNormSite]:
    """Every BatchNorm of ``module`` that tracks running statistics, once each (by tensor)."""
    sites: dict[int, BatchNormSite] = {}
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
            sites.setdefault(id(m.running_mean), BatchNormSite(
                m, "running_mean", "running_var", m if m._buffers.get(_COUNT) is not None else None, module=m))
        elif isinstance(m, fx.GraphModule):
            _graph_sites(m, sites)
    return list(sites.values())


def bn_buffers(module: nn.Module) -> list[torch.Tensor]:
    """The running-statistics tensors of every BatchNorm of ``module`` (not copies)."""
    return [t for site in batchnorm_sites(module) for t in site.tensors()]


class FrozenStats:
    """Save/restore of every BatchNorm buffer (``running_mean``, ``running_var``,
    ``num_batches_tracked``) of a module; the backups are allocated once and reused.

    ``with frozen():`` -- the buffers after the block are bit-identical to before it
    (forwards inside still normalize with batch statistics in train mode, so gradients
    are unchanged). Buffers that a slimmable runner swapped for slices are restored
    through the full tensors, which is where the slices write.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.sites = batchnorm_sites(module)
        self._targets: list[torch.Tensor] = []
        self._backups: list[torch.Tensor] = []
        self._refresh()

    def _refresh(self) -> None:
        targets = [t for site in self.sites for t in site.tensors()]
        if len(targets) != len(self._targets) or any(a is not b for a, b in zip(targets, self._targets)):
            self._targets = targets
            self._backups = [t.detach().clone() for t in targets]

    def save(self) -> None:
        """Copy the current buffers into the backups."""
        self._refresh()  # .to(device) or load_state_dict may have replaced the tensors
        with torch.no_grad():
            if self._targets:
                torch._foreach_copy_(self._backups, self._targets)

    def restore(self) -> None:
        """Write the backups back into the buffers (in place, through ``.data``).

        ``.data`` keeps the buffers' autograd version counters unchanged: a train-mode
        batch norm saves its running buffers for backward (its backward never reads
        them), so a tracked in-place write between forward and backward would fail.
        """
        with torch.no_grad():
            if self._targets:
                torch._foreach_copy_([t.data for t in self._targets], self._backups)

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.save()
        try:
            yield
        finally:
            self.restore()


@torch.no_grad()
def recalibrate_bn(space: nn.Module, loader: Iterable, batches: int, *, device: torch.device | None = None,
                   amp: str | None = None, channels_last: bool = False) -> None:
    """Re-estimate every BatchNorm's running statistics at the space's CURRENT widths.

    Running stats are reset and averaged (cumulative, like ``momentum=None``) over
    ``batches`` batches of ``loader`` (inputs ``(N, C, H, W)``) with only the norm layers
    in train mode (graph batch-norm calls are switched to training for the duration).
    Fewer batches than asked (a short loader) is fine; zero batches is an error.
    """
    device = device or next(space.parameters()).device
    sites = batchnorm_sites(space)
    eager = [s.module for s in sites if s.module is not None]
    graph_sites = [s for s in sites if s.module is None]
    flags = {m: m.training for m in space.modules()}
    momenta = {m: m.momentum for m in eager}
    space.eval()
    for m in eager:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for site in graph_sites:
        mean, var, *count = site.tensors()
        mean.zero_()
        var.fill_(1.0)
        for c in count:
            c.zero_()
    dtype = amp_dtype(amp)
    seen = 0
    try:
        with cumulative_batch_norm([call for site in graph_sites for call in site.calls]) as set_momentum:
            for i, batch in enumerate(loader):
                if i >= batches:
                    break
                x, _ = to_device(batch, device, channels_last)
                if graph_sites:
                    set_momentum(1.0 / (seen + 1))  # the running mean of the batch statistics
                with autocast(device, dtype), model_fails_on("BN calibration", x, space.example_inputs[0]):
                    space(x)
                seen += 1
    finally:
        for m, flag in flags.items():
            m.train(flag)
        for m, mom in momenta.items():
            m.momentum = mom
    for site in graph_sites:
        for c in site.tensors()[2:]:
            c.fill_(seen)
    if seen == 0 and sites:
        raise ConfigError("recalibrate_bn() got an empty calibration loader")
