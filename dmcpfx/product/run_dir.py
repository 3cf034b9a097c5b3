"""The product of a run: the retrained compact model, rebuilt without unpickling anything.

A run directory holds ``arch.yaml`` (the widths) and ``compact.pt``, the retrained weights as
a plain state dict (``torch.save(model.state_dict())``, read with
``torch.load(weights_only=True)``). :func:`load` rebuilds the model as
factory -> :func:`~dmcpfx.materialize` -> ``load_state_dict(strict=True)``::

    model = dmcpfx.load("runs/digits_demo")                           # the retrained model
    model = dmcpfx.load("dmcpfx.demo_models:small_resnet", "arch.yaml", "compact.pt", kwargs={"num_classes": 10})
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..arch import Arch, load_arch
from ..errors import ConfigError
from ..arch import check_arch_model
from ..fileio import torch_save_atomic
from ..materialize import materialize
from ..models import check_input_shape, load_model
from ..training import load_checked, start_over_hint

__all__ = ["load", "apply_weights", "build_compact", "save_weights", "load_weights", "WEIGHTS_NAME",
           "SLICE_NAME", "ONNX_NAME"]

WEIGHTS_NAME = "compact.pt"        # the retrained compact model (state dict)
SLICE_NAME = "supernet_slice.pt"   # the supernet's weights sliced to the arch, before retraining
ONNX_NAME = "compact.onnx"         # the retrained compact model, ONNX, dynamic batch


def _with_versions(state: Mapping[str, torch.Tensor], versions: Any) -> OrderedDict:
    """``state`` as a state dict carrying ``versions`` (a state dict's ``_metadata``: each
    module's version, which a custom loader reads; torchvision's MNASNet refuses a state without)."""
    out = OrderedDict(state)
    if versions is not None:
        out._metadata = versions  # type: ignore[attr-defined]
    return out


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model.state_dict()`` (CPU copies, with the module versions) to ``path`` atomically."""
    source = model.state_dict()
    state = _with_versions({k: v.detach().cpu().clone() for k, v in source.items()}, getattr(source, "_metadata", None))
    torch_save_atomic(state, path)
    return Path(path)


def load_weights(path: str | os.PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (weights only); anything else is a ConfigError naming the file."""
    state = load_checked(path, what)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{what} {path} is not a state dict of tensors (got {type(state).__name__}); "
                          f"{start_over_hint(Path(path))}")
    return _with_versions(state, getattr(state, "_metadata", None))


def apply_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """``model.load_state_dict(state, strict=True)``, in eval mode; a mismatch is a ConfigError
    naming ``source`` (the weights file). A state without module versions (a plain dict, a
    safetensors file) is taken to be of the model's own versions."""
    if getattr(state, "_metadata", None) is None:
        state = _with_versions(state, getattr(model.state_dict(), "_metadata", None))
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:  # ValueError: a module's own loader refused the state
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{source} does not fit the model rebuilt from the arch ({detail})") from exc
    return model.eval()


def build_compact(spec: str, arch: str | os.PathLike | Mapping[str, int], input_shape, *,
                  kwargs: Mapping[str, Any] | None = None, model: nn.Module | None = None) -> nn.Module:
    """factory (``spec`` with ``kwargs``, or the given ``model``) -> materialize to ``arch``."""
    shape = check_input_shape(list(input_shape), "input shape")
    check_arch_model(arch, spec)
    base = model if model is not None else load_model(spec, **dict(kwargs or {})).eval()
    return materialize(base, arch, torch.randn(*shape))


def _run_model_info(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path} is missing or not valid JSON ({exc}); is {run_dir} a dmcpfx run directory?") from exc
    if not isinstance(info, dict) or not {"spec", "kwargs", "input_shape"} <= set(info):
        raise ConfigError(f"{path} does not name the model (key 'model'); was {run_dir} made by this dmcpfx?")
    return info


def load(run_dir_or_spec: str | os.PathLike, arch: str | os.PathLike | Mapping[str, int] | None = None,
         weights: str | os.PathLike | None = None, *, kwargs: Mapping[str, Any] | None = None,
         input_shape=None) -> nn.Module:
    """Rebuild a compact model in eval mode: factory -> materialize -> ``load_state_dict(strict=True)``.

    ``load(run_dir)``: the retrained model of a finished run (``arch.yaml`` + ``compact.pt``;
    the spec, factory arguments and input shape come from its ``summary.json``).
    ``load(spec, arch, weights, kwargs=..., input_shape=...)``: any model spec, an arch YAML
    (or widths dict) and a state-dict file; ``input_shape`` defaults to the arch file's.
    Nothing is unpickled: the weights are read with ``torch.load(weights_only=True)``.
    """
    from ..api_checks import check_path

    check_path(run_dir_or_spec, "load", "run_dir_or_spec")
    if weights is not None:
        check_path(weights, "load", "weights")
    if arch is not None and not isinstance(arch, Mapping):
        if not isinstance(arch, Arch):
            check_path(arch, "load", "arch")
    if arch is None and weights is None and Path(run_dir_or_spec).is_dir():
        run_dir = Path(run_dir_or_spec)
        info = _run_model_info(run_dir)
        arch, weights = run_dir / "arch.yaml", run_dir / WEIGHTS_NAME
        spec, kwargs, input_shape = info["spec"], info["kwargs"], info["input_shape"]
    else:
        if arch is None or weights is None:
            raise ConfigError(f"load({run_dir_or_spec!r}): not a run directory; pass a model spec, an arch and "
                              f"a weights file")
        spec = str(run_dir_or_spec)
    state = load_weights(weights)
    if input_shape is None:
        loaded = arch if isinstance(arch, Arch) else load_arch(arch) if isinstance(arch, (str, os.PathLike)) else None
        input_shape = loaded.input_shape if loaded is not None else None
        if not input_shape:
            raise ConfigError("load(): pass input_shape (the arch gives none)")
    compact = build_compact(spec, arch, input_shape, kwargs=kwargs)
    return apply_weights(compact, state, str(weights))
