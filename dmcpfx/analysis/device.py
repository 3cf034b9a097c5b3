"""Where a model lives, and a CPU copy of it for the device-independent analysis.

``torch.export`` guards on the device's kernels: exporting ResNet-50 on CUDA fails with
"Constraints violated (batch)!" (a guard bounds the dynamic batch dimension, likely a
cuDNN kernel limit), where the same export on the CPU works, and the rule table is
written against the CPU spelling of the ATen graph. So a model on
any other device is analyzed as a CPU copy of itself (bit-identical values), and what
``instrument`` / ``materialize`` build from it is moved back to the caller's device;
the caller's model is never moved or changed.
"""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["model_device", "cpu_copy", "on_cpu", "needs_copy", "restore_dtypes", "tensor_dtypes", "widen"]

#: half-precision dtypes that a check runs in float32 instead (float32 holds them exactly)
HALF = (torch.float16, torch.bfloat16)


def model_device(model: nn.Module, inputs: tuple[torch.Tensor, ...] = ()) -> torch.device:
    """The one device of ``model``'s parameters and buffers (CPU for a model without any).

    Raises :class:`ConfigError` for tensors on the ``meta`` device (they hold no values) or
    spread over several devices; ``inputs`` are checked for ``meta`` too.
    """
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    name = type(model).__name__
    for t in tensors + list(inputs):
        if t.device.type == "meta":
            what = "example_inputs are" if any(t is i for i in inputs) else f"{name} has tensors"
            raise ConfigError(f"{what} on the meta device (no values): initialize or load the weights "
                              f"(e.g. model.to_empty(device='cpu') and load_state_dict) before pruning")
    devices = sorted({str(t.device) for t in tensors})
    if len(devices) > 1:
        raise ConfigError(f"{name} has parameters or buffers on several devices ({', '.join(devices)}); "
                          "move the whole model to one device")
    return torch.device(devices[0]) if devices else torch.device("cpu")


def on_cpu(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bool:
    """True when ``model`` and every input already live on the CPU."""
    return model_device(model, inputs).type == "cpu" and all(t.device.type == "cpu" for t in inputs)


def needs_copy(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bool:
    """True when ``model`` or an input is off the CPU or holds float16/bfloat16 tensors."""
    tensors = itertools.chain(model.parameters(), model.buffers(), inputs)
    return not on_cpu(model, inputs) or any(t.dtype in HALF for t in tensors)


def widen(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU, in float32 when it is float16/bfloat16 (exact), else its own dtype."""
    t = t.detach().cpu()
    return t.float() if t.dtype in HALF else t


def cpu_copy(model: nn.Module, *, float32: bool = False) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are CPU copies of the originals.

    Tensors are copied straight to the CPU (no second copy on the model's device); tied
    parameters stay tied; ``requires_grad`` is kept. ``float32``: float16/bfloat16 tensors
    become float32 (exact; :func:`restore_dtypes` turns them back). ``model`` is not changed.
    """
    memo: dict[int, object] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) not in memo:
            data = t.detach().to("cpu", copy=True)
            data = data.float() if float32 and data.dtype in HALF else data
            memo[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else data
    return copy.deepcopy(model, memo)


def restore_dtypes(module: nn.Module, dtypes: dict[str, torch.dtype], device: torch.device) -> nn.Module:
    """Move ``module`` to ``device`` and give every parameter / buffer named in ``dtypes`` that
    dtype (undoing :func:`cpu_copy`'s ``float32``); returns ``module``."""
    module.to(device)
    with torch.no_grad():
        for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
            want = dtypes.get(name)
            if want is not None and t.dtype != want:
                t.data = t.data.to(want)
    return module


def tensor_dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    """``{qualified name: dtype}`` of ``model``'s parameters and buffers."""
    return {name: t.dtype for name, t in itertools.chain(model.named_parameters(), model.named_buffers())}
