"""Range checks of every :class:`~dmcpfx.config.Config` value, run before anything is written.

:func:`validate_config` raises :class:`~dmcpfx.errors.ConfigError` naming the key; the types
are checked when the config is loaded (:mod:`dmcpfx.config`), the ranges of the model, data
and run sections here, those of the stage sections by their options objects
(:class:`~dmcpfx.search.options.SearchOptions`, ``DeriveOptions``, ``RetrainOptions``).
"""
from __future__ import annotations

from typing import Any

import torch

from .amp import amp_dtype
from .errors import ConfigError
from .harness import checked_device
from .memory import available_memory
from .models import check_input_shape
from .options import MAX_EPOCHS, fail, int_in, one_of

__all__ = ["validate_config", "check_device", "check_memory", "check_against_data", "check_activation_memory",
           "activation_bytes", "MAX_EPOCHS"]

DIGITS_IMAGES = 1797  # scikit-learn's digits, held in memory at data.image_size


def _fail(key: str, rule: str, value: Any) -> None:
    fail(key, rule, value)


def _int(key: str, value: Any, low: int, high: int | None = None, *, optional: bool = False) -> None:
    int_in(low, high, optional=optional)(key, value)


def _choice(key: str, value: Any, choices) -> None:
    one_of(choices)(key, value)


def check_device(device: str | None, key: str = "run.device") -> None:
    """``device`` is null, ``cpu``, or a CUDA device that exists here (else ConfigError):
    :func:`~dmcpfx.harness.checked_device`'s rule, restricted to the CPU and CUDA."""
    if device is None:
        return
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
        _fail(key, "null, 'cpu', 'cuda' or 'cuda:N'", device)
    checked_device(device, f"config key {key!r}")


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

    for section in (s, v, r):  # the stages' options objects check their own ranges
        section.validate()

    if not isinstance(u.name, str) or not u.name.strip() or u.name in (".", "..") or "/" in u.name or "\\" in u.name:
        _fail("run.name", "a non-empty name without path separators", u.name)
    if not isinstance(u.dir, str) or not u.dir.strip():
        _fail("run.dir", "a non-empty path", u.dir)
    check_device(u.device)
    _int("run.latency_runs", u.latency_runs, 1)
    _int("run.threads", u.threads, 1, optional=True)
    check_memory(cfg)


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


def activation_bytes(model: torch.nn.Module, shape: list[int] | tuple[int, ...]) -> int | None:
    """Bytes of every leaf module's float32 output in one forward of ``model`` at ``shape``,
    measured on the meta device (nothing is allocated, the caller's model is not touched); None
    when the model cannot run on the meta device."""
    import copy

    total, seen = 0, {}  # an in-place layer (ReLU(inplace=True)) returns its input: counted once

    def add(_module, _args, output) -> None:
        nonlocal total
        for t in (output if isinstance(output, (tuple, list)) else (output,)):
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen[id(t)] = t  # kept alive (meta tensors cost nothing), so the id stays unique
                total += t.numel() * 4

    try:
        meta = copy.deepcopy(model).to("meta")
        for module in meta.modules():
            if not list(module.children()):
                module.register_forward_hook(add)
        with torch.no_grad():
            meta(torch.empty(*shape, device="meta"))
    except Exception:  # noqa: BLE001 - no estimate for a model that does not run on meta tensors
        return None
    return total


def check_activation_memory(cfg, model: torch.nn.Module, example_shape: list[int]) -> None:
    """A training step keeps every layer's output of ``data.batch_size`` images for its backward
    pass: a ConfigError naming the keys when those outputs alone (a lower bound: no gradients, no
    optimizer state) cannot fit the memory of the run's device -- before any run starts, instead of
    a process killed by the kernel."""
    per_example = activation_bytes(model, example_shape)
    if per_example is None:
        return
    per_image = per_example / max(1, int(example_shape[0]))
    if amp_dtype(cfg.search.amp) is not None:
        per_image /= 2  # autocast keeps most activations in 16 bits
    need = per_image * max(int(cfg.data.batch_size), int(example_shape[0]))
    device = str(cfg.run.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    have = torch.cuda.mem_get_info(torch.device(device))[0] if device.startswith("cuda") else available_memory()
    if need > have:
        raise ConfigError(f"data.image_size={cfg.data.image_size} with data.batch_size={cfg.data.batch_size}: one "
                          f"training step of {cfg.model.spec} needs at least {need / 2**30:,.1f} GiB of activations, more "
                          f"than the {have / 2**30:,.1f} GiB available on {device}; lower data.image_size or "
                          f"data.batch_size")
