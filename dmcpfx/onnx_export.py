"""ONNX export of a (compact) model, checked against PyTorch with onnxruntime."""
from __future__ import annotations

import io
import os
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import DmcpfxError
from .fileio import atomic_path
from .analysis.export import as_tuple


class OnnxExportError(DmcpfxError):
    """Export failed, or onnxruntime disagrees with PyTorch."""


def export_onnx(model: nn.Module, example_inputs, path: str | os.PathLike, *, check: bool = True, rtol: float = 1e-4) -> float:
    """Export ``model`` (eval mode) to ``path`` atomically; return the max abs difference.

    With ``check`` the file is run with onnxruntime (CPU) on ``example_inputs`` and
    compared with PyTorch: a difference above ``rtol`` times the output scale raises
    :class:`OnnxExportError` (and no file is left behind).
    """
    inputs = tuple(t.detach().cpu() for t in as_tuple(example_inputs))
    was_training = model.training
    model = model.eval()
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            _export(model, inputs, tmp)
            diff = run_and_compare(model, inputs, tmp, rtol) if check else float("nan")
    finally:
        model.train(was_training)
    return diff


def _export(model: nn.Module, inputs, tmp: Path) -> None:
    errors = []
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, inputs, str(tmp), dynamo=dynamo, external_data=False) if dynamo else \
                    torch.onnx.export(model, inputs, str(tmp), dynamo=False)
            return
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    raise OnnxExportError(f"ONNX export of {type(model).__name__} failed: " + " | ".join(errors))


def run_and_compare(model: nn.Module, inputs, onnx_path, rtol: float = 1e-4) -> float:
    """Max abs difference between onnxruntime and PyTorch outputs (raises above tolerance)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = model(*inputs)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    diff = 0.0
    for a, b in zip(got, want):
        b = b.detach().cpu().numpy()
        d = float(np.abs(a - b).max()) if b.size else 0.0
        scale = float(np.abs(b).max()) if b.size else 1.0
        if d > rtol * max(scale, 1.0):
            raise OnnxExportError(f"onnxruntime output differs from PyTorch by {d:.3g} (output scale {scale:.3g})")
        diff = max(diff, d)
    return diff
