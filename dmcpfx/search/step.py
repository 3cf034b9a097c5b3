"""One DMCP iteration on one batch (DESIGN.md section 5): :class:`SearchStep`.

1. **weight step**: four sub-nets, gradients accumulated, ONE optimizer step -- the max
   width (cross-entropy with the labels), the min width and ``num_random`` random sub-nets
   (per-group uniform widths, or a Markov sample of the gates with probability
   ``markov_prob``, see :mod:`dmcpfx.search.schedule`). The non-max sub-nets learn from the max
   net's DETACHED logits (KL divergence, in-place distillation).
2. **architecture step**: max width with the gates in ``expected`` mode,
   ``loss = CE + budget_weight * budget_loss``, gradient wrt the alphas only, one step of
   the alpha optimizer.

BatchNorm (:mod:`dmcpfx.search.bn`): the architecture step leaves every running buffer
bit-identical (save/restore; train-mode BN normalizes with batch statistics, so its
gradients are unchanged). With ``bn_stats="max"`` (default) the min and random sub-nets
leave them alone too, so the running statistics follow the max net only.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..amp import amp_dtype, autocast
from .bn import BN_STATS, FrozenStats
from .budget import budget_loss
from .metric import BudgetMetric
from .metric import budget_metric as resolve_metric
from ..errors import ConfigError
from ..compare import run_eval
from ..labels import checked_loss, logits_tensor
from .options import check_slice_buckets
from .slimmable import SlicedRunner

__all__ = ["SearchStep", "distill_loss", "gate_state", "restore_gate_state"]

def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(teacher/T) || softmax(student/T)) * T^2`` over the classes (dim 1), mean over
    the batch AND every other position, as cross-entropy averages a dense prediction.

    ``student``/``teacher``: logits of shape ``(N, classes)`` or ``(N, classes, *positions)``
    (a segmentation map); ``teacher`` must be detached. For ``(N, classes)`` this is
    ``kl_div(..., reduction="batchmean")``; summing over the positions instead would weigh the
    sub-nets' distillation ``H * W`` times the max net's cross-entropy.
    """
    t = float(temperature)
    log_p = F.log_softmax(student.float() / t, dim=1)
    q = F.softmax(teacher.float() / t, dim=1)
    predictions = student.numel() // max(1, student.shape[1])  # N * positions
    return F.kl_div(log_p, q, reduction="sum") / predictions * (t * t)


def check_logits_output(space: Any, device: torch.device) -> None:
    """The search trains a classifier (cross-entropy, distillation over dim 1): ``space`` must
    return ONE tensor of logits ``(N, classes, ...)``. Runs the example input once (eval mode);
    anything else is a :class:`ConfigError` (:func:`~dmcpfx.labels.logits_tensor`)."""
    logits_tensor(run_eval(space, tuple(t.to(device) for t in space.example_inputs)), "search")


def gate_state(space: Any) -> dict[str, tuple[str, int]]:
    return {gid: (g.mode, g.hard_width) for gid, g in space.gates().items()}


def restore_gate_state(space: Any, state: Mapping[str, tuple[str, int]]) -> None:
    for gid, g in space.gates().items():
        mode, width = state[gid]
        g.set_mode(mode, width if mode == "width" else None)


def slimmable_choice(slimmable: bool | str, device: torch.device) -> tuple[bool, str | None]:
    """``(try sliced sub-nets, why not)`` for the ``slimmable`` option on ``device``.

    ``auto`` (the default) slices on the CPU, where the thin sub-nets cost what their width costs
    (ResNet-50 arch-phase step 2.0x plain sliced against 3.0x masked, small ResNet 3.8x against
    6.1x), and masks on CUDA, where every new convolution shape makes cuDNN build a new plan
    (measured on an H200: ResNet-50 11.0x sliced against 8.9x masked, MobileNetV2 66x against 5.3x).
    Masked and sliced sub-nets compute the same function (the slimmable check verifies it).
    """
    if not (isinstance(slimmable, bool) or slimmable == "auto"):
        raise ConfigError(f"slimmable must be true, false or 'auto', got {slimmable!r}")
    if slimmable == "auto":
        if torch.device(device).type == "cuda":
            return False, "auto: masked sub-nets on CUDA (sliced shapes make cuDNN plan anew)"
        return True, None
    return bool(slimmable), None if slimmable else "turned off (slimmable=False)"


class SearchStep:
    """One DMCP iteration on one batch (DESIGN.md section 5); exposed for benchmarks.

    ``space`` is the (unwrapped) SearchSpace, ``net`` what the weight step calls (the DDP
    wrapper under torchrun, else ``space``). ``target`` is the absolute budget in the unit
    of ``budget_metric`` (``"flops"``: MACs, ``"params"``: parameter count, or a
    :class:`~dmcpfx.search.metric.BudgetMetric`, e.g. a latency table's ms per batch).
    ``bn_stats``: which weight-step forwards update the BatchNorm running statistics
    (``"max"``: the max net only, default; ``"all"``: every sub-net, as the official code).
    The architecture step never updates them. ``slice_buckets``: 0 cuts sliced sub-nets to their
    exact widths, ``k >= 2`` to ``k`` bucket widths per gate with a mask inside the bucket
    (:class:`~dmcpfx.search.slimmable.SlicedRunner`).
    """

    def __init__(
        self,
        space: nn.Module,
        *,
        weight_optimizer: torch.optim.Optimizer,
        arch_optimizer: torch.optim.Optimizer | None,
        target: float,
        device: torch.device,
        net: nn.Module | None = None,
        budget_weight: float = 0.1,
        budget_band: float = 0.95,
        budget_metric: str | BudgetMetric = "flops",
        num_random: int = 2,
        distill_temperature: float = 1.0,
        label_smoothing: float = 0.0,
        amp: str | None = None,
        generator: torch.Generator | None = None,
        world_size: int = 1,
        slimmable: bool | str = "auto",
        slice_buckets: int = 0,
        bn_stats: str = "max",
    ):
        if bn_stats not in BN_STATS:
            raise ConfigError(f"bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
        check_logits_output(space, device)
        self.space = space
        self.net = net if net is not None else space
        self.weight_optimizer = weight_optimizer
        self.arch_optimizer = arch_optimizer
        self.target = float(target)
        self.device = device
        self.budget_weight = float(budget_weight)
        self.budget_band = float(budget_band)
        metric = budget_metric if isinstance(budget_metric, BudgetMetric) else resolve_metric(space, budget_metric)
        self.expected = metric.expected
        self.num_random = int(num_random)
        self.temperature = float(distill_temperature)
        self.label_smoothing = float(label_smoothing)
        self.dtype = amp_dtype(amp)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.world_size = int(world_size)
        self._gates = space.gates()
        self.alphas = [gate.alpha for gate in self._gates.values()]  # gate order
        use_scaler = self.dtype == torch.float16
        self.weight_scaler = torch.amp.GradScaler(device.type) if use_scaler else None
        self.arch_scaler = torch.amp.GradScaler(device.type) if use_scaler else None
        self._groups = {gid: list(info.candidates) for gid, info in space.groups.items()}
        self._min_widths = {gid: cands[0] for gid, cands in self._groups.items()}
        use_slices, self.slimmable_reason = slimmable_choice(slimmable, device)
        check_slice_buckets("slice_buckets", slice_buckets)  # the option's own rule
        self.slice_buckets = slice_buckets
        self.runner = self._sliced_runner() if use_slices else None
        self.bn_stats = bn_stats
        self.frozen_bn = FrozenStats(space)
        #: ``{phase: seconds}`` accumulated when set to a dict (benchmarks); None: no timing
        self.timings: dict[str, float] | None = None

    @contextlib.contextmanager
    def _clock(self, phase: str):
        """Adds the block's wall time to ``timings[phase]`` (device-synchronized) when timing."""
        if self.timings is None:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0

    def _sliced_runner(self) -> SlicedRunner | None:
        """A checked :class:`SlicedRunner`, or None (masks) with the reason in ``slimmable_reason``."""
        runner = SlicedRunner(self.space, buckets=self.slice_buckets)
        mixed = {gid: c[(3 * i + 1) % len(c)] for i, (gid, c) in enumerate(self._groups.items())}
        inside = {gid: next((w for w in c if w not in runner.grids[gid]), c[0]) for gid, c in self._groups.items()}
        if not self._groups:
            self.slimmable_reason = "no prunable group"
            return None
        checks = [self._min_widths, mixed] + ([inside] if inside != self._min_widths else [])
        if runner.supported and all(runner.check(w) for w in checks):
            self.slimmable_reason = None
            return runner
        self.slimmable_reason = runner.reason
        return None

    @property
    def slimmable(self) -> bool:
        """True when min and random sub-nets run with physically sliced weights."""
        return self.runner is not None

    # sub-net sampling (identical on every rank: one seeded CPU generator)
    def transition_probs(self) -> list[torch.Tensor]:
        """``sigmoid(alpha)`` of every gate on the CPU, fetched with ONE device transfer."""
        flat = torch.cat([a.detach().reshape(-1) for a in self.alphas]).float().sigmoid().cpu()
        return list(torch.split(flat, [a.numel() for a in self.alphas]))

    def sample_widths(self, markov_prob: float, probs: list[torch.Tensor] | None = None) -> tuple[dict[str, int], str]:
        """Per-group widths of a random sub-net: Markov sample w.p. ``markov_prob``, else uniform.

        A Markov sample walks each gate's chain (same law as ``MarkovGate.sample``):
        block ``k`` is kept while ``u_k < p_k`` for all blocks up to ``k``. ``probs``:
        cached :meth:`transition_probs` (fetched when needed).
        """
        g = self.generator
        if markov_prob > 0.0 and torch.rand((), generator=g).item() < markov_prob:
            probs = probs if probs is not None else self.transition_probs()
            widths = {}
            for (gid, gate), p in zip(self._gates.items(), probs):
                kept = int((torch.rand(p.shape, generator=g) < p).to(torch.int64).cumprod(0).sum())
                widths[gid] = gate.split.candidates[kept]
            return widths, "markov"
        widths = {}
        for gid, cands in self._groups.items():
            widths[gid] = cands[int(torch.randint(len(cands), (), generator=g))]
        return widths, "uniform"

    def _backward(self, loss: torch.Tensor, scaler) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def weight_step(self, x: torch.Tensor, y: torch.Tensor, *, markov_prob: float = 0.0,
                    host_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Max, min and ``num_random`` random sub-nets, accumulated, ONE optimizer step.

        Returns detached scalars: ``loss_max`` (CE), ``loss_min``/``loss_random`` (KL to the
        max net), ``acc_max`` (train top-1 of the max net on this batch, in percent). ``host_labels``:
        ``y`` still on the CPU, to check the label range without a device sync.
        """
        space, net = self.space, self.net
        is_ddp = net is not space and hasattr(net, "no_sync")
        self.weight_optimizer.zero_grad(set_to_none=True)
        kinds = ["max", "min"] + ["random"] * self.num_random
        stats: dict[str, torch.Tensor] = {}
        teacher = None
        rand_losses = []
        probs = self.transition_probs() if markov_prob > 0.0 else None  # alphas are fixed during this step
        for i, kind in enumerate(kinds):
            last = i == len(kinds) - 1
            sync = net.no_sync() if (is_ddp and not last) else contextlib.nullcontext()
            with sync, self._clock(kind):
                widths = None
                if kind == "random":
                    widths, _ = self.sample_widths(markov_prob, probs)
                elif kind == "min":
                    widths = self._min_widths
                sliced = self.runner.widths(widths) if (self.runner is not None and widths is not None) else None
                if sliced is None:
                    if widths is not None:
                        space.set_widths(widths)
                    else:
                        space.set_mode(kind)
                    sliced = contextlib.nullcontext()
                frozen = self.frozen_bn() if (kind != "max" and self.bn_stats == "max") else contextlib.nullcontext()
                with frozen, sliced, autocast(self.device, self.dtype):
                    out = net(x)
                out = logits_tensor(out, "search").float()
                if kind == "max":
                    loss = checked_loss(F.cross_entropy, out, y, "search", host=host_labels,
                                        label_smoothing=self.label_smoothing)
                    teacher = out.detach()
                    stats["loss_max"] = loss.detach()
                    stats["acc_max"] = (teacher.argmax(1) == y).float().mean() * 100.0
                else:
                    loss = distill_loss(out, teacher, self.temperature)
                    if kind == "min":
                        stats["loss_min"] = loss.detach()
                    else:
                        rand_losses.append(loss.detach())
                self._backward(loss, self.weight_scaler)
        if rand_losses:
            stats["loss_random"] = torch.stack(rand_losses).mean()
        with self._clock("weight optimizer"):
            if self.weight_scaler is not None:
                self.weight_scaler.step(self.weight_optimizer)
                self.weight_scaler.update()
            else:
                self.weight_optimizer.step()
        space.set_mode("max")
        return stats

    def arch_step(self, x: torch.Tensor, y: torch.Tensor, *,
                  host_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Gates in ``expected`` mode, ``CE + budget_weight * budget_loss``, step the alphas only.

        Returns detached scalars ``arch_ce``, ``budget_loss`` and ``expected`` (the expected
        budget metric, e.g. MACs, before the step).
        """
        if self.arch_optimizer is None:
            raise ConfigError("arch_step() needs an arch_optimizer")
        space = self.space
        space.set_mode("expected")
        try:
            with self._clock("arch forward"), self.frozen_bn(), autocast(self.device, self.dtype):
                out = space(x)  # the unwrapped module: no DDP hooks, alphas reduced below
            with self._clock("arch budget"):
                ce = checked_loss(F.cross_entropy, logits_tensor(out, "search").float(), y, "search", host=host_labels,
                                  label_smoothing=self.label_smoothing)
                e = self.expected(space)
                bl = budget_loss(e, self.target, band=self.budget_band)
                loss = ce + self.budget_weight * bl.to(ce.dtype)
            with self._clock("arch backward"):
                scaled = self.arch_scaler.scale(loss) if self.arch_scaler is not None else loss
                grads = torch.autograd.grad(scaled, self.alphas, allow_unused=True)
        finally:
            space.set_mode("max")
        for a, g in zip(self.alphas, grads):
            a.grad = torch.zeros_like(a) if g is None else g
        if self.world_size > 1:
            import torch.distributed as dist

            flat = torch.cat([a.grad.reshape(-1) for a in self.alphas])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for a in self.alphas:
                a.grad.copy_(flat[offset:offset + a.numel()].view_as(a))
                offset += a.numel()
        if self.arch_scaler is not None:
            self.arch_scaler.step(self.arch_optimizer)
            self.arch_scaler.update()
        else:
            self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)
        return {"arch_ce": ce.detach(), "budget_loss": bl.detach(), "expected": e.detach()}

