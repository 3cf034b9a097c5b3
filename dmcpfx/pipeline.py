"""The whole pipeline from a :class:`~dmcpfx.config.Config`: analyze -> search -> derive ->
materialize -> retrain -> report, every file in one run directory ``<run.dir>/<run.name>/``.

Run directory (rank 0 writes, every file atomically)::

    config.yaml          the resolved config of the last invocation
    analysis.txt         the group table (analyze)
    metrics.jsonl        search metrics; checkpoint.pt: search checkpoint (resumable)
    arch.yaml            derived widths with exact MACs/params (format dmcpfx-arch/1)
    widths.png           kept vs full channels per group
    compact.pt           the compact model (torch.save of the module, supernet weights)
    compact.onnx         its ONNX export, checked against PyTorch with onnxruntime
    retrain_metrics.jsonl, retrain_checkpoint.pt   retraining
    summary.json         numbers the stages hand on (supernet top-1, retrain top-1, ...)
    report.md            written LAST: a run directory without report.md is not complete

Completeness rule: every check that needs no training (model spec, data path, input shape,
a target above the full model's MACs or below the smallest sub-net, an existing finished
run) runs before the directory is created, and ``report.md`` is written last, atomically.
So a failed or interrupted run never leaves a directory with a ``report.md``; re-running
with ``run.resume=true`` continues it (and first removes a stale ``report.md``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from .config import Config, config_to_dict
from .errors import ConfigError
from .fileio import torch_save_atomic, write_text_atomic

__all__ = ["STAGES", "run_pipeline", "PipelineResult"]

STAGES = ("analyze", "search", "derive", "materialize", "retrain", "report")


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns: the run directory, the stage summary (MACs, top-1 in
    percent, latencies in ms) and the report table (markdown), when the report stage ran."""

    run_dir: Path
    summary: dict = field(default_factory=dict)
    table: str | None = None
    seconds: float = 0.0


def ensure_examples_importable() -> None:
    """Make ``examples.models`` importable: the working directory first (as ``python -m`` does),
    then the repository this package lives in (editable install)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    repo = Path(__file__).resolve().parent.parent
    if (repo / "examples" / "models.py").is_file() and str(repo) not in sys.path:
        sys.path.append(str(repo))


def make_data(cfg: Config, distributed: bool):
    """The :class:`~dmcpfx.data.DataBundle` of ``cfg.data`` (sharded when ``distributed``)."""
    from . import data

    d = cfg.data
    if d.kind == "digits":
        return data.digits_loaders(batch_size=d.batch_size, image_size=d.image_size, train_subset=d.train_subset,
                                   augment=d.augment, seed=cfg.search.seed, distributed=distributed)
    if d.kind == "imagefolder":
        if not d.root:
            raise ConfigError("data.kind is 'imagefolder' but data.root is not set")
        return data.imagefolder_loaders(d.root, image_size=d.image_size, batch_size=d.batch_size,
                                        workers=d.workers, distributed=distributed, seed=cfg.search.seed)
    if d.kind == "synthetic":
        return data.synthetic_loaders(num_classes=d.num_classes, image_size=d.image_size,
                                      batch_size=d.batch_size, steps=d.steps, seed=cfg.search.seed)
    raise ConfigError(f"data.kind must be digits, imagefolder or synthetic, got {d.kind!r}")


def build_model(cfg: Config, bundle) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model of ``cfg.model`` (fresh weights) in eval mode and a random example input."""
    from .models import load_model

    ensure_examples_importable()
    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("num_classes", cfg.model.num_classes or bundle.num_classes)
    model = load_model(cfg.model.spec, **kwargs).eval()
    shape = cfg.model.input_shape or list(bundle.input_shape)
    if not all(isinstance(v, int) and v > 0 for v in shape):
        raise ConfigError(f"model.input_shape must be positive integers like [1, 3, 224, 224], got {shape}")
    torch.manual_seed(cfg.search.seed)
    return model, torch.randn(*shape)


class _Run:
    """State handed from stage to stage."""

    def __init__(self, cfg: Config, stages: Sequence[str]):
        from .training import distributed_context

        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
        self.cfg, self.stages = cfg, [s for s in STAGES if s in stages]
        if cfg.run.threads:
            torch.set_num_threads(int(cfg.run.threads))
        self.ctx = distributed_context()
        self.dir = cfg.run_dir
        self.bundle = make_data(cfg, self.ctx.distributed)
        self.model, self.x = build_model(cfg, self.bundle)
        self.space = self.widths = self.compact = None
        self.summary: dict[str, Any] = {}

    # --- helpers
    @property
    def main(self) -> bool:
        return self.ctx.is_main

    def path(self, name: str) -> Path:
        return self.dir / name

    def save_summary(self) -> None:
        if self.main:
            write_text_atomic(self.path("summary.json"), json.dumps(self.summary, indent=2) + "\n")

    def validate(self) -> None:
        """Everything checkable without training, before the run directory exists."""
        from .budget import parse_target

        cfg = self.cfg
        if cfg.derive.mode not in ("expected", "direct"):
            raise ConfigError(f"derive.mode must be 'expected' or 'direct', got {cfg.derive.mode!r}")
        if cfg.retrain.init not in ("scratch", "inherit"):
            raise ConfigError(f"retrain.init must be 'scratch' or 'inherit', got {cfg.retrain.init!r}")
        finished = self.path("report.md")
        if finished.exists() and not cfg.run.resume:
            raise ConfigError(f"{self.dir} already holds a finished run (report.md); choose another run.name, "
                              f"--run-dir, or set run.resume=true")
        if any(s in self.stages for s in ("analyze", "search", "derive")):
            from .instrument import instrument

            s = cfg.search
            self.space = instrument(self.model, self.x, min_ratio=s.min_ratio, step=s.step, divisor=s.divisor,
                                    model_name=cfg.model.spec)
            self.target = parse_target(s.target, self.space.full_flops)
        elif not self.path("compact.pt").is_file():
            raise ConfigError(f"{self.path('compact.pt')} not found: run `dmcpfx search` with this config first")
        if self.path("summary.json").is_file():
            self.summary = json.loads(self.path("summary.json").read_text(encoding="utf-8"))

    def start(self) -> None:
        if self.main:
            if self.path("report.md").exists():  # resume: the run is not complete any more
                self.path("report.md").unlink()
            self.dir.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)
            write_text_atomic(self.path("config.yaml"), text)

    # --- stages
    def analyze(self) -> None:
        graph = self.space.graph
        self.summary.update(full_macs=int(self.space.full_flops), full_params=int(graph.full_params),
                            target_macs=float(self.target), prunable_groups=len(self.space.gates()))
        if self.main:
            write_text_atomic(self.path("analysis.txt"), graph.table() + "\n")

    def search(self) -> None:
        from .search import search

        s, r = self.cfg.search, self.cfg.run
        self.search_train, self.holdout = self.bundle.train, None
        if self.cfg.derive.mode == "direct":  # direct derive ranks on training images the search never sees
            from .holdout import split_holdout

            n = len(self.bundle.train.dataset)
            held = max(1, min(self.cfg.derive.holdout_images, n // 5))  # at most a fifth of a small set
            self.search_train, self.holdout = split_holdout(self.bundle.train, held, seed=s.seed)
        result = search(
            self.space, self.search_train, target_flops=self.target, epochs=s.epochs, val_loader=self.bundle.val,
            run_dir=self.dir, resume=r.resume, device=r.device, amp=s.amp, channels_last=s.channels_last,
            seed=s.seed, warmup_epochs=s.warmup_epochs, lr=s.lr, min_lr=s.min_lr, lr_warmup_steps=s.lr_warmup_steps,
            weight_decay=s.weight_decay, arch_lr=s.arch_lr, arch_min_lr=s.arch_min_lr, budget_weight=s.budget_weight,
            num_random=s.num_random, label_smoothing=s.label_smoothing, calib_batches=s.calib_batches, log_interval=s.log_interval, progress=r.progress,
            lr_warmup_start=s.lr_warmup_start, markov_schedule=s.markov_schedule, markov_decay=s.markov_decay,
            markov_prob_final=s.markov_prob_final, bn_stats=s.bn_stats,
        )
        last = result.history[-1] if result.history else {}
        if "val_top1" in last:
            self.summary["supernet_top1"] = 100.0 * float(last["val_top1"])
        self.summary.update(expected_macs=float(result.expected), search_epochs=result.epochs)
        self.save_summary()

    def derive(self) -> None:
        from .derive import derive

        d = self.cfg.derive
        self.widths = derive(
            self.space, d.mode, target_flops=self.target, tolerance=d.tolerance, samples=d.samples,
            val_loader=self.holdout if d.mode == "direct" else None, calib_loader=self.search_train,
            calib_batches=self.cfg.search.calib_batches, seed=self.cfg.search.seed,
            path=self.path("arch.yaml") if self.main else None,
            plot_path=self.path("widths.png") if self.main else None, model_name=self.cfg.model.spec,
        )
        self.summary.update(pruned_macs=int(self.space.flops(self.widths)),
                            pruned_params=int(self.space.params(self.widths)))
        self.save_summary()

    def materialize(self) -> None:
        from .materialize import materialize
        from .onnx_export import export_onnx

        base = self.space.to_model().cpu().eval()
        self.compact = materialize(base, self.widths, self.x)
        if self.main:
            torch_save_atomic(self.compact, self.path("compact.pt"))
            self.summary["onnx_max_abs_diff"] = export_onnx(self.compact, self.x, self.path("compact.onnx"))
            self.save_summary()

    def retrain(self) -> None:
        from .retrain import retrain

        if self.compact is None:
            self.compact = torch.load(self.path("compact.pt"), map_location="cpu", weights_only=False)
        t, r = self.cfg.retrain, self.cfg.run
        result = retrain(
            self.compact, self.bundle.train, epochs=t.epochs, val_loader=self.bundle.val, lr=t.lr,
            weight_decay=t.weight_decay, warmup_epochs=t.warmup_epochs, label_smoothing=t.label_smoothing,
            amp=t.amp, device=r.device, run_dir=self.dir, resume=r.resume, seed=t.seed, init=t.init,
            progress=r.progress,
        )
        self.compact = self.compact.cpu().eval()
        self.summary.update(
            retrain_top1=result.top1, retrain_top5=result.top5, retrain_epochs=result.epochs,
            retrain_top1_history=[h.get("val_top1") for h in result.history],
        )
        self.save_summary()

    def report(self) -> str | None:
        from .report import write_report

        if not self.main:
            return None
        if self.compact is None:
            self.compact = torch.load(self.path("compact.pt"), map_location="cpu", weights_only=False)
        return write_report(self.dir, self.cfg, self.summary, self.model, self.compact, self.x)


def run_pipeline(cfg: Config, stages: Sequence[str] = STAGES) -> PipelineResult:
    """Run ``stages`` (a subset of :data:`STAGES`, always in pipeline order) for ``cfg``.

    ``search``/``derive`` need ``analyze`` in the same call (the search space lives in
    memory); ``retrain``/``report`` alone read ``compact.pt`` from the run directory.
    Raises :class:`~dmcpfx.errors.ConfigError` for bad input before anything is written.
    """
    start = time.perf_counter()
    stages = list(stages)
    if any(s in stages for s in ("search", "derive")) and "analyze" not in stages:
        stages.append("analyze")
    if "derive" in stages and "search" not in stages:
        raise ConfigError("the derive stage needs search in the same run (the searched gates live in memory)")
    if "materialize" in stages and "derive" not in stages:
        raise ConfigError("the materialize stage needs derive in the same run (or use `dmcpfx materialize`)")
    run = _Run(cfg, stages)
    run.validate()
    run.start()
    table = None
    for stage in run.stages:
        out = getattr(run, stage)()
        if stage == "report":
            table = out
    return PipelineResult(run_dir=run.dir, summary=run.summary, table=table, seconds=time.perf_counter() - start)
