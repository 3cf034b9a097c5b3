"""Strict float32 arithmetic for the checks that compare two models' outputs.

cuDNN runs float32 convolutions in TF32 by default (a 10-bit mantissa, relative error
about 1e-3), ``torch.set_float32_matmul_precision("high")`` does the same for matmuls,
oneDNN can be told to use bf16 inside float32 ops, and an enclosing ``torch.autocast``
runs the compared models in bf16/fp16. Any of these makes a correct model fail a check
at 1e-3 / 1e-4 relative tolerance, or hides a small real difference. :func:`strict_numerics`
switches all of them off for the duration of one check (the verification of
``materialize``, the slimmable check, the ONNX check) and restores every previous
setting afterwards, also when the check raises.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch

__all__ = ["strict_numerics", "numerics_state"]

#: the precision objects of the fp32_precision API (torch >= 2.9), as attribute paths
_PRECISION_PATHS = ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul",
                    "mkldnn.conv", "mkldnn.rnn")


def _precision_objects() -> list[tuple[str, object]]:
    """``(path, object)`` of every ``torch.backends`` node with an ``fp32_precision`` setting."""
    found = []
    for path in _PRECISION_PATHS:
        obj = torch.backends
        for part in filter(None, path.split(".")):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "fp32_precision"):
            found.append((path, obj))
    return found


def numerics_state() -> dict[str, object]:
    """The settings :func:`strict_numerics` changes, read without raising (for tests and logs).

    Keys: ``fp32_precision:<path>`` (new API), ``cuda_matmul_tf32``, ``cudnn_tf32``,
    ``matmul_precision`` and ``autocast:<device>``. A legacy flag that torch refuses to read
    (legacy and new API mixed) is recorded as the error's class name.
    """
    state: dict[str, object] = {f"fp32_precision:{path}": obj.fp32_precision for path, obj in _precision_objects()}
    for key, read in (("cuda_matmul_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
                      ("cudnn_tf32", lambda: torch.backends.cudnn.allow_tf32),
                      ("matmul_precision", torch.get_float32_matmul_precision)):
        try:
            state[key] = read()
        except RuntimeError as exc:  # torch refuses a legacy read after a mix of both APIs
            state[key] = type(exc).__name__
    for device in ("cpu", "cuda"):
        state[f"autocast:{device}"] = torch.is_autocast_enabled(device)
    return state


def _legacy_flags() -> tuple[bool, bool, str] | None:
    """``(cuda matmul allow_tf32, cudnn allow_tf32, float32 matmul precision)``, or None when
    torch refuses to read them (the legacy and the fp32_precision API were mixed)."""
    try:
        return (bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32),
                torch.get_float32_matmul_precision())
    except RuntimeError:
        return None


def _set_legacy(flags: tuple[bool, bool, str]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags[:2]
    torch.set_float32_matmul_precision(flags[2])


@contextlib.contextmanager
def _strict_precision() -> Iterator[None]:
    """TF32 / bf32 off for cuBLAS, cuDNN and oneDNN; every setting restored on exit.

    torch keeps the legacy flags (``allow_tf32``, the matmul precision) and the
    ``fp32_precision`` API (torch >= 2.9) in one state that reads back through both, but
    a write through one API can make the other refuse to read. So the settings are
    changed and restored through the legacy API while it is readable (the user did not
    mix them), and through the ``fp32_precision`` API otherwise; a node of the new API that
    the legacy flags do not cover (oneDNN convolutions) is set and restored on its own.
    (``obj.fp32_precision`` reads the effective value: a child shows what it inherits.)
    """
    legacy = _legacy_flags()
    saved = [(path, obj, obj.fp32_precision) for path, obj in _precision_objects()]  # parents first
    try:
        if legacy is not None:
            _set_legacy((False, False, "highest"))
        for _, obj, _ in saved:  # effective values: after the legacy writes, what they do not cover
            if legacy is None or obj.fp32_precision not in ("none", "ieee"):
                obj.fp32_precision = "ieee"
        yield
    finally:
        if legacy is not None:
            _set_legacy(legacy)
        for _, obj, value in saved:  # what the legacy writes set differently, parents first
            if obj.fp32_precision != value:
                obj.fp32_precision = value


@contextlib.contextmanager
def strict_numerics() -> Iterator[None]:
    """Within the block: no TF32 (matmul and convolution, CUDA and oneDNN), float32 matmul
    precision ``"highest"``, and autocast disabled on CPU and CUDA. Every setting is
    restored on exit, also after an exception. The tensors' own dtypes are not changed:
    the caller runs float32 models on float32 inputs inside the block."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_strict_precision())
        with warnings.catch_warnings():  # a CPU-only torch warns that CUDA autocast is unavailable
            warnings.simplefilter("ignore", UserWarning)
            stack.enter_context(torch.autocast("cpu", enabled=False))
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield
