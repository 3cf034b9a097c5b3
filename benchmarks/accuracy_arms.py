"""Building blocks of benchmarks/accuracy.py: the data of each task (noisy digits,
Fashion-MNIST), the models and the pruned arms (DMCP search + derive, uniform width,
Torch-Pruning L1, random in-band archs)."""
from __future__ import annotations

import copy
import math
import time
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dmcpfx  # noqa: E402
from dmcpfx.counting import count_flops  # noqa: E402
from dmcpfx.data import DataBundle, digits_loaders  # noqa: E402
from dmcpfx.search.evaluation import evaluate_space  # noqa: E402
from dmcpfx.accuracy import evaluate  # noqa: E402
from examples.models import small_resnet  # noqa: E402
from accuracy_report import PROTOCOLS, Arm  # noqa: E402

# the digits demo's search hyper-parameters (examples/digits_demo.yaml)
DEMO_SEARCH = dict(lr=0.2, min_lr=0.01, arch_lr=0.5, arch_min_lr=0.1, budget_weight=0.1)


class GaussianNoise(Dataset):
    """Adds fresh grey Gaussian noise (std ``sigma``, same on the 3 channels) to every
    sample it serves; randomness from torch's global RNG (seeded by search / retrain)."""

    def __init__(self, base: Dataset, sigma: float) -> None:
        self.base, self.sigma = base, sigma

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.base[index]
        noise = torch.randn(1, *image.shape[1:]) * self.sigma
        return image + noise, label


def fixed_noise(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """``images`` plus one fixed draw of grey Gaussian noise (the held-out split)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape[0], 1, *images.shape[2:], generator=generator) * sigma
    return images + noise


def make_data(s: Any) -> DataBundle:
    """The data of ``s.task``.

    digits: split and subset fixed by ``data_seed``, with noise of std ``s.noise`` in
    normalized units: fresh on every training sample, one fixed draw on the held-out split.
    fashion-mnist: the idx files in ``s.data_root`` (None: the Debian package's folder), a
    stratified ``train_subset`` fixed by ``data_seed``, all 10,000 test images as held-out split.
    """
    if s.task == "fashion-mnist":
        from dmcpfx.data_fashion import fashion_mnist_loaders

        return fashion_mnist_loaders(s.data_root, batch_size=s.batch_size, image_size=s.image_size,
                                     seed=s.data_seed, train_subset=s.train_subset, augment=s.augment)
    bundle = digits_loaders(batch_size=s.batch_size, image_size=s.image_size, val_fraction=s.val_fraction,
                            seed=s.data_seed, train_subset=s.train_subset, augment=s.augment)
    if s.noise <= 0:
        return bundle
    train = DataLoader(GaussianNoise(bundle.train.dataset, s.noise), batch_size=s.batch_size, shuffle=True)
    val_x, val_y = bundle.val.dataset.tensors
    val = DataLoader(TensorDataset(fixed_noise(val_x, s.noise, s.data_seed + 12345), val_y),
                     batch_size=s.batch_size, shuffle=False)
    return DataBundle(train=train, val=val, num_classes=bundle.num_classes, input_shape=bundle.input_shape)


def fresh_model(s: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return small_resnet(num_classes=10, width=s.width).eval()


def train_and_score(model: nn.Module, data: DataBundle, s: Any, seed: int, init: str,
                    epochs: int | None = None) -> float:
    """Recipe R (same for every arm) on ``s.device``; returns the held-out top-1 (%) after the
    last epoch and leaves ``model`` on the CPU."""
    dmcpfx.retrain(model, data.train, epochs=epochs or s.epochs, lr=s.lr, init=init, seed=seed, device=s.device,
                   progress=False)
    top1 = evaluate(model, data.val, s.device)["top1"]
    model.cpu()
    return top1


def group_widths(model: nn.Module, group_ids: Sequence[str]) -> list[int]:
    """Output channels of each group's first producer (group ids are module names)."""
    return [int(model.get_submodule(gid).out_channels) for gid in group_ids]


@dataclass
class SearchOutcome:
    """One DMCP search: the two derived compact models and the supernet figures (top-1 %)."""

    expected: nn.Module
    direct: nn.Module
    own_bn_top1: float  # max width, the search's own running statistics
    recal_top1: float  # max width, BN re-estimated on 5 training batches
    expected_widths: dict
    expected_cost: float  # E[budget metric] at the end of the search: MACs per image (ms per batch: latency)


def dmcp_search(s: Any, data: DataBundle, search_train: DataLoader, holdout: DataLoader, seed: int,
                target: float, x: torch.Tensor, **budget: Any) -> SearchOutcome:
    """Search (official schedule, BN isolation), then derive ``expected`` and ``direct``
    (ranked on ``holdout``: training images the search never saw) and materialize both.
    ``budget``: ``budget_metric`` / ``latency_table`` of the search and of both derives
    (default: a MACs budget)."""
    space = dmcpfx.instrument(fresh_model(s, seed), (x,))
    result = dmcpfx.search(space, search_train, target=target, epochs=s.search_epochs, seed=seed,
                           device=s.device, progress=False, calib_batches=0,  # 0: keep the search's own statistics
                           alpha_init=s.alpha_init, **DEMO_SEARCH, **budget)
    own = evaluate_space(space, data.val, calib_batches=0)["top1"]
    recal = evaluate_space(space, data.val, calib_loader=search_train, calib_batches=5)["top1"]
    space.eval()
    expected = dmcpfx.derive(space, "expected", target=target, **budget)
    direct = dmcpfx.derive(space, "direct", target=target, samples=5, seed=seed, val_loader=holdout,
                           calib_loader=search_train, calib_batches=5, **budget)
    e_widths = {gid: float(g.expected_width().detach()) for gid, g in space.gates().items()}
    space = space.cpu()
    return SearchOutcome(dmcpfx.materialize(space, expected, (x,)), dmcpfx.materialize(space, direct, (x,)),
                         own, recal, e_widths, float(result.expected))


def bisect_ratio(macs_at: Callable[[float], int], goal: float, *, increasing: bool,
                 iterations: int = 20, good_enough: float = 0.002) -> float:
    """The ratio in [0, 1] whose (step-function) MACs are closest to ``goal``.

    ``macs_at`` is monotone in the ratio (``increasing`` says which way). Stops early
    when a ratio lands within ``good_enough`` (relative) of the goal.
    """
    lo, hi = 0.0, 1.0
    best_ratio, best_err = 0.5, math.inf
    for _ in range(iterations):
        mid = (lo + hi) / 2
        macs = macs_at(mid)
        err = abs(macs - goal) / goal
        if err < best_err:
            best_ratio, best_err = mid, err
        if err <= good_enough:
            break
        if (macs < goal) == increasing:
            lo = mid
        else:
            hi = mid
    return best_ratio


def uniform_widths(space: dmcpfx.SearchSpace, ratio: float) -> dict[str, int]:
    """One width ratio for every prunable group, respecting each group's divisor."""
    widths = {}
    for gid, info in space.groups.items():
        d = max(1, info.divisor)
        widths[gid] = min(info.width, max(d, round(ratio * info.width / d) * d))
    return widths


def uniform_compact(space: dmcpfx.SearchSpace, trained: nn.Module, target: float, x: torch.Tensor) -> nn.Module:
    goal = target * space.full_flops
    ratio = bisect_ratio(lambda r: int(space.flops(uniform_widths(space, r))), goal, increasing=True)
    return dmcpfx.materialize(trained, uniform_widths(space, ratio), (x,))


def random_compact(space: dmcpfx.SearchSpace, trained: nn.Module, target: float, x: torch.Tensor,
                   generator: torch.Generator) -> nn.Module:
    """A random architecture at ``target`` of the full MACs: every group draws a valid width
    uniformly, then derive's smallest change brings the exact MACs within 1% of the target.
    Leading channels of ``trained`` (as uniform), so both protocols apply."""
    from dmcpfx.search.derive import fit_widths, valid_widths

    drawn = {gid: ws[int(torch.randint(len(ws), (), generator=generator))] for gid, ws in valid_widths(space).items()}
    widths, _ = fit_widths(space, drawn, target * space.full_flops)
    return dmcpfx.materialize(trained, widths, (x,))


def tp_prune(model: nn.Module, x: torch.Tensor, pruning_ratio: float) -> nn.Module:
    """L1-magnitude channel pruning of a copy of ``model`` (Torch-Pruning, local ratios)."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    pruner = tp.pruner.MagnitudePruner(
        pruned, x, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=pruning_ratio, ignored_layers=[pruned.fc],
    )
    pruner.step()
    return pruned


def tp_compact(trained: nn.Module, x: torch.Tensor, full_macs: int, target: float) -> nn.Module:
    goal = target * full_macs
    ratio = bisect_ratio(lambda p: count_flops(tp_prune(trained, x, p), x), goal, increasing=False)
    return tp_prune(trained, x, ratio)


def record_arm(arm: Arm, model: nn.Module, x: torch.Tensor, ids: Sequence[str]) -> None:
    """Append ``model``'s exact MACs and params per image and its group widths to ``arm``."""
    from dmcpfx.counting import count_params

    arm.macs.append(count_flops(model, x))
    arm.params.append(count_params(model))
    arm.widths.append(group_widths(model, ids))


def train_arm(arm: Arm, compact: nn.Module, data: DataBundle, s: Any, seed: int, full_macs: int,
              log: Callable[[str], None]) -> None:
    """Both protocols for one compact model: inherit (fine-tune a copy of its weights) and paper
    (from scratch); TP-L1 always fine-tunes, so its paper figure is its inherit figure."""
    for protocol in PROTOCOLS:
        t1 = time.perf_counter()
        if protocol == "paper" and arm.kind == "tp":
            arm.top1["paper"].append(arm.top1["inherit"][-1])
            continue
        init = "inherit" if protocol == "inherit" else "scratch"
        model = compact if protocol == "paper" else copy.deepcopy(compact)
        score = train_and_score(model, data, s, seed, init=init)
        arm.top1[protocol].append(score)
        log(f"{arm.label} [{protocol}]: {arm.macs[-1] / full_macs:.2%} MACs, top-1 {score:.2f}% "
            f"({time.perf_counter() - t1:.0f}s)")
