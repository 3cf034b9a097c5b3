"""Non-finite values are failures: checks for the search and retraining loops.

Each check raises :class:`~dmcpfx.errors.NonFiniteError` naming the epoch, the step, the
value that went bad and the likely cause (usually a learning rate that is too high).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .errors import NonFiniteError

__all__ = ["NonFiniteError", "check_search_step", "check_alphas", "FirstBadStep", "check_parameters", "check_val_loss",
           "check_outputs"]


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True  # one host sync


def check_search_step(stats: Mapping[str, Any], space: Any, *, epoch: int, step: int, lr: float,
                      arch_lr: float | None = None) -> None:
    """After a search step: every loss in ``stats`` and every gate ``alpha`` must be finite."""
    losses = {k: v for k, v in stats.items() if isinstance(v, torch.Tensor)}
    gates = dict(space.gates()) if hasattr(space, "gates") else {}
    if _all_finite(list(losses.values()) + [g.alpha for g in gates.values()]):
        return
    bad = [f"{k}={v.float().mean().item():.3g}" for k, v in losses.items() if not torch.isfinite(v).all()]
    bad += [f"the alpha of gate '{gid}'" for gid, g in gates.items() if not torch.isfinite(g.alpha).all()][:3]
    rates = f"search.lr={lr:g}" + (f", search.arch_lr={arch_lr:g}" if arch_lr is not None else "")
    raise NonFiniteError(f"search epoch {epoch}, step {step}: non-finite {', '.join(bad)}; the learning rate "
                         f"({rates}) is likely too high, lower it (or check the data for NaN/inf); "
                         f"no arch.yaml was written")


def check_alphas(space: Any) -> None:
    """Before derive: every gate's ``alpha`` must be finite (else the widths are meaningless)."""
    bad = [gid for gid, g in space.gates().items() if not torch.isfinite(g.alpha.detach()).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteError(f"derive: gate '{bad[0]}'{more} has non-finite alpha (the search diverged; "
                             f"lower search.arch_lr or search.lr and search again)")


class FirstBadStep:
    """Remembers, on the device and without a host sync, the first step whose loss was not
    finite; :meth:`check` syncs once and raises."""

    def __init__(self, device: torch.device | str):
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), dtype=torch.float32, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float()
        new = (self.first < 0) & ~torch.isfinite(loss)
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        self.value = torch.where(new, loss, self.value)

    def check(self, where: str, hint: str) -> None:
        first = int(self.first.item())
        if first >= 0:
            raise NonFiniteError(f"{where}, step {first}: the training loss became {self.value.item()}; {hint}")


def check_parameters(model: nn.Module, where: str, hint: str) -> None:
    """Every parameter of ``model`` must be finite (a NaN gradient of the last step shows here)."""
    params = dict(model.named_parameters())
    if _all_finite(params.values()):
        return
    name = next(n for n, p in params.items() if not torch.isfinite(p.detach()).all())
    raise NonFiniteError(f"{where}: parameter '{name}' is not finite; {hint}")


def check_val_loss(loss: float | None, where: str, hint: str) -> None:
    """A non-finite validation loss stops training like a non-finite training loss: the model
    outputs NaN or inf (e.g. from its BatchNorm statistics), so no checkpoint or model is written."""
    import math

    if loss is not None and not math.isfinite(float(loss)):
        raise NonFiniteError(f"{where}: the validation loss is {float(loss)} (the model outputs NaN or inf); {hint}; "
                             f"no checkpoint or model was written for this epoch")


def check_outputs(output: Any, where: str) -> None:
    """Every floating tensor in ``output`` (a tensor, tuple, list or dict) must be finite."""
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else [output]
    for v in values:
        if isinstance(v, (Mapping, tuple, list)):
            check_outputs(v, where)
        elif isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise NonFiniteError(f"{where}: the model outputs NaN or inf on the example input; it is not written")
