"""ONNX export of a (compact) model with a dynamic batch dimension, checked against PyTorch
with onnxruntime at batch 1 and at batch 3 (NaN or inf counts as a mismatch)."""
from __future__ import annotations

import io
import os
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn

from ..compare import max_abs_diff, output_scale
from ..errors import DmcpfxError
from ..fileio import atomic_path
from ..api_checks import check_example, check_module, check_number, check_path
from ..inputs import as_tuple
from ..analysis.device import cpu_copy, needs_copy, widen
from ..numerics import strict_numerics

__all__ = ["OnnxExportError", "export_onnx", "run_and_compare", "CHECK_BATCHES"]

CHECK_BATCHES = (1, 3)  # the exported file is run at these batch sizes


class OnnxExportError(DmcpfxError):
    """Export failed, or onnxruntime disagrees with PyTorch."""


def _at_batch(inputs: tuple[torch.Tensor, ...], n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The inputs with batch size ``n``: the example's first rows, then seeded random rows."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in inputs:
        if t.dim() == 0 or not t.is_floating_point():
            out.append(t)
            continue
        rows = t[:n]
        if rows.shape[0] < n:
            extra = torch.randn((n - rows.shape[0], *t.shape[1:]), generator=g, dtype=t.dtype)
            rows = torch.cat([rows, extra * t.float().std().clamp_min(1e-3).to(t.dtype)])
        out.append(rows.contiguous())
    return tuple(out)


def export_onnx(model: nn.Module, example_inputs, path: str | os.PathLike, *, check: bool = True,
                rtol: float = 1e-4, dynamic_batch: bool = True) -> float:
    """Export ``model`` (eval mode) to ``path`` atomically; return the max abs difference.

    The file is always a float32 CPU graph: a model on another device or in
    float16/bfloat16 is exported as a CPU float32 copy (``model`` itself is not moved).
    Export and check run in :func:`~dmcpfx.numerics.strict_numerics` (no autocast, no TF32).

    With ``dynamic_batch`` (the default) dimension 0 of every input and output is a symbol
    ``batch``. With ``check`` the file is run with onnxruntime (CPU) at batch sizes
    :data:`CHECK_BATCHES` (only the example's own batch when ``dynamic_batch`` is False)
    and compared with PyTorch: a difference above ``rtol`` times the output scale, or any
    NaN/inf mismatch, raises :class:`OnnxExportError` and no file is left behind.
    """
    check_module(model, "export_onnx")
    check_example(example_inputs, "export_onnx")
    check_path(path, "export_onnx", "path")
    check_number(rtol, "export_onnx", "rtol", low=0.0)
    inputs = as_tuple(example_inputs)
    source, was_training = model, model.training
    if needs_copy(model, inputs):  # a CUDA or half-precision model: exported as a CPU float32 copy
        model = cpu_copy(model, float32=True)
    inputs = tuple(widen(t) for t in inputs)
    model = model.eval()
    target = Path(path)
    try:
        with atomic_path(target) as tmp, strict_numerics():  # no autocast baked in, no TF32 in the check
            export_inputs = _at_batch(inputs, 2, seed=1) if dynamic_batch else inputs
            _export(model, export_inputs, tmp, dynamic_batch)
            diff = float("nan")
            if check:
                batches = CHECK_BATCHES if dynamic_batch else (None,)
                diff = max(run_and_compare(model, inputs if n is None else _at_batch(inputs, n, seed=n), tmp, rtol)
                           for n in batches)
    finally:
        source.train(was_training)
    return diff


def _export(model: nn.Module, inputs, tmp: Path, dynamic_batch: bool) -> None:
    errors = []
    names = [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                if dynamo:
                    shapes = tuple({0: torch.export.Dim("batch")} for _ in inputs) if dynamic_batch else None
                    torch.onnx.export(model, inputs, str(tmp), dynamo=True, external_data=False,
                                      input_names=names, dynamic_shapes=shapes)
                else:
                    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
                    torch.onnx.export(model, inputs, str(tmp), dynamo=False, input_names=names, dynamic_axes=axes)
            return
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    raise OnnxExportError(f"ONNX export of {type(model).__name__} failed: " + " | ".join(errors))


def flatten_outputs(value) -> list[torch.Tensor]:
    """A model's output as the flat list of its tensors, in the order ONNX exports them
    (a dict by its values in insertion order, tuples and lists depth first)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_outputs(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten_outputs(v)]
    raise OnnxExportError(f"the model returns a {type(value).__name__}; ONNX outputs must be tensors, or tuples, "
                          f"lists or dicts of tensors")


def _check_finite(got, want: torch.Tensor, index: int, batch) -> None:
    """Which side is non-finite: PyTorch itself (the model, not the export) or onnxruntime."""
    import numpy as np

    torch_ok = bool(torch.isfinite(want).all()) if want.is_floating_point() else True
    ort_ok = bool(np.isfinite(got).all()) if np.issubdtype(np.asarray(got).dtype, np.floating) else True
    if not torch_ok:
        raise OnnxExportError(f"PyTorch itself outputs NaN or inf (output {index}, batch {batch}): the model is "
                              f"broken, not the export (a diverged training? check its weights and BatchNorm statistics)")
    if not ort_ok:
        raise OnnxExportError(f"onnxruntime outputs NaN or inf (output {index}, batch {batch}) where PyTorch is finite")


def run_and_compare(model: nn.Module, inputs, onnx_path, rtol: float = 1e-4) -> float:
    """Max abs difference between onnxruntime and PyTorch outputs on ``inputs``.

    Raises :class:`OnnxExportError` above ``rtol`` times the output scale, for a NaN or an
    unmatched infinity on either side, or when onnxruntime rejects the inputs. PyTorch runs
    on the model's own device, in :func:`~dmcpfx.numerics.strict_numerics`."""
    import onnxruntime as ort

    inputs = tuple(as_tuple(inputs))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    batch = tuple(inputs[0].shape)[:1] if inputs and inputs[0].dim() else ()
    try:
        got = session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are plain RuntimeErrors
        raise OnnxExportError(f"onnxruntime cannot run {Path(onnx_path).name} at batch {batch}: "
                              f"{str(exc).splitlines()[0]}") from exc
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    with torch.no_grad(), strict_numerics():
        want = flatten_outputs(model(*(t.to(device) for t in inputs)))
    if len(got) != len(want):
        raise OnnxExportError(f"onnxruntime returned {len(got)} outputs, PyTorch {len(want)}")
    diff = 0.0
    for i, (a, b) in enumerate(zip(got, want)):
        _check_finite(a, b, i, batch)
        try:
            d = max_abs_diff(a, b)
        except ValueError as exc:
            raise OnnxExportError(f"onnxruntime output shape differs from PyTorch at batch {batch}: {exc}") from exc
        scale = output_scale(b)
        if not d <= rtol * max(scale, 1.0):  # `not <=`: a NaN difference fails too
            raise OnnxExportError(f"onnxruntime output differs from PyTorch by {d:.3g} at batch {batch} "
                                  f"(output scale {scale:.3g}; inf means a NaN or inf on one side)")
        diff = max(diff, d)
    return diff
