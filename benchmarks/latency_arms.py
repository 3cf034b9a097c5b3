"""The arms of ``benchmarks/latency.py``: the same random torchvision model pruned each way.

``full``; ``dmcp dN`` (a short DMCP search on random data, derived at the benchmark size,
cached as arch YAML); ``uniform dN`` (one keep ratio, widths multiples of N); ``TP L1 rN``
(Torch-Pruning's L1 magnitude pruner). Every arm's exact MACs are counted and checked
against the 2% band of its target. The timing is :mod:`latency_timing`'s job.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dmcpfx  # noqa: E402
from dmcpfx.arch import load_arch  # noqa: E402
from dmcpfx.counting import count_flops  # noqa: E402
from dmcpfx.data import synthetic_loaders  # noqa: E402

DEFAULT_ARCH_DIR = REPO / "benchmarks" / "results" / "archs"
MACS_BAND = 0.02  # every arm's exact MACs within 2% of the target
ALL_ARMS = ("dmcp-d8", "dmcp-d1", "uniform-d8", "tp-l1-r8", "tp-l1")  # the arms (default)
EXTRA_ARMS = ("dmcp-d16", "uniform-d16", "tp-l1-r16")  # multiples of 16: ORT's NCHWc block on AVX-512
ARM_RE = re.compile(r"^(dmcp-d|uniform-d|tp-l1-r)(\d+)$|^tp-l1$")


def arm_label(key: str) -> str:
    """``dmcp-d8`` -> ``dmcp d8``, ``tp-l1-r8`` -> ``TP L1 r8``."""
    if key == "full":
        return "full"
    if key.startswith("tp-l1"):
        return "TP L1" + ("" if key == "tp-l1" else " r" + key.rsplit("-r", 1)[1])
    return key.replace("-", " ")


ARM_LABELS = {k: arm_label(k) for k in ("full", *ALL_ARMS, *EXTRA_ARMS)}


# --------------------------------------------------------------------------- data types
@dataclass
class Arm:
    """One model variant to time."""

    key: str                      # e.g. "dmcp-d8", "full"
    target: float | None          # MACs ratio asked for (None: the full model)
    model: nn.Module
    macs: int                     # exact, count_flops at 1x3xSxS
    note: str = ""
    ms: dict[str, float] = field(default_factory=dict)  # column -> median milliseconds
    padded: int | None = None     # MACs with channels padded to ORT's NCHWc block

    @property
    def label(self) -> str:
        return arm_label(self.key)


@dataclass(frozen=True)
class Column:
    backend: str  # "ort", "eager" or "cuda"
    batch: int

    @property
    def name(self) -> str:
        return f"{self.backend} b{self.batch}"


# --------------------------------------------------------------------------- models
def build_model(name: str, seed: int) -> nn.Module:
    """A torchvision classifier with random weights (fixed seed), eval mode."""
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).eval()


def last_linear(model: nn.Module) -> nn.Module:
    """The classifier: the last ``nn.Linear`` in module order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


def within_band(macs: float, target: float, band: float = MACS_BAND) -> bool:
    return abs(macs - target) <= band * target


@contextlib.contextmanager
def torch_threads(n: int):
    """Temporarily set torch's intra-op threads (the untimed work runs on one thread:
    OpenMP threads of small ops slow down by orders of magnitude on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- dmcp arms
def arch_cache_path(arch_dir: Path, name: str, size: int, divisor: int, target: float, args) -> Path:
    """The cache file of one searched arch; its name holds every setting that shapes it."""
    return arch_dir / (
        f"{name}_{size}px_d{divisor}_t{target:g}_search{args.search_size}px-b{args.search_batch}"
        f"-{args.search_steps}steps-lr{args.search_lr:g}-seed{args.seed}.yaml"
    )


def short_search(model: nn.Module, divisor: int, target: float, args) -> dict[str, torch.Tensor]:
    """A short DMCP search on random data at ``--search-size``; returns the alphas per group.

    The weight learning rate is ``--search-lr`` (0.02), not the official 0.5: that value is
    meant for ImageNet batch sizes, and on a batch of a few random images it makes the
    weights diverge (NaN alphas were seen)."""
    x = torch.randn(1, 3, args.search_size, args.search_size)
    space = dmcpfx.instrument(model, (x,), divisor=divisor)
    half = max(1, args.search_steps // 2)
    data = synthetic_loaders(num_classes=last_linear(model).out_features, image_size=args.search_size,
                             batch_size=args.search_batch, steps=half, seed=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dmcpfx.search(space, data.train, target=target, epochs=2, warmup_epochs=1, device="cpu",
                               seed=args.seed, progress=False, lr=args.search_lr, min_lr=0.16 * args.search_lr)
    bad = [gid for gid, gate in space.gates().items() if not torch.isfinite(gate.alpha).all()]
    if bad:
        raise RuntimeError(f"the short search diverged: non-finite alphas in {len(bad)} groups (e.g. {bad[0]}); "
                           "lower --search-lr")
    print(f"  search d{divisor} t={target:g}: {result.steps} steps at {args.search_size}px, "
          f"E[MACs] {result.expected / result.full:.3f} of full (target {target:g})", flush=True)
    return {gid: gate.alpha.detach().clone() for gid, gate in space.gates().items()}


def derive_at_size(model: nn.Module, x: torch.Tensor, divisor: int, alphas: dict[str, torch.Tensor],
                   target: float, path: Path, model_name: str) -> dict[str, int]:
    """Copy searched alphas into a space instrumented at the benchmark size and derive there.

    The gate splits depend only on the channel counts and the divisor, not on the input
    size, so the alphas transfer one to one; deriving at the benchmark size makes the
    ratio target exact there (the classifier's MACs share does depend on the size).
    """
    space = dmcpfx.instrument(model, (x,), divisor=divisor)
    gates = space.gates()
    if set(gates) != set(alphas):
        raise RuntimeError("the search space at the search size has other groups than at the benchmark size")
    with torch.no_grad():
        for gid, gate in gates.items():
            gate.alpha.copy_(alphas[gid])
    return dmcpfx.derive(space, "expected", target=target, path=path, model_name=model_name)


def dmcp_widths(model: nn.Module, name: str, x: torch.Tensor, divisor: int, target: float, args) -> dict[str, int]:
    """Searched-style widths: from the arch cache, or a short search + derive (then cached)."""
    size = x.shape[-1]
    path = arch_cache_path(Path(args.arch_dir), name, size, divisor, target, args)
    if path.exists() and not args.research:
        arch = load_arch(path)
        if arch.input_shape and list(arch.input_shape) != list(x.shape):
            raise RuntimeError(f"{path} was derived for input {arch.input_shape}, not {list(x.shape)}")
        print(f"  dmcp d{divisor} t={target:g}: arch from {path.relative_to(REPO) if path.is_relative_to(REPO) else path}",
              flush=True)
        return arch.widths
    torch.manual_seed(args.seed)
    alphas = short_search(model, divisor, target, args)
    return derive_at_size(model, x, divisor, alphas, target, path, f"torchvision.models.{name}")


# --------------------------------------------------------------------------- uniform arm
def uniform_widths(graph, keep: float, multiple: int = 8) -> dict[str, int]:
    """One keep ratio for every prunable group, each width the valid one nearest to
    ``keep * C``: a multiple of ``lcm(multiple, group divisor)`` in ``[q, C]``, or ``C`` itself."""
    widths = {}
    for gid, group in graph.prunable.items():
        q = math.lcm(multiple, group.divisor)
        valid = [*range(q, group.width + 1, q), group.width]
        widths[gid] = min(valid, key=lambda w: (abs(w - keep * group.width), w))
    return widths


def solve_keep(macs_of: Callable[[float], tuple[int, object]], target_macs: float, guess: float, *,
               lo: float = 0.02, hi: float = 1.0, iters: int = 16, stop: float = 0.005,
               power: float = 2.0) -> tuple[float, int, object]:
    """Find a keep ratio whose MACs (growing with it) hit ``target_macs``; return the closest
    ``(keep, macs, payload)`` seen.

    Safeguarded secant on ``MACs ~ keep**power`` (channel pruning cuts both sides of most
    layers), falling back to bisection of the bracket; stops once within ``stop`` (relative)
    of the target. MACs are a staircase in ``keep`` (widths are integers), so the caller
    checks the result against its band.
    """
    best: tuple[float, int, object] | None = None
    keep = min(max(guess, lo), hi)
    for _ in range(iters):
        macs, payload = macs_of(keep)
        if best is None or abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (keep, macs, payload)
        if abs(macs - target_macs) <= stop * target_macs:
            break
        if macs > target_macs:
            hi = keep
        else:
            lo = keep
        proposal = keep * (target_macs / max(macs, 1)) ** (1.0 / power)
        keep = proposal if lo < proposal < hi and abs(proposal - keep) > 1e-6 else 0.5 * (lo + hi)
    assert best is not None
    return best


def uniform_arm(model: nn.Module, x: torch.Tensor, target: float, full_macs: int,
                multiple: int = 8) -> tuple[dict[str, int], str]:
    graph = dmcpfx.analyze(model, (x,))

    def macs_of(keep: float) -> tuple[int, dict[str, int]]:
        widths = uniform_widths(graph, keep, multiple)
        return int(graph.flops(widths)), widths

    keep, _, widths = solve_keep(macs_of, target * full_macs, guess=math.sqrt(target))
    return widths, f"keep ratio {keep:.4f}"


# --------------------------------------------------------------------------- Torch-Pruning arms
def tp_prune(model: nn.Module, x: torch.Tensor, pruning_ratio: float, round_to: int | None) -> nn.Module:
    """A pruned deep copy: Torch-Pruning L1 magnitude, local ranking, classifier ignored."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        pruner_cls = getattr(tp.pruner, "MagnitudePruner", None) or tp.pruner.BasePruner  # alias in 1.6
        pruner = pruner_cls(
            pruned, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=pruning_ratio, ignored_layers=[last_linear(pruned)], round_to=round_to,
        )
        pruner.step()
    return pruned.eval()


def tp_arm(model: nn.Module, x: torch.Tensor, target: float, full_macs: int,
           round_to: int | None) -> tuple[nn.Module, str]:
    def macs_of(keep: float) -> tuple[int, nn.Module]:
        pruned = tp_prune(model, x, 1.0 - keep, round_to)
        return count_flops(pruned, (x,)), pruned

    keep, _, pruned = solve_keep(macs_of, target * full_macs, guess=math.sqrt(target), lo=0.05)
    return pruned, f"pruning_ratio {1.0 - keep:.4f}"


# --------------------------------------------------------------------------- building all arms
def build_arms(name: str, args) -> list[Arm]:
    """The full model and every requested arm at every target, MACs verified."""
    model = build_model(name, args.seed)
    x = torch.randn(1, 3, args.size, args.size)
    full_macs = count_flops(model, (x,))
    arms = [Arm("full", None, model, full_macs)]
    for target in args.targets:
        for key in args.arms:
            t0 = time.perf_counter()
            compact, note = make_arm(key, model, name, x, target, full_macs, args)
            macs = count_flops(compact, (x,))
            ok = within_band(macs, target * full_macs)
            note = note + ("" if ok else f"; MACs MISS the {MACS_BAND:.0%} band")
            arms.append(Arm(key, target, compact.eval(), macs, note))
            print(f"  {arm_label(key):<11} t={target:g}: {macs / 1e9:.4f} GMACs = {macs / full_macs:.4f} of full "
                  f"({'within' if ok else 'OUTSIDE'} {MACS_BAND:.0%} of {target:g}); {note} "
                  f"[{time.perf_counter() - t0:.1f}s]", flush=True)
    return arms


def make_arm(key: str, model: nn.Module, name: str, x: torch.Tensor, target: float, full_macs: int,
             args) -> tuple[nn.Module, str]:
    m = ARM_RE.match(key)
    if m is None:
        raise ValueError(f"unknown arm {key!r}; choose from {', '.join(ALL_ARMS + EXTRA_ARMS)}")
    kind, n = m.group(1), int(m.group(2)) if m.group(2) else None
    if kind == "dmcp-d":
        widths = dmcp_widths(model, name, x, n, target, args)
        return dmcpfx.materialize(model, widths, (x,)), f"derive expected, divisor {n}"
    if kind == "uniform-d":
        widths, note = uniform_arm(model, x, target, full_macs, multiple=n)
        return dmcpfx.materialize(model, widths, (x,)), note
    return tp_arm(model, x, target, full_macs, n)
