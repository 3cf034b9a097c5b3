"""The DMCP search loop (DESIGN.md section 5, official recipe as the default).

One *iteration* on a batch ``(x, y)``:

1. **weight step** (every iteration): four sub-nets, gradients accumulated, ONE optimizer
   step -- the max width (cross-entropy with the labels), the min width and
   ``num_random`` random sub-nets. During warm-up a random sub-net draws every group's
   width uniformly from its candidates; after warm-up it is instead a Markov sample of
   the gates with probability ``p`` (:mod:`dmcpfx.search.schedule`: official ``1 - 0.9999^s``,
   ``s`` = steps since the architecture phase began; a linear ramp as an option). The
   non-max sub-nets learn from the max net's DETACHED logits (KL divergence, in-place
   distillation).
2. **architecture step** (after the first ``warmup_epochs``, every iteration, same batch):
   gates in ``expected`` mode at max width, ``loss = CE + budget_weight * budget_loss``
   (:func:`dmcpfx.search.budget.budget_loss`), gradient wrt the alphas only, SGD (nesterov,
   momentum 0.9, no weight decay) with lr cosine from ``arch_lr`` to ``arch_min_lr`` over
   the architecture phase. It leaves the BatchNorm running statistics bit-identical
   (:mod:`dmcpfx.search.bn`); by default only the max net of the weight step updates them.

Weights use SGD nesterov (momentum 0.9) with a per-step cosine schedule from ``lr`` to
``min_lr`` over the whole search, weight decay ``weight_decay`` on conv/linear weights and
none on norm weights and biases. Defaults follow the official DMCP configs
(Zx55/dmcp ``config/res50/dmcp.yaml``: lr 0.5 -> 0.08, arch lr 0.5 -> 0.1, flop loss
weight 0.1, 4 sub-nets, KL temperature 1) with the MobileNetV2 weight decay 4e-5.

Files (``run_dir``, written by rank 0 only): ``metrics.jsonl`` (one JSON object per line:
``kind`` = ``step`` every ``log_interval`` steps, ``epoch`` after each epoch) and
``checkpoint.pt`` (atomic, after each epoch: weights + alphas, both optimizers and
schedulers, every RNG state, epoch and step). ``resume=True`` continues from the last
checkpoint and reaches the same result as an uninterrupted run (same seed, CPU).

Under ``torchrun`` the same call runs data-parallel: the space is wrapped in DDP with the
alphas excluded; alpha gradients are all-reduced by hand (they are unused in the weight
step), so alphas stay bit-identical across ranks; the sub-net sampling generator is
seeded identically on every rank; a plain ``DataLoader`` is rebuilt with a
``DistributedSampler``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .alpha_init import check_alpha_init, init_alphas
from .bn import BN_STATS, recalibrate_bn
from .space import check_space
from .budget import expected_flops, expected_params, expected_width_values
from ..errors import ConfigError
from ..finite import check_search_step
from .evaluation import evaluate
from ..progress import is_terminal
from .schedule import check_markov_schedule, markov_prob
from .result import RunningMeans, SearchResult, check_budget, human
from .state import (
    CHECKPOINT_FORMAT,
    check_resumable,
    distributed_loader,
    gather_rng,
    load_state,
    loader_generators,
)
from ..amp import amp_dtype, to_device
from .step import SearchStep
from ..training import (
    DistContext,
    MetricsWriter,
    cosine_schedule,
    ddp_wrap,
    distributed_context,
    load_checked,
    param_groups,
    save_checkpoint,
    seed_everything,
)

__all__ = ["search"]



# --- small helpers ---------------------------------------------------------------------
def _resolve_device(device: str | torch.device | None, ctx: DistContext) -> torch.device:
    if device is not None:
        return torch.device(device)
    if ctx.distributed:
        return ctx.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")



def search(
    space: nn.Module,
    train_loader: Iterable,
    *,
    target_flops: int | float | str,
    epochs: int,
    val_loader: Iterable | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    seed: int = 0,
    warmup_epochs: int | None = None,
    lr: float = 0.5,
    min_lr: float = 0.08,
    lr_warmup_steps: int = 0,
    lr_warmup_start: float = 0.0,
    momentum: float = 0.9,
    weight_decay: float = 4e-5,
    arch_lr: float = 0.5,
    arch_min_lr: float = 0.1,
    arch_momentum: float = 0.9,
    budget_weight: float = 0.1,
    budget_band: float = 0.95,
    budget_metric: str = "flops",
    num_random: int = 2,
    markov_schedule: str = "official",
    markov_decay: float = 0.9999,
    markov_prob_final: float = 1.0,
    alpha_init: str = "budget",
    bn_stats: str = "max",
    distill_temperature: float = 1.0,
    label_smoothing: float = 0.0,
    calib_batches: int = 5,
    slimmable: bool = True,
    log_interval: int = 50,
    progress: bool = True,
    callback: Callable[[dict], Any] | None = None,
) -> SearchResult:
    """Run the DMCP search on ``space`` (from ``dmcpfx.instrument``) in place.

    Args:
        space: the SearchSpace; trained in place (weights and alphas), moved to ``device``.
        train_loader: yields ``(inputs, labels)``; must have ``len()``. Under torchrun a
            plain DataLoader is rebuilt with a DistributedSampler (per-rank batch size).
        target_flops: the budget -- absolute (``2e9``, ``"2G"``) or a ratio of the full
            model (``0.5``), see :func:`dmcpfx.search.budget.parse_target`. MACs of one forward on
            the example input; a parameter count when ``budget_metric="params"``.
        epochs: total epochs; the first ``warmup_epochs`` (default ``epochs // 2``) train
            the weights only.
        val_loader: if given, the max-width net is evaluated after every epoch (summed
            over ranks), its BatchNorm statistics first re-estimated on ``calib_batches``
            training batches (official: 5; the supernet's statistics are restored after).
        calib_batches: also, after the last step, the max-width BatchNorm statistics are
            re-estimated on that many training batches (rank 0's broadcast under torchrun),
            so the returned supernet is consistent at max width; 0: keep the running
            statistics of the search (which, with ``bn_stats="max"``, track the max net).
        run_dir: where ``metrics.jsonl`` and ``checkpoint.pt`` go (rank 0); None: no files.
        resume: continue from ``run_dir/checkpoint.pt`` when it exists. Without ``resume``
            an existing checkpoint there is an error (nothing is overwritten silently).
        device: default ``cuda`` when available (``cuda:LOCAL_RANK`` under torchrun), else CPU.
        amp: ``"bf16"``, ``"fp16"`` (with gradient scaling) or None (float32).
        channels_last: NHWC memory format for the space and the 4-D inputs.
        seed: seeds Python/NumPy/torch (``seed + rank``) and the sub-net sampler (``seed``,
            identical on every rank) when the search starts from scratch.
        lr, min_lr, lr_warmup_steps, momentum, weight_decay: weight SGD (nesterov) and its
            per-step cosine schedule over all epochs.
        lr_warmup_start: the weight lr at the first warm-up step (official MobileNetV2:
            0.2 with ``lr=0.5``, ``lr_warmup_steps=1000``); 0.0: a ramp from zero.
        arch_lr, arch_min_lr, arch_momentum: alpha SGD (nesterov, no weight decay), cosine
            over the architecture phase.
        budget_weight, budget_band: ``loss = CE + budget_weight * budget_loss(E, T, band)``.
        num_random: random sub-nets per weight step (besides max and min).
        markov_schedule, markov_decay, markov_prob_final: the probability that a random
            sub-net is a Markov sample (:mod:`dmcpfx.search.schedule`): ``"official"``
            ``1 - markov_decay^s`` (default), or ``"linear"`` from 0 at the first
            architecture step to ``markov_prob_final`` at the last.
        alpha_init: where the alphas start (:mod:`dmcpfx.search.alpha_init`): ``"budget"``
            (default, a deviation from the official code) one common value that puts the
            expected count at 99% of the target, so the search is at its budget from the first
            step whatever the number of architecture steps; ``"zero"`` (official) alpha = 0,
            expected MACs near 4% of the full model at the start. Applied when the search starts
            from scratch, not on resume.
        bn_stats: which weight-step forwards update the BatchNorm running statistics:
            ``"max"`` (default, the max net only) or ``"all"`` (official). No gradient
            depends on it; the architecture step never updates them (:mod:`dmcpfx.search.bn`).
        distill_temperature, label_smoothing: KL temperature; CE label smoothing.
        slimmable: run the min and random sub-nets with physically sliced weights
            (:mod:`dmcpfx.search.slimmable`) instead of masks: same result on the kept channels,
            a fraction of the compute. Falls back to masks, with the reason in the
            ``slimmable`` record of ``metrics.jsonl``, where slicing is not possible.
        log_interval: a ``step`` record (and progress-bar update) every that many steps.
        progress: show a tqdm bar per epoch (rank 0).
        callback: called on every rank after each epoch's checkpoint with the epoch record;
            an exception raised there stops the search (resume later with ``resume=True``).

    Returns:
        A :class:`SearchResult`; the space is left with its gates in ``max`` mode.
    """
    check_space(space, "search")
    ctx = distributed_context()
    device = _resolve_device(device, ctx)
    amp_dtype(amp)  # validates
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    warmup_epochs = epochs // 2 if warmup_epochs is None else int(warmup_epochs)
    if not 0 <= warmup_epochs <= epochs:
        raise ConfigError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    check_markov_schedule(markov_schedule, markov_decay, markov_prob_final)
    check_alpha_init(alpha_init)
    if bn_stats not in BN_STATS:
        raise ConfigError(f"bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
    if not 0.0 <= lr_warmup_start <= lr:
        raise ConfigError(f"lr_warmup_start must be in [0, lr={lr}], got {lr_warmup_start}")
    target, full = check_budget(space, target_flops, budget_metric)

    # --- data and schedule
    train_loader = distributed_loader(train_loader, ctx, seed)
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError("train_loader must have a length (steps per epoch)") from exc
    if steps_per_epoch < 1:
        raise ConfigError("train_loader is empty")
    total_steps = epochs * steps_per_epoch
    arch_start = warmup_epochs * steps_per_epoch
    arch_steps = total_steps - arch_start

    # --- model and optimizers
    space.to(device)
    if channels_last:
        space.to(memory_format=torch.channels_last)
    was_training = space.training
    space.train()
    alphas = list(space.arch_parameters())
    weight_opt = torch.optim.SGD(
        param_groups(space.weight_parameters(), weight_decay), lr=lr, momentum=momentum, nesterov=True
    )
    arch_opt = torch.optim.SGD(alphas, lr=arch_lr, momentum=arch_momentum, nesterov=True, weight_decay=0.0)
    scheds = {
        "weight_scheduler": cosine_schedule(weight_opt, total_steps, warmup_steps=lr_warmup_steps,
                                            final_lr_ratio=min_lr / lr, warmup_start_ratio=lr_warmup_start / lr),
        "arch_scheduler": cosine_schedule(arch_opt, max(1, arch_steps), final_lr_ratio=arch_min_lr / arch_lr),
    }
    generator = torch.Generator().manual_seed(seed)
    net = space
    if ctx.distributed:  # alphas excluded from DDP: broadcast once here, all-reduced in arch_step
        import torch.distributed as dist

        for a in alphas:
            dist.broadcast(a.data, src=0)
        alpha_ids = {id(a) for a in alphas}
        net = ddp_wrap(space, ctx, ignore=[n for n, p in space.named_parameters() if id(p) in alpha_ids])
    stepper = SearchStep(
        space, net=net, weight_optimizer=weight_opt, arch_optimizer=arch_opt, target=target, device=device,
        budget_weight=budget_weight, budget_band=budget_band, budget_metric=budget_metric, num_random=num_random,
        distill_temperature=distill_temperature, label_smoothing=label_smoothing, amp=amp, generator=generator,
        world_size=ctx.world_size, slimmable=slimmable, bn_stats=bn_stats,
    )
    stateful = {
        "space": space, "weight_optimizer": weight_opt, "arch_optimizer": arch_opt, **scheds,
        "weight_scaler": stepper.weight_scaler, "arch_scaler": stepper.arch_scaler,
    }
    config = {
        "target": target, "budget_metric": budget_metric, "epochs": epochs, "warmup_epochs": warmup_epochs,
        "steps_per_epoch": steps_per_epoch, "seed": seed, "num_random": num_random, "world_size": ctx.world_size,
        "slimmable": stepper.slimmable, "markov_schedule": markov_schedule, "markov_decay": float(markov_decay),
        "markov_prob_final": float(markov_prob_final), "bn_stats": bn_stats, "alpha_init": alpha_init,
    }

    expected_fn = expected_flops if budget_metric == "flops" else expected_params

    def current_expected() -> float:
        with torch.no_grad():
            return float(expected_fn(space))

    # --- files and resume
    run_path = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_path / "checkpoint.pt" if run_path is not None else None
    metrics_path = run_path / "metrics.jsonl" if run_path is not None else None
    writer = MetricsWriter(metrics_path) if (metrics_path is not None and ctx.is_main) else None
    start_epoch, step, history = 0, 0, []
    if ckpt_path is not None and ckpt_path.exists():
        if not resume:
            raise ConfigError(f"{ckpt_path} already exists; pass resume=True to continue it or use another run_dir")
        loaded = load_checked(ckpt_path, "search checkpoint")
        check_resumable(loaded, config, ckpt_path)
        load_state(loaded, stateful, generator, train_loader, ctx, seed)
        start_epoch, step, history = int(loaded["epoch"]), int(loaded["step"]), list(loaded["history"])
        if writer is not None and writer.path.exists():
            with open(writer.path, "r+b") as f:  # drop records written after the checkpoint
                f.truncate(min(int(loaded["metrics_bytes"]), os.path.getsize(writer.path)))
        del loaded
    else:
        if metrics_path is not None and metrics_path.exists() and not resume:
            raise ConfigError(f"{metrics_path} already exists but no checkpoint does; pass resume=True to start "
                              f"that run over, or use another run_dir (nothing was changed)")
        seed_everything(seed + ctx.rank)
        alpha_start = init_alphas(space, alpha_init, target, expected_fn)  # deterministic: same on every rank
        if writer is not None and writer.path.exists():
            writer.path.unlink()
        if writer is not None:
            writer.write({"kind": "slimmable", "sliced": stepper.slimmable, "reason": stepper.slimmable_reason})
            writer.write({"kind": "start", "step": 0, "alpha_init": alpha_init, "alpha": alpha_start,
                          "expected": current_expected(), "target": target, "full": full, "metric": budget_metric,
                          "expected_widths": expected_width_values(space)})

    # --- the loop
    # not tqdm.auto: its asyncio variant calls iter() on the loader one extra time per epoch
    from tqdm import tqdm

    for epoch in range(start_epoch, epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        phase = "warmup" if epoch < warmup_epochs else "arch"
        epoch_meter, interval_meter = RunningMeans(), RunningMeans()
        t0, images = time.perf_counter(), 0
        bar = tqdm(
            train_loader, total=steps_per_epoch, desc=f"search {epoch + 1}/{epochs} [{phase}]",
            disable=not (progress and ctx.is_main and is_terminal()), dynamic_ncols=True, leave=True,
        )
        for batch in bar:
            if step >= total_steps:
                break
            x, y = to_device(batch, device, channels_last)
            in_arch = step >= arch_start
            p = markov_prob(step - arch_start, arch_steps, schedule=markov_schedule, decay=markov_decay,
                            final=markov_prob_final)
            lr_now = weight_opt.param_groups[0]["lr"]
            arch_lr_now = arch_opt.param_groups[0]["lr"] if in_arch else None
            stats = stepper.weight_step(x, y, markov_prob=p)
            scheds["weight_scheduler"].step()
            if in_arch:
                stats.update(stepper.arch_step(x, y))
                scheds["arch_scheduler"].step()
            check_search_step(  # NaN/inf loss or alpha: stop, naming epoch and step
                stats, space, epoch=epoch + 1, step=step + 1, lr=lr_now, arch_lr=arch_lr_now)
            epoch_meter.add(stats)
            interval_meter.add(stats)
            images += x.shape[0] * ctx.world_size
            step += 1
            if step % log_interval == 0 or step == total_steps:
                means, interval_meter = interval_meter.means(), RunningMeans()
                e_now = means.pop("expected") if "expected" in means else current_expected()
                if writer is not None:
                    writer.write({
                        "kind": "step", "epoch": epoch + 1, "step": step, "phase": phase, "lr": lr_now,
                        "arch_lr": arch_lr_now, "markov_prob": p, **means, "expected": e_now, "target": target,
                    })
                bar.set_postfix_str(
                    f"loss={means.get('loss_max', float('nan')):.3f} E={human(e_now)}/T={human(target)} lr={lr_now:.3g}"
                )
        bar.close()

        # --- end of epoch: record, evaluate, checkpoint, callback
        seconds = time.perf_counter() - t0
        means = epoch_meter.means()
        means.pop("expected", None)
        record: dict[str, Any] = {
            "kind": "epoch", "epoch": epoch + 1, "step": step, "phase": phase,
            "lr": weight_opt.param_groups[0]["lr"], "arch_lr": arch_opt.param_groups[0]["lr"],
            **means, "expected": current_expected(), "target": target, "full": full, "metric": budget_metric,
            "seconds": seconds, "images_per_s": images / max(seconds, 1e-9),
        }
        if val_loader is not None:  # every rank: a sharded val loader is summed over ranks
            val = evaluate(
                space, val_loader, mode="max", device=device, amp=amp, channels_last=channels_last,
                calib_loader=train_loader, calib_batches=calib_batches, all_reduce=ctx.distributed,
            )
            record.update(val_loss=val["loss"], val_top1=val["top1"])
        record["expected_widths"] = expected_width_values(space)
        history.append(record)
        metrics_bytes = 0
        if writer is not None:
            writer.write(record)
            metrics_bytes = os.path.getsize(writer.path)
        rng_states = gather_rng(ctx)  # a collective: every rank
        if ckpt_path is not None and ctx.is_main:
            state = {k: (v.state_dict() if v is not None else {}) for k, v in stateful.items()}
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "step": step, "config": config, **state,
                "subnet_rng": generator.get_state(),
                "loader_rng": [g.get_state() for g in loader_generators(train_loader)],
                "rng": rng_states, "history": history, "metrics_bytes": metrics_bytes,
            })
        if ctx.distributed:
            import torch.distributed as dist

            for buf in space.buffers():  # BN statistics drift apart in the (local) arch step
                dist.broadcast(buf.data, src=0)
            dist.barrier()
        if callback is not None:
            callback(record)

    space.set_mode("max")
    if calib_batches > 0 and step >= total_steps:  # the returned supernet: clean max-width BN statistics
        recalibrate_bn(space, train_loader, calib_batches, device=device, amp=amp, channels_last=channels_last)
        if ctx.distributed:
            import torch.distributed as dist

            for buf in space.buffers():
                dist.broadcast(buf.data, src=0)
    space.train(was_training)
    return SearchResult(
        target=target, expected=current_expected(), full=full, budget_metric=budget_metric,
        expected_widths=expected_width_values(space), epochs=epochs, steps=step, run_dir=run_path,
        metrics_path=metrics_path, checkpoint_path=ckpt_path, history=history,
    )
