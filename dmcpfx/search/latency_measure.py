"""Timing one layer on a runtime, for the latency table (DESIGN.md section 4, latency budget).

A :class:`LayerGeometry` is everything that fixes a conv's or a linear's cost except its two
channel counts: the kernel, stride, padding, dilation, grouping, the input's spatial size (or,
for a linear, its rows per image) and the layer's elementwise tail inside its network (its
BatchNorm, residual add and activation, :mod:`dmcpfx.search.latency_epilogue`).
:func:`time_layer` builds that layer with its tail at ``(c_in, c_out)`` channels
(:func:`torch_layer`) and returns its latency in milliseconds per call at ``batch``:

- ``"ort-cpu"``: the module exported to ONNX by the exporter that exports the whole model, run
  by ONNX Runtime's CPU provider with ``threads`` intra-op threads, sequential execution, graph
  optimizations ALL (which fold the BatchNorm and fuse what the runtime fuses; a residual add is
  left out, since the runtime fuses it into the conv in a network but cannot alone), and the worker
  threads' spinning stopped between runs; the figure is the sum of the kernel times of its
  compute nodes from ORT's profiler, without the NCHWc layout reorders and the call overhead
  that a layer alone pays and a network does not;
- ``"cuda"``: the PyTorch module in ``dtype`` (bf16 or fp16), channels_last, timed with CUDA
  events around each call.

The figure is the median of ``runs`` timed calls after ``warmup`` untimed ones.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, TypeVar

import torch
from torch import nn

from ..errors import ConfigError
from .latency_epilogue import LayerCell

__all__ = ["BACKENDS", "CUDA_CHANNEL_MULTIPLE", "LayerGeometry", "check_backend", "device_cell", "layer_inputs",
           "onnx_bytes", "ort_session_options", "runtime_divisor", "time_layer", "time_model", "time_models",
           "torch_layer"]

BACKENDS = ("ort-cpu", "cuda")
K = TypeVar("K", bound=Hashable)


def check_backend(backend: str) -> None:
    """Raise :class:`ConfigError` for an unknown backend, or ``cuda`` without a CUDA device."""
    if backend not in BACKENDS:
        raise ConfigError(f"latency backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "cuda" and not torch.cuda.is_available():
        raise ConfigError("latency backend 'cuda' needs a CUDA device, and none is available here")


@dataclass(frozen=True)
class LayerGeometry:
    """A conv (``kind`` conv / dwconv / gconv) or a linear, without its channel counts.

    ``hw``: the input's (height, width) for a conv; for a linear, ``(rows, 1)`` with ``rows``
    the rows per image (1 for a classifier, the token count for a transformer's linear).
    ``groups``: the fixed group count of a grouped conv (``gconv``); a depthwise conv
    (``dwconv``) has one group per channel.
    """

    kind: str
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    hw: tuple[int, int] = (1, 1)
    bias: bool = False
    tail: tuple[str, ...] = ()  # the layer's elementwise tail in its network (latency_epilogue)

    @property
    def key(self) -> str:
        """A stable text key: layers with the same key share one measurement."""
        k, s, p, d, hw = self.kernel, self.stride, self.padding, self.dilation, self.hw
        return (f"{self.kind} k{k[0]}x{k[1]} s{s[0]}x{s[1]} p{'.'.join(map(str, p))} d{d[0]}x{d[1]} "
                f"g{self.groups} in{hw[0]}x{hw[1]}{' bias' if self.bias else ''}"
                + (f" +{'+'.join(self.tail)}" if self.tail else ""))

    def conv_groups(self, c_in: int) -> int:
        return c_in if self.kind == "dwconv" else self.groups


def ort_session_options(threads: int):
    """The ONNX Runtime session options of every latency measurement (CPU provider)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


def _median_ms(run: Callable[[], object], runs: int, warmup: int) -> float:
    """Median wall time in ms of ``runs`` calls of ``run`` after ``warmup`` untimed ones (CPU)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _cuda_median_ms(run: Callable[[], object], runs: int, warmup: int) -> float:
    """Median GPU time in ms of ``runs`` calls of ``run`` (CUDA events) after ``warmup`` ones."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start.record()
            run()
            end.record()
            end.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(end))
    return statistics.median(times)


def layer_inputs(geo: LayerGeometry, c_in: int, batch: int, cell: nn.Module) -> tuple[torch.Tensor, ...]:
    """Random inputs of :func:`torch_layer`'s module: ``x`` at ``batch`` images, and ``skip`` (the
    output's shape) when its tail adds a residual."""
    gen = torch.Generator().manual_seed(1)
    shape = (batch * geo.hw[0], c_in) if geo.kind == "linear" else (batch, c_in, *geo.hw)
    x = torch.randn(shape, generator=gen)
    if not getattr(cell, "has_add", False):
        return (x,)
    with torch.no_grad():
        out_shape = cell.layer(x[:1]).shape[1:]
    return x, torch.randn((x.shape[0], *out_shape), generator=gen)


def _time_ort(geo: LayerGeometry, c_in: int, c_out: int, batch: int, threads: int, runs: int,
              warmup: int) -> float:
    """Median time (ms) of one run's compute nodes (every kernel but the layout reorders), read
    from ONNX Runtime's profiler.

    Timed alone, a layer pays what it does not pay inside a network: the ``session.run`` call
    and, with ORT's NCHWc layout, a reorder of its input and of its output (for a depthwise or a
    1x1 conv these cost more than the conv). Inside a network the reorders happen once at its
    ends, so only the compute nodes' kernel time is the layer's share; the rest of the network's
    time is the table's calibration.
    """
    import json
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    cell = torch_layer(geo, c_in, c_out, residual=False).eval()  # ORT fuses the add in a network
    inputs = layer_inputs(geo, c_in, batch, cell)
    onnx = onnx_bytes(cell, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort_session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "layer")
        session = ort.InferenceSession(onnx, sess_options=so, providers=["CPUExecutionProvider"])
        feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    times = [e["dur"] / 1e3 for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and not str(e.get("args", {}).get("op_name", "")).startswith("Reorder")]
    per_run, left = divmod(len(times), warmup + runs)
    if per_run < 1 or left:  # the same compute nodes in every run; anything else is not a timing we understand
        raise RuntimeError(f"ONNX Runtime's profile holds {len(times)} kernel times for {warmup + runs} runs of "
                           f"a {geo.key} layer")
    return statistics.median(sum(times[i:i + per_run]) for i in range(warmup * per_run, len(times), per_run))


def torch_layer(geo: LayerGeometry, c_in: int, c_out: int, residual: bool = True) -> nn.Module:
    """The layer with its tail as a PyTorch module at ``(c_in, c_out)`` (random weights, a
    :class:`~dmcpfx.search.latency_epilogue.LayerCell`; ``residual=False``: without the tail's
    residual add; its inputs: :func:`layer_inputs`)."""
    if geo.kind == "linear":
        return LayerCell(nn.Linear(c_in, c_out, bias=True), geo.tail, c_out, linear=True, residual=residual)
    top, left, bottom, right = geo.padding
    pad = nn.ZeroPad2d((left, right, top, bottom)) if (top, left) != (bottom, right) else None
    conv = nn.Conv2d(c_in, c_out, geo.kernel, geo.stride, (0, 0) if pad else (top, left), geo.dilation,
                     groups=geo.conv_groups(c_in), bias=geo.bias)
    return LayerCell(nn.Sequential(pad, conv) if pad else conv, geo.tail, c_out, linear=False, residual=residual)


def device_cell(geo: LayerGeometry, c_in: int, c_out: int, batch: int, dtype: torch.dtype,
                device: str = "cuda") -> tuple[nn.Module, list[torch.Tensor]]:
    """The cuda backend's cell (the layer with its whole tail, residual add included, since eager
    PyTorch runs each op as its own kernel) and its inputs, in ``dtype`` on ``device``, a conv
    channels_last; the CPU tests call it with ``device="cpu"``."""
    cell = torch_layer(geo, c_in, c_out).eval()
    xs = [t.to(device, dtype) for t in layer_inputs(geo, c_in, batch, cell)]
    cell = cell.to(device, dtype)
    if geo.kind != "linear":
        cell = cell.to(memory_format=torch.channels_last)
        xs = [t.contiguous(memory_format=torch.channels_last) for t in xs]
    return cell, xs


def _time_cuda(geo: LayerGeometry, c_in: int, c_out: int, batch: int, dtype: torch.dtype, runs: int,
               warmup: int) -> float:
    cell, xs = device_cell(geo, c_in, c_out, batch, dtype)
    with torch.no_grad():
        return _cuda_median_ms(lambda: cell(*xs), runs, warmup)


def time_layer(geo: LayerGeometry, c_in: int, c_out: int, *, backend: str, batch: int, threads: int = 1,
               dtype: torch.dtype = torch.bfloat16, runs: int = 7, warmup: int = 2) -> float:
    """Latency in ms of one call of the layer at ``(c_in, c_out)`` channels and ``batch`` images."""
    if backend == "ort-cpu":
        return _time_ort(geo, c_in, c_out, batch, threads, runs, warmup)
    if backend == "cuda":
        return _time_cuda(geo, c_in, c_out, batch, dtype, runs, warmup)
    check_backend(backend)
    raise AssertionError("unreachable")


def onnx_bytes(model: nn.Module, inputs: tuple) -> bytes:
    """The model in ONNX at the inputs' static shapes, for timing only (TorchScript exporter,
    else the dynamo one); torch's export chatter is kept off the user's terminal."""
    import contextlib
    import io
    import tempfile
    import warnings
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(model, inputs, str(path), dynamo=False)
        except Exception:  # noqa: BLE001 - the TorchScript exporter cannot take every model
            torch.onnx.export(model, inputs, str(path), dynamo=True, external_data=False)
        return path.read_bytes()


def _ort_timer(model: nn.Module, inputs: tuple, threads: int) -> Callable[[int, int], float]:
    """``timer(runs, warmup)``: a median (ms) in a new ONNX Runtime session of ``model``, exported once."""
    import onnxruntime as ort

    onnx = onnx_bytes(model, inputs)
    feed_values = [t.numpy() for t in inputs]

    def timer(runs: int, warmup: int) -> float:
        session = ort.InferenceSession(onnx, sess_options=ort_session_options(threads),
                                       providers=["CPUExecutionProvider"])
        feed = {i.name: v for i, v in zip(session.get_inputs(), feed_values)}
        return _median_ms(lambda: session.run(None, feed), runs, warmup)
    return timer


def _cuda_timer(model: nn.Module, inputs: tuple, dtype: torch.dtype) -> Callable[[int, int], float]:
    """``timer(runs, warmup)``: a median (ms) of ``model`` in ``dtype``, channels_last (CUDA events)."""
    model = model.to("cuda", dtype).to(memory_format=torch.channels_last)
    xs = [t.to("cuda", dtype if t.is_floating_point() else t.dtype) for t in inputs]
    xs = [t.to(memory_format=torch.channels_last) if t.dim() == 4 else t for t in xs]
    return lambda runs, warmup: _cuda_median_ms(lambda: model(*xs), runs, warmup)


def time_models(models: Mapping[K, nn.Module], inputs: tuple, *, backend: str, threads: int = 1,
                dtype: torch.dtype = torch.bfloat16, runs: int = 7, warmup: int = 5, rounds: int = 1) -> dict[K, float]:
    """Latency in ms of one forward of each whole model at ``inputs`` (their batch) on ``backend``.

    ``ort-cpu``: exported to ONNX and run with :func:`ort_session_options` (wall time of
    ``session.run``); ``cuda``: a copy in ``dtype``, channels_last (CUDA events). A model's
    figure is the lowest of ``rounds`` medians of ``runs`` calls each, after ``warmup`` untimed
    calls (a new ONNX Runtime session's first calls grow its memory arena). The rounds are
    interleaved (round 1 of every model, then round 2, ...) and each ort-cpu round opens a new
    session: on a shared machine a slow spell (another tenant on the host) lasts seconds and
    slows whatever runs in it, and other work only ever adds time, so the lowest median over
    rounds spread in time is the most repeatable figure, and models compared with each other
    are measured over the same stretch of time. The callers' models are not changed.
    """
    import copy

    check_backend(backend)
    inputs = tuple(t.detach().cpu() for t in inputs)
    timers = {}
    for key, model in models.items():
        model = copy.deepcopy(model).eval()
        timers[key] = _ort_timer(model, inputs, threads) if backend == "ort-cpu" else _cuda_timer(model, inputs, dtype)
    best = {key: float("inf") for key in timers}
    for _ in range(max(1, rounds)):
        for key, timer in timers.items():
            best[key] = min(best[key], timer(runs, warmup))
    return best


def time_model(model: nn.Module, inputs: tuple, *, backend: str, threads: int = 1,
               dtype: torch.dtype = torch.bfloat16, runs: int = 7, warmup: int = 5, rounds: int = 1) -> float:
    """Latency in ms of one forward of one whole model: :func:`time_models` of ``{0: model}``."""
    return time_models({0: model}, inputs, backend=backend, threads=threads, dtype=dtype, runs=runs, warmup=warmup,
                       rounds=rounds)[0]


#: the channel multiple of CUDA's tensor cores for bf16/fp16 convolutions and matrix products
#: (NVIDIA's deep learning performance guide: channel counts that are multiples of 8)
CUDA_CHANNEL_MULTIPLE = 8


def runtime_divisor(backend: str) -> int:
    """The channel multiple that ``backend`` rewards, for ``search.divisor: auto``.

    ``ort-cpu``: ONNX Runtime's NCHWc block on this CPU (16 with AVX-512, 8 with AVX2), probed,
    not guessed: a one-Conv model with 8 output channels is optimized at level ALL and the padded
    output-channel count of the resulting NCHWc Conv is read back (1 when ORT uses no NCHWc
    kernel). ``cuda``: :data:`CUDA_CHANNEL_MULTIPLE`. Deterministic on a given machine.
    """
    if backend == "cuda":  # a constant: known without the device
        return CUDA_CHANNEL_MULTIPLE
    check_backend(backend)
    import tempfile
    from pathlib import Path

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 16, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "probe.opt.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(optimized)
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
        result = onnx.load(str(optimized))
    dims = {i.name: list(i.dims) for i in result.graph.initializer}
    for node in result.graph.node:
        if node.domain.endswith("nchwc") and node.op_type == "Conv":
            return max(1, int(dims[node.input[1]][0]))
    return 1
