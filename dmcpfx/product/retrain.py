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
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from dmcpfx.accuracy import evaluate, sum_over_ranks
from dmcpfx.amp import AMP_CHOICES, amp_dtype, autocast_for
from dmcpfx.errors import ConfigError
from dmcpfx.fileio import write_text_atomic
from dmcpfx.finite import FirstBadStep, check_parameters, check_val_loss
from dmcpfx.labels import checked_loss
from dmcpfx.progress import bars_enabled
from dmcpfx.product.retrain_state import CHECKPOINT_FORMAT, CHECKPOINT_NAME, METRICS_NAME, all_rng_states, load_resume_state
from dmcpfx.training import (
    MetricsWriter,
    cosine_schedule,
    ddp_wrap,
    distributed_context,
    param_groups,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
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


def _check_args(epochs: int, warmup_epochs: int, momentum: float, nesterov: bool, amp: str | None, init) -> None:
    if epochs < 1:
        raise ConfigError(f"retrain: epochs must be >= 1, got {epochs}")
    if not 0 <= warmup_epochs < epochs:
        raise ConfigError(f"retrain: warmup_epochs must be in [0, epochs={epochs}), got {warmup_epochs}")
    if nesterov and momentum <= 0:
        raise ConfigError(f"retrain: nesterov=True needs momentum > 0, got momentum={momentum}")
    if amp not in AMP_CHOICES:  # the search's spellings: bf16/bfloat16, fp16/float16 or None
        raise ConfigError(f"retrain: amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if init not in ("scratch", "inherit") and not callable(init):
        raise ConfigError(f"retrain: init must be 'scratch', 'inherit' or a callable, got {init!r}")


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
        for i, (images, labels) in enumerate(bar):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with autocast_for(self.amp, self.device):
                logits = self.model(images)
                loss = checked_loss(self.criterion, logits.float(), labels, desc)
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
    *,
    epochs: int,
    val_loader: Iterable | None = None,
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    warmup_epochs: int = 0,
    label_smoothing: float = 0.1,
    amp: Literal["bf16", "bfloat16", "fp16", "float16"] | None = None,
    device: torch.device | str | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    seed: int = 0,
    init: InitMode | Callable[[nn.Module], None] = "scratch",
    progress: bool = True,
) -> RetrainResult:
    """Train ``model`` (in place) for ``epochs`` epochs and evaluate it after each.

    Args:
        model: the compact model; moved to ``device`` and left there, trained.
        train_loader: yields ``(images (N, C, H, W) float, labels (N,) int64)``; must
            have a ``len`` (steps per epoch, for the schedule).
        epochs: total epochs (a resumed run counts the epochs already done).
        val_loader: evaluated after every epoch (same batch format), optional.
        lr: peak learning rate (reached at the end of warm-up; cosine to 0 after).
        momentum, nesterov: SGD momentum settings.
        weight_decay: L2 on weights with ``ndim >= 2`` only.
        warmup_epochs: linear warm-up length, in epochs (stepped per iteration).
        label_smoothing: for the training loss (validation loss is plain CE).
        amp: ``"bf16"`` / ``"fp16"`` autocast (fp16 with a gradient scaler; on CPU use
            bf16, CPU fp16 kernels are very slow), or ``None`` for float32.
        device: default: the distributed context's device (CUDA if available).
        run_dir: where the checkpoint and metrics go; nothing is written without it.
        resume: continue from ``run_dir/retrain_checkpoint.pt`` if it exists (the
            hyper-parameters must match); starts fresh when there is none.
        seed: seeds initialization, shuffling and augmentation (rank r uses seed + r
            after initialization).
        init: ``"scratch"`` re-initializes every parameter (:func:`reinitialize`,
            the paper's choice), ``"inherit"`` keeps the given weights, a callable
            ``init(model)`` applies a custom initialization.
        progress: show a tqdm bar per epoch (rank 0 only).

    Returns:
        :class:`RetrainResult` with the final and best validation metrics and history.

    Raises:
        ConfigError: invalid hyper-parameters, an empty train loader, or a resume
            checkpoint whose hyper-parameters differ from this call's.
    """
    from dmcpfx.api_checks import check_module

    check_module(model, "retrain")
    _check_args(epochs, warmup_epochs, momentum, nesterov, amp, init)
    ctx = distributed_context()
    device = torch.device(device) if device is not None else torch.device(ctx.device)
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError("retrain: train_loader must have a length (steps per epoch)") from exc
    if steps_per_epoch == 0:
        raise ConfigError("retrain: train_loader is empty")

    if resume and run_dir is None:
        raise ConfigError("retrain: resume=True needs run_dir (where the checkpoint lives)")
    run_path = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_path / CHECKPOINT_NAME if run_path is not None else None
    metrics_path = run_path / METRICS_NAME if run_path is not None else None
    config = {
        "epochs": epochs, "lr": lr, "momentum": momentum, "nesterov": nesterov,
        "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing, "amp": amp, "seed": seed,
        "init": init if isinstance(init, str) else getattr(init, "__name__", "callable"),
        "steps_per_epoch": steps_per_epoch, "world_size": ctx.world_size,
    }
    resume_state = None
    if resume and ckpt_path is not None and ckpt_path.exists():
        resume_state = load_resume_state(ckpt_path, config)

    # --- model and initialization (identical on every rank: same seed)
    seed_everything(seed)
    if resume_state is None:
        if init == "scratch":
            skipped = reinitialize(model)
            if skipped:
                warnings.warn(f"retrain(init='scratch'): kept the current values of parameters owned by "
                              f"{skipped} (no reset_parameters())", stacklevel=2)
        elif callable(init):
            init(model)
    else:
        try:
            model.load_state_dict(resume_state["model"])
        except RuntimeError as exc:
            raise ConfigError(f"{ckpt_path}: the checkpoint does not fit this model ({exc})") from exc
    model.to(device)
    train_model = ddp_wrap(model, ctx)
    seed_everything(seed + ctx.rank)

    # --- optimizer, schedule, scaler
    optimizer = torch.optim.SGD(
        param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov
    )
    total_steps = epochs * steps_per_epoch
    scheduler = cosine_schedule(optimizer, total_steps, warmup_steps=warmup_epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(amp) == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    start_epoch, history = 0, []
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        restore_rng_state(resume_state["rng"][ctx.rank])  # world_size is checked in config
        start_epoch, history = resume_state["epoch"], list(resume_state["history"])

    writer = None
    if ctx.is_main and metrics_path is not None:
        # The metrics file mirrors the history being continued (drops epochs that a
        # crashed run logged after its last checkpoint).
        write_text_atomic(metrics_path, "")
        writer = MetricsWriter(metrics_path)
        for record in history:
            writer.write(record)

    step = start_epoch * steps_per_epoch
    show = bars_enabled(progress) and ctx.is_main  # no \r bars in a log file; epoch lines still print
    loop = _EpochLoop(train_model, optimizer, scheduler, scaler, criterion, amp, device)
    for epoch in range(start_epoch, epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        started = time.perf_counter()
        train_loss, train_top1 = loop.run(train_loader, steps_per_epoch, f"retrain epoch {epoch + 1}/{epochs}", show)
        step += steps_per_epoch
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_top1": train_top1,
            "val_top1": None, "val_top5": None, "val_loss": None,
        }
        if val_loader is not None:
            metrics = evaluate(model, val_loader, device, amp=amp)
            record.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"])
            check_val_loss(metrics["loss"], f"retrain epoch {epoch + 1}/{epochs}", _lr_hint(optimizer))
        record["epoch_time_s"] = time.perf_counter() - started
        history.append(record)

        rng_states = all_rng_states()  # collective: every rank takes part
        if ctx.is_main:
            if writer is not None:
                writer.write(record)
            if ckpt_path is not None:
                save_checkpoint(ckpt_path, {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    "config": config,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng_states,
                    "history": history,
                })
            if progress:
                _print_epoch(record, epochs)

    return _result(history, epochs, ckpt_path)


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
