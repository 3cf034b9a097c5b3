"""The machinery of one search run (:func:`dmcpfx.search` reads as the list of its steps).

:class:`SearchRun` owns the optimizers, schedules, the step and the files of one run:
``start_or_resume`` (fresh start: seed, alphas at their ``alpha_init``, the ``slimmable`` and
``start`` records; resume: every state from ``checkpoint.pt``), ``train_epoch`` (weight and
architecture steps with ``step`` records), ``end_epoch`` (the ``epoch`` record, optional
max-width evaluation, checkpoint) and ``finish`` (max-width BatchNorm re-estimation).
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable

import torch
from torch import nn

from ..amp import to_device
from ..batches import model_fails_on
from ..errors import ConfigError
from ..finite import check_search_step
from ..harness import RunFiles, steps_per_epoch
from ..labels import host_labels
from ..progress import is_terminal
from ..training import DistContext, cosine_schedule, ddp_wrap, param_groups, seed_everything
from .alpha_init import init_alphas
from .bn import recalibrate_bn
from .budget import expected_width_values
from .metric import BudgetMetric
from .evaluation import evaluate_space
from .options import RESUME_FREE, SearchOptions
from .result import RunningMeans, SearchResult, human
from .schedule import markov_prob
from .state import CHECKPOINT_FORMAT, distributed_loader, load_state, loader_generators
from .step import SearchStep

__all__ = ["SearchRun", "check_lr_warmup", "search_steps_per_epoch"]


def search_steps_per_epoch(train_loader: Iterable, ctx: DistContext, seed: int) -> int:
    """Weight steps per epoch of a search on ``train_loader`` (per process under torchrun)."""
    return steps_per_epoch(distributed_loader(train_loader, ctx, seed), "search")


def check_lr_warmup(opts: SearchOptions, steps: int) -> None:
    """``search.lr_warmup_steps`` must end before the search's ``opts.epochs * steps`` weight
    steps (``steps`` per epoch); a ConfigError naming the key and the step count."""
    total = opts.epochs * steps
    if opts.lr_warmup_steps and opts.lr_warmup_steps >= total:
        raise ConfigError(f"config key 'search.lr_warmup_steps' must be below the search's {total:,} weight steps "
                          f"({opts.epochs} epoch(s) x {steps} batches), got {opts.lr_warmup_steps}")


def _broadcast_buffers(space: nn.Module) -> None:
    import torch.distributed as dist

    for buf in space.buffers():  # BN statistics drift apart in the (local) arch step
        dist.broadcast(buf.data, src=0)


class SearchRun:
    """One search of ``space`` on ``train_loader`` with ``opts`` to the absolute ``target`` in the
    unit of ``metric`` (the budget: MACs, params or a latency table's ms)."""

    def __init__(self, space: nn.Module, train_loader: Iterable, opts: SearchOptions, ctx: DistContext,
                 device: torch.device, target: float, metric: BudgetMetric):
        self.space, self.opts, self.ctx, self.device, self.target = space, opts, ctx, device, target
        self.metric, self.full = metric, metric.full
        self.warmup_epochs = opts.resolved_warmup_epochs
        self.loader = distributed_loader(train_loader, ctx, opts.seed)
        self.steps_per_epoch = steps_per_epoch(self.loader, "search")
        check_lr_warmup(opts, self.steps_per_epoch)
        self.total_steps = opts.epochs * self.steps_per_epoch
        self.arch_start = self.warmup_epochs * self.steps_per_epoch
        self.arch_steps = self.total_steps - self.arch_start
        self._build(space, opts)
        self.expected_fn = metric.expected
        self.start_epoch, self.step, self.history = 0, 0, []
        self.files = self._run_files(None)

    def _build(self, space: nn.Module, o: SearchOptions) -> None:
        """The space on its device, both optimizers and schedules, the sub-net generator, the step."""
        space.to(self.device)
        if o.channels_last:
            space.to(memory_format=torch.channels_last)
        self.was_training = space.training
        space.train()
        alphas = list(space.arch_parameters())
        self.weight_opt = torch.optim.SGD(param_groups(space.weight_parameters(), o.weight_decay), lr=o.lr,
                                          momentum=o.momentum, nesterov=True)
        self.arch_opt = torch.optim.SGD(alphas, lr=o.arch_lr, momentum=o.arch_momentum, nesterov=True,
                                        weight_decay=0.0)
        self.scheds = {
            "weight_scheduler": cosine_schedule(self.weight_opt, self.total_steps, warmup_steps=o.lr_warmup_steps,
                                                final_lr_ratio=o.min_lr / o.lr,
                                                warmup_start_ratio=o.lr_warmup_start / o.lr),
            "arch_scheduler": cosine_schedule(self.arch_opt, max(1, self.arch_steps),
                                              final_lr_ratio=o.arch_min_lr / o.arch_lr),
        }
        self.generator = torch.Generator().manual_seed(o.seed)
        net = space
        if self.ctx.distributed:  # alphas excluded from DDP: broadcast once here, all-reduced in arch_step
            import torch.distributed as dist

            for a in alphas:
                dist.broadcast(a.data, src=0)
            alpha_ids = {id(a) for a in alphas}
            net = ddp_wrap(space, self.ctx, ignore=[n for n, p in space.named_parameters() if id(p) in alpha_ids])
        self.stepper = SearchStep(
            space, net=net, weight_optimizer=self.weight_opt, arch_optimizer=self.arch_opt, target=self.target,
            device=self.device, budget_weight=o.budget_weight, budget_band=o.budget_band,
            budget_metric=self.metric, num_random=o.num_random, distill_temperature=o.distill_temperature,
            label_smoothing=o.label_smoothing, amp=o.amp, generator=self.generator, world_size=self.ctx.world_size,
            slimmable=o.slimmable, slice_buckets=o.slice_buckets, bn_stats=o.bn_stats,
        )
        self.stateful = {
            "space": space, "weight_optimizer": self.weight_opt, "arch_optimizer": self.arch_opt, **self.scheds,
            "weight_scaler": self.stepper.weight_scaler, "arch_scaler": self.stepper.arch_scaler,
        }

    def record(self) -> dict[str, Any]:
        """What the checkpoint stores and a resume must match: the options (the target made
        absolute, the warm-up resolved), the data's steps per epoch, the world size and
        whether the sub-nets run sliced."""
        options = {k: v for k, v in self.opts.to_dict().items() if k not in RESUME_FREE}
        return {**options, "target": self.target, "warmup_epochs": self.warmup_epochs,
                "steps_per_epoch": self.steps_per_epoch, "world_size": self.ctx.world_size,
                "sliced": self.stepper.slimmable}

    def expected(self) -> float:
        with torch.no_grad():
            return float(self.expected_fn(self.space))

    # --- files and resume
    def _run_files(self, run_dir: str | os.PathLike | None) -> RunFiles:
        """``run_dir/checkpoint.pt`` and ``run_dir/metrics.jsonl`` (None: no files)."""
        return RunFiles(run_dir, checkpoint="checkpoint.pt", metrics="metrics.jsonl", fmt=CHECKPOINT_FORMAT,
                        what="search checkpoint", ctx=self.ctx)

    def start_or_resume(self, run_dir: str | os.PathLike | None, resume: bool) -> None:
        """Resume from ``run_dir/checkpoint.pt`` (``resume`` must be set), or start afresh."""
        files = self.files = self._run_files(run_dir)
        if files.has_checkpoint():
            if not resume:
                raise ConfigError(f"{files.checkpoint_path} already exists; pass resume=True to continue it or "
                                  f"use another run_dir")
            loaded = files.load(self.record())
            load_state(loaded, self.stateful, self.generator, self.loader, self.ctx, self.opts.seed)
            self.start_epoch, self.step = int(loaded["epoch"]), int(loaded["step"])
            self.history = list(loaded["history"])
            files.start_metrics(loaded)
            return
        if files.metrics_path is not None and files.metrics_path.exists() and not resume:
            raise ConfigError(f"{files.metrics_path} already exists but no checkpoint does; pass resume=True "
                              f"to start that run over, or use another run_dir (nothing was changed)")
        self._start()

    def _start(self) -> None:
        o = self.opts
        seed_everything(o.seed + self.ctx.rank)
        alpha = init_alphas(self.space, o.alpha_init, self.target, self.expected_fn)  # the same on every rank
        self.files.start_metrics(None)
        self.files.write({"kind": "slimmable", "sliced": self.stepper.slimmable,
                          "reason": self.stepper.slimmable_reason})
        if self.files.writer is not None:
            self.files.write({"kind": "start", "step": 0, "alpha_init": o.alpha_init, "alpha": alpha,
                              "expected": self.expected(), "target": self.target, "full": self.full,
                              "metric": o.budget_metric, "expected_widths": expected_width_values(self.space)})

    # --- one epoch
    def phase(self, epoch: int) -> str:
        return "warmup" if epoch < self.warmup_epochs else "arch"

    def train_epoch(self, epoch: int, progress: bool) -> tuple[dict[str, float], float, int]:
        """The iterations of ``epoch`` (0-based): ``(mean stats, seconds, images seen)``."""
        from tqdm import tqdm  # not tqdm.auto: its asyncio variant iterates the loader once more per epoch

        o, ctx = self.opts, self.ctx
        epoch_meter, interval_meter = RunningMeans(), RunningMeans()
        t0, images = time.perf_counter(), 0
        bar = tqdm(self.loader, total=self.steps_per_epoch, desc=f"search {epoch + 1}/{o.epochs} [{self.phase(epoch)}]",
                   disable=not (progress and ctx.is_main and is_terminal()), dynamic_ncols=True, leave=True)
        for batch in bar:
            if self.step >= self.total_steps:
                break
            stats, p, lr_now, arch_lr_now = self._iteration(batch, epoch)
            epoch_meter.add(stats)
            interval_meter.add(stats)
            images += self.batch_images
            if self.step % o.log_interval == 0 or self.step == self.total_steps:
                means, interval_meter = interval_meter.means(), RunningMeans()
                e_now = means.pop("expected") if "expected" in means else self.expected()
                self.files.write({
                    "kind": "step", "epoch": epoch + 1, "step": self.step, "phase": self.phase(epoch),
                    "lr": lr_now, "arch_lr": arch_lr_now, "markov_prob": p, **means, "expected": e_now,
                    "target": self.target,
                })
                bar.set_postfix_str(f"loss={means.get('loss_max', float('nan')):.3f} E={human(e_now)}/"
                                    f"T={human(self.target)} lr={lr_now:.3g}")
        bar.close()
        return epoch_meter.means(), time.perf_counter() - t0, images

    def _iteration(self, batch: Any, epoch: int) -> tuple[dict, float, float, float | None]:
        """One weight step (and, in the architecture phase, one arch step) on ``batch``:
        ``(stats, Markov probability, weight lr, arch lr or None)``; sets ``batch_images``."""
        o = self.opts
        x, y = to_device(batch, self.device, o.channels_last)
        in_arch = self.step >= self.arch_start
        p = markov_prob(self.step - self.arch_start, self.arch_steps, schedule=o.markov_schedule,
                        decay=o.markov_decay, final=o.markov_prob_final)
        lr_now = self.weight_opt.param_groups[0]["lr"]
        arch_lr_now = self.arch_opt.param_groups[0]["lr"] if in_arch else None
        host = host_labels(batch)
        with model_fails_on("search", x, self.space.example_inputs[0]):
            stats = self.stepper.weight_step(x, y, markov_prob=p, host_labels=host)
            self.scheds["weight_scheduler"].step()
            if in_arch:
                stats.update(self.stepper.arch_step(x, y, host_labels=host))
                self.scheds["arch_scheduler"].step()
        check_search_step(  # NaN/inf loss or alpha: stop, naming epoch and step
            stats, self.space, epoch=epoch + 1, step=self.step + 1, lr=lr_now, arch_lr=arch_lr_now)
        self.step += 1
        self.batch_images = x.shape[0] * self.ctx.world_size
        return stats, p, lr_now, arch_lr_now

    def end_epoch(self, epoch: int, means: dict[str, float], seconds: float, images: int,
                  val_loader: Iterable | None) -> dict[str, Any]:
        """The ``epoch`` record (evaluated at max width when ``val_loader``), written with the checkpoint."""
        o, ctx = self.opts, self.ctx
        means.pop("expected", None)
        record: dict[str, Any] = {
            "kind": "epoch", "epoch": epoch + 1, "step": self.step, "phase": self.phase(epoch),
            "lr": self.weight_opt.param_groups[0]["lr"], "arch_lr": self.arch_opt.param_groups[0]["lr"],
            **means, "expected": self.expected(), "target": self.target, "full": self.full,
            "metric": o.budget_metric, "seconds": seconds, "images_per_s": images / max(seconds, 1e-9),
        }
        if val_loader is not None:  # every rank: a sharded val loader is summed over ranks
            val = evaluate_space(self.space, val_loader, mode="max", device=self.device, amp=o.amp,
                           channels_last=o.channels_last, calib_loader=self.loader, calib_batches=o.calib_batches,
                           all_reduce=ctx.distributed)
            record.update(val_loss=val["loss"], val_top1=val["top1"])
        record["expected_widths"] = expected_width_values(self.space)
        self.history.append(record)
        self._checkpoint(epoch, record)
        return record

    def _checkpoint(self, epoch: int, record: dict[str, Any]) -> None:
        state = {k: (v.state_dict() if v is not None else {}) for k, v in self.stateful.items()}
        self.files.save_epoch(epoch, record, self.record(), {
            "step": self.step, **state, "subnet_rng": self.generator.get_state(),
            "loader_rng": [g.get_state() for g in loader_generators(self.loader)], "history": self.history,
        })
        if self.ctx.distributed:
            import torch.distributed as dist

            _broadcast_buffers(self.space)
            dist.barrier()

    def finish(self) -> SearchResult:
        """Max-width BatchNorm statistics re-estimated (after the last step), the result."""
        o, space = self.opts, self.space
        space.set_mode("max")
        if o.calib_batches > 0 and self.step >= self.total_steps:  # the returned supernet: clean statistics
            recalibrate_bn(space, self.loader, o.calib_batches, device=self.device, amp=o.amp,
                           channels_last=o.channels_last)
            if self.ctx.distributed:
                _broadcast_buffers(space)
        space.train(self.was_training)
        return SearchResult(
            target=self.target, expected=self.expected(), full=self.full, budget_metric=o.budget_metric,
            expected_widths=expected_width_values(space), epochs=o.epochs, steps=self.step,
            run_dir=self.files.run_path, metrics_path=self.files.metrics_path,
            checkpoint_path=self.files.checkpoint_path,
            history=self.history,
        )
