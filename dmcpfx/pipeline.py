"""The whole pipeline from a :class:`~dmcpfx.config.Config`: analyze -> search -> derive ->
materialize -> retrain -> report, every file in one run directory ``<run.dir>/<run.name>/``.

Run directory (rank 0 writes, every file atomically)::

    dmcpfx-run.json      the marker: whose run this is (product/run_owner.py); dmcpfx-run.lock while running
    config.yaml          the resolved config of the last invocation
    analysis.txt         the group table (analyze)
    metrics.jsonl        search metrics; checkpoint.pt: search checkpoint (resumable)
    arch.yaml            derived widths with exact MACs/params (format dmcpfx-arch/1)
    widths.png           kept vs full channels per group
    search.png           the search: expected MACs over the target (band shaded), each group's E[c]/C
    supernet_slice.pt    the supernet's weights sliced to arch.yaml, before retraining (state dict)
    retrain_metrics.jsonl, retrain_checkpoint.pt   retraining
    compact.pt           THE PRODUCT: the retrained compact model's state dict (dmcpfx.load(run_dir))
    compact.onnx         the retrained model in ONNX (dynamic batch), checked with onnxruntime
    summary.json         numbers the stages hand on (supernet top-1, retrain top-1, ...)
    report.md            written LAST: a run directory without report.md is not complete

Completeness rule: every check that needs no training (every config value, model spec, data
path, input shape, a target above the full model's MACs or below the smallest sub-net, an
existing finished run, the checkpoints a resume would read) runs before the directory is
created, and ``report.md`` is written last, atomically. So a failed or interrupted run never
leaves a directory with a ``report.md``; re-running with ``run.resume=true`` continues it (and,
once every check has passed, removes a stale ``report.md``). Nothing is unpickled: weights
are state dicts read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from .config import Config, config_to_dict
from .config_checks import check_activation_memory, check_against_data, validate_config
from .errors import ConfigError
from .fileio import write_json_atomic, write_text_atomic
from .finite import check_outputs
from .progress import bars_enabled, derive_line, is_terminal, print_search_epoch
from . import data
from .materialize import materialize
from .models import check_input_shape, load_model
from .plots import plot_search
from .product.onnx_export import export_onnx
from .product.report import write_report
from .product.retrain import retrain
from .product.run_dir import ONNX_NAME, SLICE_NAME, WEIGHTS_NAME, apply_weights, build_compact, load_weights, save_weights
from .search.derive import derive
from .search.holdout import split_holdout
from .search.instrument import instrument
from .product.latency import latency_table
from .search.metric import BudgetMetric, resolve_budget
from .search.loop import search
from .search.run import check_lr_warmup, search_steps_per_epoch
from .training import MetricsWriter, distributed_context, load_checked
from .product.run_owner import run_lock

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


#: summary.json key of each budget metric: target_macs, expected_params, pruned_latency_ms, ...
SUMMARY_UNITS = {"flops": "macs", "params": "params", "latency": "latency_ms"}


def make_data(cfg: Config, distributed: bool):
    """The :class:`~dmcpfx.data.DataBundle` of ``cfg.data`` (sharded when ``distributed``)."""
    d = cfg.data
    if d.kind == "digits":
        return data.digits_loaders(batch_size=d.batch_size, image_size=d.image_size, train_subset=d.train_subset,
                                   augment=d.augment, seed=cfg.search.seed, distributed=distributed)
    if d.kind == "fashion-mnist":
        from .data_fashion import fashion_mnist_loaders

        return fashion_mnist_loaders(d.root, batch_size=d.batch_size, image_size=d.image_size, seed=cfg.search.seed,
                                     train_subset=d.train_subset, augment=d.augment, distributed=distributed)
    if d.kind == "imagefolder":
        if not d.root:
            raise ConfigError("data.kind is 'imagefolder' but data.root is not set")
        return data.imagefolder_loaders(d.root, image_size=d.image_size, batch_size=d.batch_size,
                                        workers=d.workers, distributed=distributed, seed=cfg.search.seed)
    if d.kind == "synthetic":
        return data.synthetic_loaders(num_classes=d.num_classes, image_size=d.image_size,
                                      batch_size=d.batch_size, steps=d.steps, seed=cfg.search.seed)
    raise ConfigError(f"data.kind must be digits, fashion-mnist, imagefolder or synthetic, got {d.kind!r}")


def build_model(cfg: Config, bundle) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model of ``cfg.model`` (fresh weights) in eval mode and a random example input."""
    shape = check_input_shape(cfg.model.input_shape or list(bundle.input_shape), "model.input_shape")
    torch.manual_seed(cfg.search.seed)  # before the factory: the same seed gives the same weights
    model = load_model(cfg.model.spec, **model_kwargs(cfg, bundle)).eval()
    try:
        x = torch.randn(*shape)
    except (RuntimeError, MemoryError) as exc:
        raise ConfigError(f"model.input_shape {list(shape)}: cannot allocate the example input ({exc})") from exc
    return model, x


def model_kwargs(cfg: Config, bundle) -> dict:
    """The factory arguments: ``model.kwargs`` plus ``num_classes`` (the data's, by default)."""
    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("num_classes", cfg.model.num_classes or bundle.num_classes)
    return kwargs


class _Run:
    """State handed from stage to stage."""

    def __init__(self, cfg: Config, stages: Sequence[str]):
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
        self.cfg, self.stages = cfg, [s for s in STAGES if s in stages]
        validate_config(cfg)
        if cfg.run.threads:
            torch.set_num_threads(int(cfg.run.threads))
        self.ctx = distributed_context()
        self.dir = cfg.run_dir
        self.bundle = make_data(cfg, self.ctx.distributed)
        check_against_data(cfg, self.bundle.input_shape, self.bundle.num_classes)
        self.model, self.x = build_model(cfg, self.bundle)
        check_activation_memory(cfg, self.model, list(self.x.shape))
        self.space = self.widths = self.compact = None
        self.summary: dict[str, Any] = {}
        self.model_info = {"spec": cfg.model.spec, "kwargs": model_kwargs(cfg, self.bundle),
                           "input_shape": list(self.x.shape)}

    # --- helpers
    @property
    def main(self) -> bool:
        return self.ctx.is_main

    def path(self, name: str) -> Path:
        return self.dir / name

    def save_summary(self) -> None:
        if self.main:
            write_json_atomic(self.path("summary.json"), {**self.summary, "model": self.model_info})

    def rebuild(self, weights: str) -> torch.nn.Module:
        """factory (the seeded ``self.model``) -> materialize(arch.yaml) -> the weights of ``weights``."""
        state = load_weights(self.path(weights), "weights file")
        compact = build_compact(self.cfg.model.spec, self.path("arch.yaml"), list(self.x.shape), model=self.model)
        return apply_weights(compact, state, str(self.path(weights))).cpu()

    def _check_resume_files(self) -> None:
        """Everything a resume or a later stage reads must load, before anything is changed."""
        if "search" in self.stages and self.path("checkpoint.pt").exists():
            if not self.cfg.run.resume:
                raise ConfigError(f"{self.path('checkpoint.pt')} exists (an unfinished search); set run.resume=true "
                                  f"to continue it, or choose another run.name or --run-dir")
            load_checked(self.path("checkpoint.pt"), "search checkpoint")
        if "retrain" in self.stages and self.cfg.run.resume and self.path("retrain_checkpoint.pt").exists():
            load_checked(self.path("retrain_checkpoint.pt"), "retrain checkpoint")
        if "derive" not in self.stages and ("retrain" in self.stages or "report" in self.stages):
            # retrain/report read what search wrote
            needed = ["arch.yaml", SLICE_NAME] if "retrain" in self.stages else ["arch.yaml", WEIGHTS_NAME]
            for name in needed:
                if not self.path(name).is_file():
                    raise ConfigError(f"{self.path(name)} not found: run `dmcpfx search` with this config first")
            # the arch against this model and the weights against the arch, before the run directory changes
            self.compact = self.rebuild(needed[1])

    def check_owner(self) -> None:
        """The run directory is new, empty, or a run of the same marker, and no other process uses it."""
        from .product.run_owner import check_run_dir, check_unlocked, make_marker

        self.marker = make_marker(config_to_dict(self.cfg), self.cfg.model.spec, list(self.x.shape))
        check_run_dir(self.dir, self.marker)
        check_unlocked(self.dir)

    def validate(self) -> None:
        """Everything checkable without training, before the run directory exists."""
        cfg = self.cfg
        self.check_owner()
        for name, loader in (("train", self.bundle.train), ("val", self.bundle.val)):
            if hasattr(loader, "__len__") and len(loader) == 0:
                raise ConfigError(f"the {name} loader of data.kind={cfg.data.kind!r} is empty "
                                  f"(fewer images than data.batch_size={cfg.data.batch_size}?)")
        finished = self.path("report.md")
        if finished.exists() and not cfg.run.resume:
            raise ConfigError(f"{self.dir} already holds a finished run (report.md); choose another run.name, "
                              f"--run-dir, or set run.resume=true")
        if any(s in self.stages for s in ("analyze", "search", "derive")):
            s = cfg.search
            self.space = instrument(self.model, self.x, min_ratio=s.min_ratio, step=s.step, divisor=s.resolved_divisor,
                                    model_name=cfg.model.spec)
            self.unit = SUMMARY_UNITS[s.budget_metric]  # summary keys: target_macs, ...
            if s.budget_metric == "latency":
                self._latency_table()
            self.target, self.metric = self._check_target()
            self._split_holdout()
            if "search" in self.stages:
                check_lr_warmup(s, search_steps_per_epoch(self.search_train, self.ctx, s.seed))
        self._check_resume_files()
        if self.path("summary.json").is_file():
            try:
                self.summary = json.loads(self.path("summary.json").read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ConfigError(f"{self.path('summary.json')} is not valid JSON ({exc}); start over in a new "
                                  f"run directory") from exc
            self.summary.pop("model", None)

    def _check_target(self) -> tuple[float, BudgetMetric]:
        """``(search.target as an absolute amount of search.budget_metric, the metric)``; the target
        lies between the smallest sub-net and the full model (ConfigError naming the key)."""
        try:
            return resolve_budget(self.space, self.cfg.search.target, self.cfg.search.budget_metric,
                                  self.cfg.search.latency_table)
        except ConfigError as exc:
            raise ConfigError(f"search.target {self.cfg.search.target!r}: {exc} (search.min_ratio="
                              f"{self.cfg.search.min_ratio})") from exc

    def _latency_table(self) -> None:
        """Under a latency budget: the table at ``search.latency_table``, measured there first when
        the file does not exist (rank 0; the others wait), else checked against this space."""
        s = self.cfg.search
        if s.latency_backend == "cuda" and not torch.cuda.is_available():
            raise ConfigError("search.latency_backend is 'cuda' but no CUDA device is available")
        if self.main or Path(s.latency_table).is_file():
            say = print if (self.cfg.run.progress and self.main) else None
            latency_table(self.space, s.latency_backend, s.latency_batch, threads=s.latency_threads,
                          path=s.latency_table, progress=say)
        if self.ctx.distributed:
            import torch.distributed as dist

            dist.barrier()

    def start(self) -> None:
        """Called under the run lock: the marker, then ``config.yaml``."""
        from .product.run_owner import check_run_dir, write_marker

        if self.main:
            check_run_dir(self.dir, self.marker)  # again under the lock: another process may have started it
            if self.path("report.md").exists():  # resume: the run is not complete any more
                self.path("report.md").unlink()
            write_marker(self.dir, self.marker)
            text = yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)
            write_text_atomic(self.path("config.yaml"), text)

    # --- stages
    def analyze(self) -> None:
        graph = self.space.graph
        self.summary.update(full_macs=int(self.space.full_flops), full_params=int(graph.full_params),
                            **{f"target_{self.unit}": float(self.target)}, prunable_groups=len(self.space.gates()))
        if self.main:
            write_text_atomic(self.path("analysis.txt"), graph.table() + "\n")

    def _split_holdout(self) -> None:
        """``search_train`` and ``holdout``: direct derive ranks on training images the search never sees."""
        self.search_train, self.holdout = self.bundle.train, None
        if self.cfg.derive.mode == "direct":
            n = len(self.bundle.train.dataset)
            held = max(1, min(self.cfg.derive.holdout_images, n // 5))  # at most a fifth of a small set
            self.search_train, self.holdout = split_holdout(self.bundle.train, held, seed=self.cfg.search.seed)

    def search(self) -> None:
        s, r = self.cfg.search, self.cfg.run
        result = search(
            self.space, self.search_train, s, val_loader=self.bundle.val, run_dir=self.dir, resume=r.resume,
            device=r.device, progress=bars_enabled(r.progress), callback=self._epoch_line(),
        )
        last = result.history[-1] if result.history else {}
        if "val_top1" in last:
            self.summary["supernet_top1"] = float(last["val_top1"])  # percent
        self.summary.update({f"expected_{self.unit}": float(result.expected), "search_epochs": result.epochs})
        if self.main and result.metrics_path is not None:
            plot_search(MetricsWriter(result.metrics_path).read(), self.space, self.path("search.png"))
        self.save_summary()

    def _epoch_line(self):
        """Without a terminal (a log file): one plain line per search epoch instead of the bars."""
        if not (self.cfg.run.progress and self.main) or is_terminal():
            return None
        epochs = self.cfg.search.epochs
        return lambda record: print_search_epoch(record, epochs)

    def derive(self) -> None:
        d = self.cfg.derive.resolved(self.cfg.search)
        self.widths = derive(
            self.space, options=dataclasses.replace(d, target=self.target),
            val_loader=self.holdout if d.mode == "direct" else None, calib_loader=self.search_train,
            path=self.path("arch.yaml") if self.main else None,
            plot_path=self.path("widths.png") if self.main else None, model_name=self.cfg.model.spec,
        )
        self.summary.update(pruned_macs=int(self.space.flops(self.widths)),
                            pruned_params=int(self.space.params(self.widths)))
        metric = self.metric
        if metric.name == "latency":
            meta = metric.table.meta
            self.summary.update(pruned_latency_ms=metric.exact(self.space, self.widths), table_full_latency_ms=metric.full,
                                latency_backend=meta.get("backend"), latency_batch=meta.get("batch"),
                                latency_threads=meta.get("threads"))
        expected, derived = self.summary.get(f"expected_{self.unit}"), self.summary.get(f"pruned_{self.unit}")
        if expected and derived is not None:
            self.summary["derive_change"] = float(derived) / float(expected) - 1.0
            if self.main and self.cfg.run.progress:
                print(derive_line(d.mode, float(expected), float(derived), float(self.target), metric.unit),
                      flush=True)
        self.save_summary()

    def materialize(self) -> None:
        base = self.space.to_model().cpu().eval()
        self.compact = materialize(base, self.widths, self.x)
        if self.main:
            save_weights(self.compact, self.path(SLICE_NAME))
            self.save_summary()

    def retrain(self) -> None:
        if self.compact is None:
            self.compact = self.rebuild(SLICE_NAME)
        r = self.cfg.run
        result = retrain(self.compact, self.bundle.train, self.cfg.retrain, val_loader=self.bundle.val,
                         device=r.device, run_dir=self.dir, resume=r.resume, progress=r.progress)
        self.compact = self.compact.cpu().eval()
        self.summary.update(
            retrain_top1=result.top1, retrain_top5=result.top5, retrain_epochs=result.epochs,
            retrain_top1_history=[h.get("val_top1") for h in result.history],
        )
        with torch.no_grad():
            check_outputs(self.compact(self.x), "retrain: the retrained model")
        if self.main:  # the product: the retrained weights and their ONNX export, both or neither
            save_weights(self.compact, self.path(WEIGHTS_NAME))
            try:
                self.summary["onnx_max_abs_diff"] = export_onnx(self.compact, self.x, self.path(ONNX_NAME))
            except BaseException:
                self.path(WEIGHTS_NAME).unlink(missing_ok=True)
                raise
        self.save_summary()

    def report(self) -> str | None:
        if not self.main:
            return None
        if self.compact is None:
            self.compact = self.rebuild(WEIGHTS_NAME)
        self.summary["model"] = self.model_info
        return write_report(self.dir, self.cfg, self.summary, self.model, self.compact, self.x)


def run_pipeline(cfg: Config, stages: Sequence[str] = STAGES) -> PipelineResult:
    """Run ``stages`` (a subset of :data:`STAGES`, always in pipeline order) for ``cfg``.

    ``search``/``derive`` need ``analyze`` in the same call (the search space lives in
    memory); ``retrain`` alone rebuilds the compact model from ``arch.yaml`` and
    ``supernet_slice.pt``, ``report`` alone from ``arch.yaml`` and ``compact.pt``.
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
    table = None
    with run_lock(run.dir) if run.main else contextlib.nullcontext():
        run.start()
        for stage in run.stages:
            out = getattr(run, stage)()
            if stage == "report":
                table = out
    return PipelineResult(run_dir=run.dir, summary=run.summary, table=table, seconds=time.perf_counter() - start)
