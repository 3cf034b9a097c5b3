"""The options of the retrain stage: :class:`RetrainOptions` (config section ``retrain:``, the
keyword options of :func:`dmcpfx.retrain`, and what its checkpoint stores for a resume)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

from ..amp import AMP_CHOICES
from ..options import MAX_EPOCHS, MAX_SEED, Options, boolean, fail, float_in, int_in, one_of

__all__ = ["RetrainOptions", "INIT_MODES"]

INIT_MODES = ("scratch", "inherit")


def _init(key: str, value: Any) -> None:
    if not (callable(value) or (isinstance(value, str) and value in INIT_MODES)):
        fail(key, "'scratch', 'inherit' or (from Python) a callable init(model)", value)


@dataclass
class RetrainOptions(Options):
    """Retrain the compact model: SGD (``momentum``, ``nesterov``) with a linear warm-up of
    ``warmup_epochs`` epochs to the peak ``lr``, then cosine to 0 (stepped per iteration);
    ``weight_decay`` on weights with ``ndim >= 2`` only; ``label_smoothing`` of the training
    loss; ``amp``: null | bf16 | fp16. ``init``: scratch (re-initialize every parameter; the
    paper) | inherit (the supernet's weights) | a callable ``init(model)`` (Python only).
    ``seed``: initialization, shuffling and augmentation."""

    epochs: int = 8
    lr: float = 0.1
    init: Union[str, Callable] = "scratch"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    label_smoothing: float = 0.1
    amp: Union[str, None] = None
    seed: int = 0

    section = "retrain"

    def rules(self) -> list:
        epochs = self.epochs if isinstance(self.epochs, int) and self.epochs >= 1 else MAX_EPOCHS + 1
        return [
            ("epochs", int_in(1, MAX_EPOCHS)), ("lr", float_in(0.0, low_open=True)), ("init", _init),
            ("momentum", float_in(0.0, 1.0, high_open=True)), ("nesterov", boolean),
            ("nesterov", _nesterov_needs_momentum(self.momentum)),
            ("weight_decay", float_in(0.0)), ("warmup_epochs", int_in(0, epochs - 1)),
            ("label_smoothing", float_in(0.0, 1.0, high_open=True)), ("amp", one_of(AMP_CHOICES)),
            ("seed", int_in(0, MAX_SEED)),
        ]

    def record(self) -> dict[str, Any]:
        """The fields for the resume record (a callable ``init`` by its name)."""
        out = self.to_dict()
        if not isinstance(self.init, str):
            out["init"] = getattr(self.init, "__name__", "callable")
        return out


def _nesterov_needs_momentum(momentum: Any):
    def check(key: str, value: Any) -> None:
        if value and isinstance(momentum, (int, float)) and momentum <= 0:
            fail(key, "false when retrain.momentum is 0 (nesterov needs momentum > 0)", value)
    return check
