"""Range checks of every :class:`~dmcpfx.config.Config` value, run before anything is written.

:func:`validate_config` raises :class:`~dmcpfx.errors.ConfigError` naming the key; the types
are checked when the config is loaded (:mod:`dmcpfx.config`), the ranges here.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from .amp import AMP_CHOICES
from .errors import ConfigError
from .models import check_input_shape

__all__ = ["validate_config", "check_device", "check_memory", "check_against_data", "MAX_EPOCHS"]

AMP = AMP_CHOICES  # the same spellings for search and retrain
MAX_EPOCHS = 1_000_000  # far above any real schedule; 1e30 would never end
DIGITS_IMAGES = 1797  # scikit-learn's digits, held in memory at data.image_size


def _fail(key: str, rule: str, value: Any) -> None:
    raise ConfigError(f"config key {key!r} must be {rule}, got {value!r}")


def _int(key: str, value: Any, low: int, high: int | None = None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    rule = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        _fail(key, rule + (" or null" if optional else ""), value)


def _float(key: str, value: Any, low: float, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        rule = f"a finite number in {left}{low}, {high}{right}" if high is not None else \
            f"a finite number {'>' if low_open else '>='} {low}"
        _fail(key, rule, value)


def _choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        _fail(key, " or ".join("null" if c is None else repr(c) for c in choices), value)


def check_device(device: str | None, key: str = "run.device") -> None:
    """``device`` is null, ``cpu``, or a CUDA device that exists here (else ConfigError)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        _fail(key, "null, 'cpu', 'cuda' or 'cuda:N'", device)
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        _fail(key, "null, 'cpu', 'cuda' or 'cuda:N'", device)
    if not torch.cuda.is_available():
        raise ConfigError(f"config key {key!r} is {device!r} but CUDA is not available here; use cpu or null")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"config key {key!r} is {device!r} but this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s)")


def validate_config(cfg) -> None:
    """Check every value of ``cfg`` against its range; raise ConfigError naming the first bad key."""
    m, d, s, v, r, u = cfg.model, cfg.data, cfg.search, cfg.derive, cfg.retrain, cfg.run
    if not isinstance(m.spec, str) or ":" not in m.spec:
        _fail("model.spec", "'torchvision:NAME', 'package.module:factory' or 'path/to/file.py:factory'", m.spec)
    if m.input_shape is not None:
        check_input_shape(m.input_shape, "config key 'model.input_shape'")
    _int("model.num_classes", m.num_classes, 2, optional=True)
    if not all(isinstance(k, str) for k in m.kwargs):
        _fail("model.kwargs", "a mapping with string keys", m.kwargs)
    _choice("data.kind", d.kind, ("digits", "fashion-mnist", "imagefolder", "synthetic"))
    if d.kind == "imagefolder" and not d.root:
        raise ConfigError("data.kind is 'imagefolder' but data.root is not set")
    _int("data.image_size", d.image_size, 1, 8192)
    _int("data.batch_size", d.batch_size, 1)
    _int("data.train_subset", d.train_subset, 1, optional=True)
    _int("data.workers", d.workers, 0)
    _int("data.steps", d.steps, 1)
    _int("data.num_classes", d.num_classes, 2)

    _int("search.epochs", s.epochs, 1, MAX_EPOCHS)
    _int("search.warmup_epochs", s.warmup_epochs, 0, s.epochs, optional=True)
    _int("search.divisor", s.divisor, 1)
    _float("search.min_ratio", s.min_ratio, 0.0, 1.0, low_open=True)
    _float("search.step", s.step, 0.0, 1.0, low_open=True)
    _float("search.lr", s.lr, 0.0, low_open=True)
    _float("search.min_lr", s.min_lr, 0.0)
    _int("search.lr_warmup_steps", s.lr_warmup_steps, 0)
    _float("search.weight_decay", s.weight_decay, 0.0)
    _float("search.arch_lr", s.arch_lr, 0.0, low_open=True)
    _float("search.arch_min_lr", s.arch_min_lr, 0.0)
    _float("search.budget_weight", s.budget_weight, 0.0)
    _int("search.num_random", s.num_random, 0)
    _float("search.label_smoothing", s.label_smoothing, 0.0, 1.0, high_open=True)
    _int("search.calib_batches", s.calib_batches, 0)
    _choice("search.alpha_init", s.alpha_init, ("budget", "zero"))
    _choice("search.amp", s.amp, AMP)
    _int("search.seed", s.seed, 0)
    _int("search.log_interval", s.log_interval, 1)
    _search_schedule(s)

    _choice("derive.mode", v.mode, ("expected", "direct"))
    _float("derive.tolerance", v.tolerance, 0.0, 1.0, low_open=True, high_open=True)
    _int("derive.samples", v.samples, 1)
    _int("derive.holdout_images", v.holdout_images, 0)

    _int("retrain.epochs", r.epochs, 1, MAX_EPOCHS)
    _float("retrain.lr", r.lr, 0.0, low_open=True)
    _choice("retrain.init", r.init, ("scratch", "inherit"))
    _float("retrain.weight_decay", r.weight_decay, 0.0)
    _int("retrain.warmup_epochs", r.warmup_epochs, 0, r.epochs - 1)
    _float("retrain.label_smoothing", r.label_smoothing, 0.0, 1.0, high_open=True)
    _choice("retrain.amp", r.amp, AMP)
    _int("retrain.seed", r.seed, 0)

    if not isinstance(u.name, str) or not u.name.strip() or u.name in (".", "..") or "/" in u.name or "\\" in u.name:
        _fail("run.name", "a non-empty name without path separators", u.name)
    if not isinstance(u.dir, str) or not u.dir.strip():
        _fail("run.dir", "a non-empty path", u.dir)
    check_device(u.device)
    _int("run.latency_runs", u.latency_runs, 1)
    _int("run.threads", u.threads, 1, optional=True)
    check_memory(cfg)


def _search_schedule(s) -> None:
    """The keys the search loop would otherwise check only after the run directory exists."""
    from .search.bn import BN_STATS
    from .search.schedule import MARKOV_SCHEDULES

    _choice("search.markov_schedule", s.markov_schedule, MARKOV_SCHEDULES)
    _float("search.markov_decay", s.markov_decay, 0.0, 1.0, low_open=True)
    _float("search.markov_prob_final", s.markov_prob_final, 0.0, 1.0)
    _choice("search.bn_stats", s.bn_stats, BN_STATS)
    _float("search.lr_warmup_start", s.lr_warmup_start, 0.0, s.lr)


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable; else physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 62


def check_memory(cfg) -> None:
    """A bounded estimate of the data's memory (float32 images) against the memory available:
    ``digits`` holds all 1,797 images at ``data.image_size``; every kind holds batches in flight
    (train and val, the loader workers' prefetch). ConfigError naming the keys when it cannot fit."""
    d = cfg.data
    if not (isinstance(d.image_size, int) and isinstance(d.batch_size, int)):
        return
    image = 3 * d.image_size * d.image_size * 4
    in_flight = 2 * (2 * max(0, d.workers if d.kind == "imagefolder" else 0) + 2)  # batches, train and val
    images = d.batch_size * in_flight + (DIGITS_IMAGES if d.kind == "digits" else 0)
    need, have = images * image, available_memory()
    if need > have:
        raise ConfigError(f"data.image_size={d.image_size} with data.batch_size={d.batch_size} needs about "
                          f"{need / 2**30:,.1f} GiB for the {d.kind} images alone, more than the "
                          f"{have / 2**30:,.1f} GiB available; lower data.image_size or data.batch_size")


def check_against_data(cfg, input_shape, num_classes: int) -> None:
    """``model.input_shape`` against the data's images ``input_shape`` ``(1, C, H, W)``, and
    ``model.num_classes`` against the data's ``num_classes`` labels (ConfigError naming the key)."""
    m = cfg.model
    if m.input_shape is not None and list(m.input_shape)[1:] != list(input_shape)[1:]:
        raise ConfigError(f"config key 'model.input_shape' {list(m.input_shape)} does not match the data's images "
                          f"{list(input_shape)[1:]} (data.image_size={cfg.data.image_size}); MACs and the target "
                          f"would be counted at the wrong size: set it to {[1, *list(input_shape)[1:]]} or null")
    classes = m.num_classes if m.num_classes is not None else m.kwargs.get("num_classes")
    if isinstance(classes, int) and classes < num_classes:
        key = "model.num_classes" if m.num_classes is not None else "model.kwargs.num_classes"
        raise ConfigError(f"config key {key!r} is {classes} but the data has {num_classes} classes "
                          f"(labels 0..{num_classes - 1}); set it to at least {num_classes} or null")
