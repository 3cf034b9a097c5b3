"""Runs of benchmarks/zoo_vs_torch_pruning.py: building a zoo model, pruning it with dmcpfx and
with Torch-Pruning, and each tool's zeroed-channel oracle (DESIGN.md section 8 property 1)."""
from __future__ import annotations

import collections
import copy
import gc
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the section 8 oracle helpers (tests/equivalence.py)

import dmcpfx  # noqa: E402
from dmcpfx.counting import count_flops  # noqa: E402
from dmcpfx.search.gates import split_channels  # noqa: E402
from equivalence import first_tensor, randomize_norms, rel_diff  # noqa: E402
from zoo_vs_tp_report import ToolResult  # noqa: E402

try:
    import torch_pruning as tp
except ImportError as exc:  # pragma: no cover - the bench/dev extras install it
    raise SystemExit("this benchmark needs Torch-Pruning: pip install -e '.[bench]'") from exc

RATIO = 0.5  # fraction of each group's channels that both tools remove (about)
CONSUMERS = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)
STATS_NORMS = (nn.LayerNorm, nn.GroupNorm)


def one_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ("address space above --max-memory-gb" if isinstance(exc, MemoryError) else "")
    message = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."


# --- model and input ---------------------------------------------------------------------
def build(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """The zoo model as tests/test_zoo.py builds it (seed 0, eval, random norm stats)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    randomize_norms(model)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, x


def run_eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return first_tensor(model(x))


def macs_ratio(pruned: nn.Module, x: torch.Tensor, full_macs: int) -> float:
    return count_flops(pruned, x) / max(full_macs, 1)


# --- ours --------------------------------------------------------------------------------
def nearest_half(candidates: Sequence[int], width: int) -> int:
    """The candidate nearest RATIO x width (the smaller one on ties)."""
    return min(candidates, key=lambda c: (abs(c - RATIO * width), c))


def half_widths_from_graph(graph: dmcpfx.ChannelGraph) -> dict[str, int]:
    """Widths from the analysis alone: the gate candidates ``instrument`` would offer."""
    widths = {}
    for gid, group in graph.prunable.items():
        split = split_channels(group.width, divisor=group.divisor)
        if split.n:  # instrument skips groups too narrow to prune
            widths[gid] = nearest_half(split.candidates, group.width)
    return widths


def half_widths(space: dmcpfx.SearchSpace) -> dict[str, int]:
    return {gid: nearest_half(info.candidates, info.width) for gid, info in space.groups.items()}


def prune_ours(model: nn.Module, x: torch.Tensor, path: str) -> tuple[nn.Module, dict[str, int]]:
    """The timed user path: ``analyze`` + ``materialize(model)`` or ``instrument`` + ``materialize(space)``."""
    if path == "analyze":
        graph = dmcpfx.analyze(model, x)
        widths = half_widths_from_graph(graph)
        return dmcpfx.materialize(model, widths, x, graph=graph), widths
    space = dmcpfx.instrument(model, x)
    widths = half_widths(space)
    return dmcpfx.materialize(space, widths, x), widths


def run_ours(model: nn.Module, x: torch.Tensor, full_macs: int, path: str = "analyze") -> ToolResult:
    result = ToolResult()
    gc.collect()
    start = time.perf_counter()
    try:
        compact, widths = prune_ours(model, x, path)
    except Exception as exc:  # noqa: BLE001 - any crash is a reported failure
        result.error = one_line(exc)
        result.notes.append(result.error)
        return result
    result.seconds = time.perf_counter() - start
    if not widths:
        result.notes.append("no prunable group")
    try:
        space = dmcpfx.instrument(model, x)  # the masked ("zeroed-channel") model, untimed
        space.set_widths(widths)
        result.diff = rel_diff(run_eval(compact, x), run_eval(space, x))
        result.macs_ratio = macs_ratio(compact, x, full_macs)
    except Exception as exc:  # noqa: BLE001
        result.error = f"oracle: {one_line(exc)}"
        result.notes.append(result.error)
    return result


# --- Torch-Pruning -----------------------------------------------------------------------
def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Linear / Conv layers that emit the class scores (kept whole by both tools)."""
    return [
        m for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == num_classes)
        or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == num_classes)
    ]


def input_width(module: nn.Module) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.embed_dim  # nn.MultiheadAttention


class RemovedInputs:
    """Original input-channel numbers that Torch-Pruning removes from each consumer."""

    def __init__(self, model: nn.Module, is_in_channel_fn: Callable[[Callable], bool]):
        self._names = {m: n for n, m in model.named_modules()}
        self._is_in_channel_fn = is_in_channel_fn
        self._alive: dict[str, list[int]] = {}  # consumer -> original numbers of its current inputs
        self.removed: dict[str, list[int]] = collections.defaultdict(list)
        self.stats_norms: collections.Counter[str] = collections.Counter()

    def record(self, group) -> None:
        """Record a group before ``group.prune()``, item by item in pruning order."""
        for dep, idxs in group:
            module = dep.target.module
            if isinstance(module, STATS_NORMS):
                self.stats_norms[type(module).__name__] += 1
            if not isinstance(module, CONSUMERS) or not self._is_in_channel_fn(dep.handler):
                continue
            name = self._names[module]
            alive = self._alive.setdefault(name, list(range(input_width(module))))
            drop = {int(getattr(i, "idx", i)) for i in idxs}  # TP's hybrid index -> plain
            self.removed[name].extend(alive[i] for i in sorted(drop))
            self._alive[name] = [c for k, c in enumerate(alive) if k not in drop]


def _input_mask_hook(mask: torch.Tensor, dim: int, count: int):
    """Forward pre-hook multiplying the first ``count`` tensor arguments by ``mask`` on ``dim``."""

    def hook(_module, args):
        masked = []
        for k, arg in enumerate(args):
            if k < count and isinstance(arg, torch.Tensor) and arg.is_floating_point():
                shape = [1] * arg.dim()
                shape[dim] = -1
                arg = arg * mask.to(arg.dtype).view(shape)
            masked.append(arg)
        return tuple(masked)

    return hook


def zeroed_reference(model: nn.Module, removed: dict[str, list[int]]) -> nn.Module:
    """A copy of the unpruned ``model`` whose consumers see the removed inputs as zeros."""
    reference = copy.deepcopy(model)
    modules = dict(reference.named_modules())
    for name, channels in removed.items():
        module = modules[name]
        mask = torch.ones(input_width(module))
        mask[channels] = 0.0
        if isinstance(module, nn.modules.conv._ConvNd):
            hook = _input_mask_hook(mask, 1, 1)  # grouped/depthwise too: masking the input is exact
        elif isinstance(module, nn.MultiheadAttention):
            hook = _input_mask_hook(mask, -1, 3)  # query, key, value
        else:
            hook = _input_mask_hook(mask, -1, 1)
        module.register_forward_pre_hook(hook)
    return reference


def run_torch_pruning(model: nn.Module, x: torch.Tensor, full_macs: int, num_classes: int) -> ToolResult:
    result = ToolResult()
    work = copy.deepcopy(model)
    ignored = classifier_layers(work, num_classes)
    excluded = 0.0
    phase = "build"
    gc.collect()
    start = time.perf_counter()
    try:
        pruner = tp.pruner.BasePruner(
            work, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=RATIO, ignored_layers=ignored,
        )
        phase = "prune"
        mark = time.perf_counter()
        recorder = RemovedInputs(work, pruner.DG.is_in_channel_pruning_fn)
        excluded += time.perf_counter() - mark
        for group in pruner.step(interactive=True):
            mark = time.perf_counter()
            recorder.record(group)
            excluded += time.perf_counter() - mark
            group.prune()
    except Exception as exc:  # noqa: BLE001 - any crash is a reported failure
        result.error = f"{phase}: {one_line(exc)}"
        result.notes.append(result.error)
        return result
    result.seconds = time.perf_counter() - start - excluded
    result.pruned = work
    if not recorder.removed:
        result.notes.append("pruned nothing")
    if recorder.stats_norms:
        pruned = ", ".join(f"{n} x{c}" for n, c in sorted(recorder.stats_norms.items()))
        result.notes.append(f"pruned {pruned} (statistics change)")
    try:
        pruned_out = run_eval(work, x)
        reference = zeroed_reference(model, recorder.removed)
        result.diff = rel_diff(pruned_out, run_eval(reference, x))
        result.macs_ratio = macs_ratio(work, x, full_macs)
    except Exception as exc:  # noqa: BLE001
        result.error = f"run: {one_line(exc)}"
        result.notes.append(result.error)
    return result
