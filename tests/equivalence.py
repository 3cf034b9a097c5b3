"""The DESIGN.md section 8 properties as reusable checks (used by the zoo and rule tests)."""
from __future__ import annotations

import random

import torch
from torch import nn

import dmcpfx
from dmcpfx.counting import count_flops, count_params

TOL = 1e-4  # max abs difference relative to the output scale (float32, eval mode)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN running stats and norm affine parameters, so that channels differ.

    Weight matrices initialized to all zeros (ViT's classification head) and scalar
    gains initialized to zero (NFNet's ``skipinit_gain``, which hides every residual
    branch) or layer scales initialized to a tiny constant (PoolFormer's 1e-5) are drawn
    at random too: otherwise the output ignores what is pruned and no
    check could fail.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif p.numel() == 1 and not p.any():
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)
            elif p.numel() > 1 and 0 < p.abs().max() < 1e-3 and (p == p.flatten()[0]).all():
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)  # a layer scale initialized to 1e-5
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return first_tensor(out[0])
    if isinstance(out, dict):
        return first_tensor(next(iter(out.values())))
    raise TypeError(type(out))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


def random_widths(space: dmcpfx.SearchSpace, seed: int) -> dict[str, int]:
    """A random candidate width per group, with at least one group below full width."""
    rng = random.Random(seed)
    widths = {gid: rng.choice(info.candidates) for gid, info in space.groups.items()}
    if widths and all(widths[g] == space.groups[g].width for g in widths):
        first = next(iter(widths))
        widths[first] = space.groups[first].candidates[0]
    return widths


def state_snapshot(model: nn.Module) -> dict:
    """An independent copy of everything analyze / instrument / materialize must not touch."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "modes": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous().view(torch.uint8)


def assert_untouched(model: nn.Module, before: dict) -> None:
    """Property 6: parameters and buffers bit-identical, same modes and hooks."""
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before["state"]), "state_dict keys changed"
    for key, value in before["state"].items():
        now = after[key].detach()
        same = now.shape == value.shape and now.dtype == value.dtype and torch.equal(_bits(now), _bits(value))
        assert same, f"the caller's '{key}' was changed"
    assert [m.training for m in model.modules()] == before["modes"], "train/eval modes changed"
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == before["hooks"]


def check_properties(model: nn.Module, x, seeds=(0, 1, 2)) -> dict:
    """Properties 1-3 and 6 of DESIGN.md section 8 for random widths; returns figures."""
    model.eval()
    before = state_snapshot(model)
    graph = dmcpfx.analyze(model, x)
    space = dmcpfx.instrument(model, x)
    space.eval()
    with torch.no_grad():
        full = first_tensor(model(*dmcpfx.analysis.as_tuple(x)))
        gated = first_tensor(space(*dmcpfx.analysis.as_tuple(x)))
    # property 3: max width == original
    assert rel_diff(gated, full) <= TOL, f"max-width output differs: {rel_diff(gated, full):.2e}"
    assert space.groups, "no prunable group"
    figures = {"groups": len(space.groups), "p1": 0.0}
    compacts = []
    for seed in seeds:
        widths = random_widths(space, seed)
        space.set_widths(widths)
        with torch.no_grad():
            masked = first_tensor(space(*dmcpfx.analysis.as_tuple(x)))
        compact = dmcpfx.materialize(model, widths, x, graph=graph)
        compact.eval()
        with torch.no_grad():
            out = first_tensor(compact(*dmcpfx.analysis.as_tuple(x)))
        # property 1: compact == masked
        d = rel_diff(out, masked)
        assert d <= TOL, f"seed {seed}: compact differs from the masked model by {d:.2e}"
        # the check can fail: pruning really changed the function
        assert rel_diff(masked, full) > 10 * TOL, f"seed {seed}: pruning did not change the output"
        # property 2: exact FLOPs / params == analytic count
        assert count_flops(compact, x) == space.flops(widths)
        assert count_params(compact) == space.params(widths)
        assert space.flops(widths) < space.full_flops
        figures["p1"] = max(figures["p1"], d)
        compacts.append((widths, compact))
    space.set_mode("max")
    assert_untouched(model, before)  # property 6: the references above came from the untouched model
    figures["compacts"] = compacts
    return figures
