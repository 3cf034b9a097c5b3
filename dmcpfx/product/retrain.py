"""Retrain a compact (materialized) model: the last stage of the pipeline.

The DMCP paper trains the pruned architecture from scratch (``init="scratch"``);
``init="inherit"`` fine-tunes the weights sliced out of the search super-net.

Recipe: SGD with Nesterov momentum, linear warm-up then cosine decay stepped per
iteration, label-smoothed cross-entropy, no weight decay on norm weights and
biases (``ndim <= 1``), optional autocast (``"bf16"`` or ``"fp16"``, the latter
with a gradient scaler). Under ``torchrun`` the model is wrapped in
DistributedDataParallel; only rank 0 writes files.

Files in ``run_dir`` (when given):

- ``retrain_checkpoint.pt``: written atomically after every epoch (model,
  optimizer, scheduler, scaler, every rank's RNG state, history). ``resume=True``
  continues from it and ends, on CPU with the same seed, at exactly the result
  of an uninterrupted run.
- ``retrain_metrics.jsonl``: one JSON object per epoch (see :class:`RetrainResult`).

Accuracies are percentages in [0, 100]; losses are mean per-sample nats.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import torch
from torch import nn

from dmcpfx.accuracy import evaluate, sum_over_ranks
from dmcpfx.amp import amp_dtype, autocast_for, to_device
from dmcpfx.batches import first_batch_fails_on
from dmcpfx.errors import ConfigError
from dmcpfx.finite import FirstBadStep, check_parameters, check_val_loss
from dmcpfx.harness import RunFiles, checked_device, epochs, steps_per_epoch
from dmcpfx.labels import checked_loss, host_labels, logits_tensor
from dmcpfx.progress import bars_enabled
from dmcpfx.product.retrain_options import RetrainOptions
from dmcpfx.product.retrain_state import CHECKPOINT_FORMAT, CHECKPOINT_NAME, METRICS_NAME
from dmcpfx.training import (
    cosine_schedule, ddp_wrap, distributed_context, param_groups, restore_rng_states, seed_everything,
)

__all__ = ["RetrainResult", "retrain", "reinitialize"]


InitMode = Literal["scratch", "inherit"]


@dataclass
class RetrainResult:
    """Outcome of :func:`retrain`.

    Attributes:
        top1, top5, loss: validation metrics after the last epoch (``None`` without a
            val loader). Accuracies in percent, loss in nats per sample.
        best_top1: the highest val top-1 over all epochs (``None`` without val).
        best_epoch: the 1-based epoch where ``best_top1`` was reached (0 without val).
        epochs: number of epochs trained in total (including resumed ones).
        history: one dict per epoch: ``epoch`` (1-based), ``step`` (optimizer steps so
            far), ``lr`` (at the end of the epoch), ``train_loss`` (label-smoothed),
            ``train_top1``, ``val_top1``, ``val_top5``, ``val_loss``, ``epoch_time_s``.
        checkpoint: path of the last checkpoint written, if any.
    """

    top1: float | None
    top5: float | None
    loss: float | None
    best_top1: float | None
    best_epoch: int
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


# --------------------------------------------------------------------------- helpers


def reinitialize(model: nn.Module) -> list[str]:
    """Re-initialize ``model`` in place, as freshly constructed modules would be.

    Calls ``reset_parameters()`` on every submodule that has it (conv, linear, norm
    layers; BatchNorm also resets its running statistics). Returns the names of
    submodules that own parameters directly but have no ``reset_parameters`` (their
    parameters keep their values); :func:`retrain` warns about them.
    """
    skipped = []
    for name, module in model.named_modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
        elif callable(getattr(module, "reset_running_stats", None)):
            module.reset_running_stats()
        elif any(True for _ in module.parameters(recurse=False)):
            skipped.append(name or type(module).__name__)
    return skipped


_LOG_EVERY = 10  # steps between progress-bar updates (each one syncs with the device)


def _lr_hint(optimizer: torch.optim.Optimizer) -> str:
    return (f"the learning rate (peak retrain.lr, now {optimizer.param_groups[0]['lr']:.3g}) is likely too high, "
            f"lower it (or check the data for NaN/inf)")


# --------------------------------------------------------------------------- retrain


def _print_epoch(record: dict[str, Any], epochs: int) -> None:
    from tqdm import tqdm

    val = "" if record["val_top1"] is None else \
        f", val top1 {record['val_top1']:.2f}% top5 {record['val_top5']:.2f}%"
    tqdm.write(f"retrain epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
               f"train top1 {record['train_top1']:.2f}%{val}")


@dataclass
class _EpochLoop:
    """One pass over the training data: forward, backward, optimizer and schedule steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    amp: str | None
    device: torch.device

    def run(self, loader: Iterable, steps: int, desc: str, show: bool) -> tuple[float, float]:
        """Train one epoch; return (mean training loss, top-1 in percent) over all ranks."""
        # not tqdm.auto: its asyncio variant calls iter() on the loader one extra time,
        # which starts the workers twice and draws an extra shuffle seed
        from tqdm import tqdm

        self.model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss * n, correct, n
        bar = tqdm(loader, total=steps, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
        loss = torch.zeros(())
        watch = FirstBadStep(self.device)  # NaN/inf losses, found without a sync per step
        for i, batch in enumerate(bar):
            host = host_labels(batch)
            images, labels = to_device(batch, self.device, channels_last=False)
            with autocast_for(self.amp, self.device), first_batch_fails_on(desc, images, i):
                logits = logits_tensor(self.model(images), desc)
                loss = checked_loss(self.criterion, logits.float(), labels, desc, host=host)
            watch.update(loss, i + 1)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            with torch.no_grad():
                n = float(labels.numel())
                sums[0] += loss.detach().double() * n
                sums[1] += logits.argmax(1).eq(labels).sum()
                sums[2] += n
            if i % _LOG_EVERY == 0 or i == steps - 1:  # a host sync, so only now and then
                watch.check(desc, _lr_hint(self.optimizer))
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.3g}")
        bar.close()
        watch.check(desc, _lr_hint(self.optimizer))
        check_parameters(self.model, desc, _lr_hint(self.optimizer))
        loss_sum, correct, seen = sum_over_ranks(sums.tolist(), self.device)
        if seen == 0:
            raise ConfigError(f"{desc}: the train loader yielded no batch")
        return loss_sum / seen, 100.0 * correct / seen


def retrain(
    model: nn.Module,
    train_loader: Iterable,
    options: RetrainOptions | None = None,
    *,
    val_loader: Iterable | None = None,
    device: torch.device | str | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    **option_values: Any,
) -> RetrainResult:
    """Train ``model`` (in place) for ``epochs`` epochs and evaluate it after each.

    Args:
        model: the compact model; moved to ``device`` and left there, trained.
        train_loader: yields ``(images (N, C, H, W) float, labels (N,) int64)``; must
            have a ``len`` (steps per epoch, for the schedule).
        options: a :class:`~dmcpfx.product.retrain_options.RetrainOptions` (the config's
            ``retrain:`` section, where each option is described; default: its defaults),
            updated by ``option_values``: any of its fields by name (``epochs``, ``lr``,
            ``init``, ...). ``epochs`` counts the epochs of a resumed run too; rank r seeds
            with ``seed + r`` after the initialization.
        val_loader: evaluated after every epoch (same batch format), optional.
        device: default: the distributed context's device (CUDA if available).
        run_dir: where the checkpoint and metrics go; nothing is written without it.
        resume: continue from ``run_dir/retrain_checkpoint.pt`` if it exists (the
            options must match); starts fresh when there is none.
        progress: show a tqdm bar per epoch (rank 0 only).

    Returns:
        :class:`RetrainResult` with the final and best validation metrics and history.

    Raises:
        ConfigError: invalid options, an empty train loader, or a resume checkpoint whose
            options differ from this call's.
    """
    from dmcpfx.api_checks import check_module

    check_module(model, "retrain")
    o = RetrainOptions.build(options, option_values, "retrain")
    ctx = distributed_context()
    device = checked_device(device, "retrain.device") if device is not None else torch.device(ctx.device)
    steps = steps_per_epoch(train_loader, "retrain")
    if resume and run_dir is None:
        raise ConfigError("retrain: resume=True needs run_dir (where the checkpoint lives)")
    files = RunFiles(run_dir, checkpoint=CHECKPOINT_NAME, metrics=METRICS_NAME, fmt=CHECKPOINT_FORMAT,
                     what="retrain checkpoint", ctx=ctx)
    config = {**o.record(), "steps_per_epoch": steps, "world_size": ctx.world_size}
    resume_state = files.load(config) if resume and files.has_checkpoint() else None

    _initialize(model, o, resume_state, files.checkpoint_path)  # identical on every rank: same seed
    model.to(device)
    train_model = ddp_wrap(model, ctx)
    seed_everything(o.seed + ctx.rank)
    optimizer, scheduler, scaler, start_epoch, history = _optimizer_state(model, o, device, steps, resume_state, ctx)
    criterion = nn.CrossEntropyLoss(label_smoothing=o.label_smoothing)
    files.start_metrics(resume_state)

    show = bars_enabled(progress) and ctx.is_main  # no \r bars in a log file; epoch lines still print
    loop = _EpochLoop(train_model, optimizer, scheduler, scaler, criterion, o.amp, device)
    for epoch in epochs(train_loader, start_epoch, o.epochs):
        started = time.perf_counter()
        train_loss, train_top1 = loop.run(train_loader, steps, f"retrain epoch {epoch + 1}/{o.epochs}", show)
        record = _epoch_record(model, val_loader, device, o, epoch, (epoch + 1) * steps, optimizer,
                               train_loss, train_top1)
        record["epoch_time_s"] = time.perf_counter() - started
        history.append(record)
        files.save_epoch(epoch, record, config, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "history": history,
        })
        if ctx.is_main and progress:
            _print_epoch(record, o.epochs)
    return _result(history, o.epochs, files.checkpoint_path)


def _initialize(model: nn.Module, o: RetrainOptions, resume_state: dict | None, ckpt_path: Path | None) -> None:
    """``init`` applied after seeding (scratch, inherit or a callable), or the checkpoint's weights."""
    seed_everything(o.seed)
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state["model"])
        except RuntimeError as exc:
            raise ConfigError(f"{ckpt_path}: the checkpoint does not fit this model ({exc})") from exc
    elif o.init == "scratch":
        skipped = reinitialize(model)
        if skipped:
            warnings.warn(f"retrain(init='scratch'): kept the current values of parameters owned by "
                          f"{skipped} (no reset_parameters())", stacklevel=3)
    elif callable(o.init):
        o.init(model)


def _optimizer_state(model: nn.Module, o: RetrainOptions, device: torch.device, steps_per_epoch: int,
                     resume_state: dict | None, ctx: Any) -> tuple:
    """``(optimizer, scheduler, scaler, start epoch, history)``, restored from ``resume_state``."""
    optimizer = torch.optim.SGD(param_groups(model, o.weight_decay), lr=o.lr, momentum=o.momentum,
                                nesterov=o.nesterov)
    scheduler = cosine_schedule(optimizer, o.epochs * steps_per_epoch, warmup_steps=o.warmup_epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(o.amp) == torch.float16)
    if resume_state is None:
        return optimizer, scheduler, scaler, 0, []
    optimizer.load_state_dict(resume_state["optimizer"])
    scheduler.load_state_dict(resume_state["scheduler"])
    scaler.load_state_dict(resume_state["scaler"])
    restore_rng_states(resume_state["rng"], ctx.rank, ctx.world_size, o.seed, int(resume_state["epoch"]))
    return optimizer, scheduler, scaler, resume_state["epoch"], list(resume_state["history"])


def _epoch_record(model: nn.Module, val_loader: Iterable | None, device: torch.device, o: RetrainOptions,
                  epoch: int, step: int, optimizer: torch.optim.Optimizer, train_loss: float,
                  train_top1: float) -> dict[str, Any]:
    """The metrics record of ``epoch`` (0-based); stops on a non-finite validation loss."""
    record: dict[str, Any] = {
        "epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
        "train_top1": train_top1, "val_top1": None, "val_top5": None, "val_loss": None,
    }
    if val_loader is not None:
        metrics = evaluate(model, val_loader, device, amp=o.amp)
        record.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"])
        check_val_loss(metrics["loss"], f"retrain epoch {epoch + 1}/{o.epochs}", _lr_hint(optimizer))
    return record


def _result(history: list[dict[str, Any]], epochs: int, ckpt_path: Path | None) -> RetrainResult:
    last = history[-1]
    scored = [r for r in history if r["val_top1"] is not None]
    best = max(scored, key=lambda r: r["val_top1"]) if scored else None
    return RetrainResult(
        top1=last["val_top1"],
        top5=last["val_top5"],
        loss=last["val_loss"],
        best_top1=best["val_top1"] if best else None,
        best_epoch=best["epoch"] if best else 0,
        epochs=epochs,
        history=history,
        checkpoint=ckpt_path if ckpt_path is not None and ckpt_path.exists() else None,
    )
