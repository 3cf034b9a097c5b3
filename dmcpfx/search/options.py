"""The options of the search and derive stages: :class:`SearchOptions` and :class:`DeriveOptions`.

Each dataclass is the config section (``search:`` / ``derive:``), the keyword options of
:func:`dmcpfx.search` / :func:`dmcpfx.derive`, and (search) what its checkpoint stores for a
resume. The defaults below are the only ones: the digits demo's, with the official DMCP
recipe's values in ``examples/imagenet_*.yaml`` (official ResNet-50: ``lr`` 0.5 -> 0.08).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from ..amp import AMP_CHOICES
from ..options import MAX_EPOCHS, MAX_SEED, Options, boolean, fail, float_in, int_in, one_of
from .alpha_init import ALPHA_INITS
from .bn import BN_STATS
from .latency_measure import BACKENDS
from .schedule import MARKOV_SCHEDULES

__all__ = ["SearchOptions", "DeriveOptions", "BUDGET_METRICS", "RESUME_FREE"]

BUDGET_METRICS = ("flops", "params", "latency")  # "flops" counts MACs (one multiply-add per MAC)
#: ``slimmable``: sliced sub-nets, masked ones, or the faster of the two on the device
SLIMMABLE_CHOICES = (True, False, "auto")
#: search options that may change when a run is resumed (they change no result)
RESUME_FREE = ("log_interval",)


def _table_path(metric: Any) -> Any:
    """``latency_table``: a file path (a non-empty string), required when the budget is a latency."""
    def check(key: str, value: Any) -> None:
        if value is None and metric == "latency":
            fail(key, "the path of a latency table (JSON, from dmcpfx.latency_table) when budget_metric is "
                      "'latency'", value)
        if value is not None and not (isinstance(value, str) and value.strip()):
            fail(key, "null or the path of a latency table (JSON)", value)
    return check


def _divisor(key: str, value: Any) -> None:
    """An integer >= 1, ``"auto"`` or null."""
    if value is None or value == "auto":
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        fail(key, "an integer >= 1, 'auto' or null", value)


def check_slice_buckets(key: str, value: Any) -> None:
    """0 (exact widths) or an integer >= 2 (min and full are always buckets)."""
    if not (isinstance(value, int) and not isinstance(value, bool) and (value == 0 or 2 <= value <= 1000)):
        fail(key, "0 (slice to the exact widths) or an integer from 2 to 1000 (buckets per gate)", value)


def _target(key: str, value: Any) -> None:
    """A ratio/absolute number > 0 or a string like ``"50%"``, ``"2G"`` (parsed against the model later)."""
    if isinstance(value, str) and value.strip():
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return
    fail(key, "a positive number (ratio or count) or a string like '50%' or '2G'", value)


@dataclass
class SearchOptions(Options):
    """DMCP search (DESIGN.md section 5).

    ``target``: the budget, a ratio of the full model (``0.5``, ``"50%"``) or absolute
    (``"2G"``, ``3e8``) MACs per image (a parameter count when ``budget_metric: params``;
    milliseconds per batch, ``"12ms"``, when ``budget_metric: latency``, predicted by the latency
    table at ``latency_table``, a JSON file made by ``dmcpfx.latency_table`` for this space; the
    pipeline measures it there when the file does not exist yet, on ``latency_backend`` (ort-cpu |
    cuda) at ``latency_batch`` images with ``latency_threads`` threads).
    ``epochs``: total; the first ``warmup_epochs`` (null: half) train the weights only.
    ``divisor``/``min_ratio``/``step``: the gates' candidate widths (read by ``instrument``);
    ``divisor: auto`` is the channel multiple that the ``latency_backend`` rewards (ort-cpu: ONNX
    Runtime's NCHWc block on this CPU, probed; cuda: 8), null is ``auto`` under a latency budget
    and 1 otherwise (:attr:`resolved_divisor`).
    Weights: SGD nesterov ``lr`` cosine to ``min_lr`` (at most ``lr``) per step,
    ``lr_warmup_steps`` (fewer than the run's weight steps) from ``lr_warmup_start``,
    ``momentum``, ``weight_decay`` (conv/linear weights only).
    Alphas: SGD nesterov ``arch_lr`` cosine to ``arch_min_lr`` (at most ``arch_lr``) over the
    architecture phase, ``arch_momentum``. Loss: ``CE + budget_weight * budget_loss(E, T,
    budget_band)``, ``budget_band`` in (0, 1) (at 1 the band ``[T, T]`` is empty and the loss has
    no minimum).
    ``num_random``: random sub-nets per weight step besides max and min; distillation at
    ``distill_temperature``; ``label_smoothing`` of the max net's CE. ``calib_batches``:
    training batches for every BatchNorm re-estimation. ``markov_schedule``: official
    (``1 - markov_decay^step``) | linear (to ``markov_prob_final``). ``alpha_init``: budget
    (the uniform network at 99% of the target; this project's default) | zero (official).
    ``bn_stats``: max | all (which weight-step forwards update the BN statistics).
    ``slimmable``: run the min/random sub-nets with sliced weights where possible (true), with
    masks (false), or auto: sliced on the CPU, masked on CUDA (the faster of the two as measured).
    ``slice_buckets``: 0 slices each sub-net to its exact widths; ``k >= 2`` slices to the smallest
    of ``k`` widths of each gate's candidate grid that holds the width and masks the rest of the
    bucket (the same function; at most ``k * k`` shapes per convolution, for cached GPU plans).
    ``amp``: null | bf16 | fp16. ``seed``: everything random (0 to 2**32 - 1). ``log_interval``: steps per
    ``step`` record of metrics.jsonl.
    """

    target: Union[str, float, int] = "50%"
    epochs: int = 8
    warmup_epochs: Union[int, None] = None
    divisor: Union[int, str, None] = None
    min_ratio: float = 0.1
    step: float = 0.1
    lr: float = 0.2
    min_lr: float = 0.01
    lr_warmup_steps: int = 0
    lr_warmup_start: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 4e-5
    arch_lr: float = 0.5
    arch_min_lr: float = 0.1
    arch_momentum: float = 0.9
    budget_weight: float = 0.1
    budget_band: float = 0.95
    budget_metric: str = "flops"
    latency_table: Union[str, None] = None
    latency_backend: str = "ort-cpu"
    latency_batch: int = 16
    latency_threads: int = 1
    num_random: int = 2
    distill_temperature: float = 1.0
    label_smoothing: float = 0.0
    calib_batches: int = 5
    markov_schedule: str = "official"
    markov_decay: float = 0.9999
    markov_prob_final: float = 1.0
    alpha_init: str = "budget"
    bn_stats: str = "max"
    slimmable: Union[bool, str] = "auto"
    slice_buckets: int = 0
    amp: Union[str, None] = None
    channels_last: bool = False
    seed: int = 0
    log_interval: int = 50

    section = "search"
    aliases = {"target_flops": "target"}

    def rules(self) -> list:
        epochs = self.epochs if isinstance(self.epochs, int) else MAX_EPOCHS
        lr = self.lr if isinstance(self.lr, (int, float)) else math.inf
        arch_lr = self.arch_lr if isinstance(self.arch_lr, (int, float)) else math.inf
        return [
            ("target", _target), ("epochs", int_in(1, MAX_EPOCHS)),
            ("warmup_epochs", int_in(0, epochs, optional=True)),
            ("divisor", _divisor), ("min_ratio", float_in(0.0, 1.0, low_open=True)),
            ("step", float_in(0.0, 1.0, low_open=True)),
            ("lr", float_in(0.0, low_open=True)), ("min_lr", float_in(0.0, lr, high_key="search.lr")),
            ("lr_warmup_steps", int_in(0)), ("lr_warmup_start", float_in(0.0, lr, high_key="search.lr")),
            ("momentum", float_in(0.0, 1.0, high_open=True)), ("weight_decay", float_in(0.0)),
            ("arch_lr", float_in(0.0, low_open=True)), ("arch_min_lr", float_in(0.0, arch_lr, high_key="search.arch_lr")),
            ("arch_momentum", float_in(0.0, 1.0, high_open=True)),
            ("budget_weight", float_in(0.0)), ("budget_band", float_in(0.0, 1.0, low_open=True, high_open=True)),
            ("budget_metric", one_of(BUDGET_METRICS)), ("latency_table", _table_path(self.budget_metric)),
            ("latency_backend", one_of(BACKENDS)), ("latency_batch", int_in(1, 4096)),
            ("latency_threads", int_in(1, 256)), ("num_random", int_in(0)),
            ("distill_temperature", float_in(0.0, low_open=True)),
            ("label_smoothing", float_in(0.0, 1.0, high_open=True)), ("calib_batches", int_in(0)),
            ("markov_schedule", one_of(MARKOV_SCHEDULES)), ("markov_decay", float_in(0.0, 1.0, low_open=True)),
            ("markov_prob_final", float_in(0.0, 1.0)), ("alpha_init", one_of(ALPHA_INITS)),
            ("bn_stats", one_of(BN_STATS)), ("slimmable", one_of(SLIMMABLE_CHOICES)),
            ("slice_buckets", check_slice_buckets), ("amp", one_of(AMP_CHOICES)),
            ("channels_last", boolean), ("seed", int_in(0, MAX_SEED)), ("log_interval", int_in(1)),
        ]

    @property
    def resolved_divisor(self) -> int:
        """``divisor`` as a number: ``auto`` probes the latency backend; null is ``auto`` under a
        latency budget, else 1."""
        from .latency_measure import runtime_divisor

        if self.divisor == "auto" or (self.divisor is None and self.budget_metric == "latency"):
            return runtime_divisor(self.latency_backend)
        return 1 if self.divisor is None else int(self.divisor)

    @property
    def resolved_warmup_epochs(self) -> int:
        """``warmup_epochs``, or half the epochs when it is null."""
        return self.epochs // 2 if self.warmup_epochs is None else int(self.warmup_epochs)


@dataclass
class DeriveOptions(Options):
    """Concrete widths from a searched space.

    ``mode``: expected (``E[c]`` rounded + the smallest change that meets the band) |
    direct (``samples`` in-band Markov samples ranked on ``holdout_images`` (at least 1; a run
    holds out at most a fifth of its training set) training images held out of the search, never
    the reported split; at most ``max_draws`` draws; ``val_batches``:
    batches of that held-out loader per sample, null: all). ``rounding`` (expected): count (each
    ``E[c]`` down or up to a neighbouring valid width so that the count tracks the search's E;
    deviation) | nearest (each to its nearest valid width, the official ``round(E[c])``).
    ``tolerance``: relative band around the target. ``budget_band`` (expected): a search that
    ended inside its budget band ``[budget_band * T, T]`` reached its budget, so the arch stays at
    its E (the band's lower edge drops to ``E * (1 - tolerance)``): derive only rounds, as the
    official code does; below it, derive fills up to the target band and warns. ``target``,
    ``seed``, ``calib_batches``, ``budget_metric``, ``latency_table``, ``budget_band``: null takes
    the search's (``SearchOptions``) value.
    """

    mode: str = "expected"
    rounding: str = "count"
    tolerance: float = 0.01
    samples: int = 5
    holdout_images: int = 256
    max_draws: int = 20000
    val_batches: Union[int, None] = None
    target: Union[str, float, int, None] = None
    seed: Union[int, None] = None
    calib_batches: Union[int, None] = None
    budget_metric: Union[str, None] = None
    latency_table: Union[str, None] = None
    budget_band: Union[float, None] = None

    section = "derive"
    aliases = {"target_flops": "target"}

    def rules(self) -> list:
        return [
            ("mode", one_of(("expected", "direct"))), ("rounding", one_of(("count", "nearest"))),
            ("tolerance", float_in(0.0, 1.0, low_open=True, high_open=True)),
            ("samples", int_in(1)), ("holdout_images", int_in(1 if self.mode == "direct" else 0)),
            ("max_draws", int_in(1)),
            ("val_batches", int_in(1, optional=True)),
            ("target", lambda k, v: None if v is None else _target(k, v)),
            ("seed", int_in(0, MAX_SEED, optional=True)), ("calib_batches", int_in(0, optional=True)),
            ("budget_metric", one_of((None, *BUDGET_METRICS))), ("latency_table", _table_path(None)),
            ("budget_band", lambda k, v: None if v is None else float_in(0.0, 1.0, low_open=True)(k, v)),
        ]

    def resolved(self, search: SearchOptions | None = None) -> "DeriveOptions":
        """A copy with every null taken from ``search`` (default: the search defaults; the
        target only from a given ``search``: a derive without a target is an error, not 50%)."""
        import dataclasses

        s = search if search is not None else SearchOptions()
        return dataclasses.replace(
            self, target=s.target if self.target is None and search is not None else self.target,
            seed=s.seed if self.seed is None else self.seed,
            calib_batches=s.calib_batches if self.calib_batches is None else self.calib_batches,
            budget_metric=s.budget_metric if self.budget_metric is None else self.budget_metric,
            latency_table=s.latency_table if self.latency_table is None else self.latency_table,
            budget_band=s.budget_band if self.budget_band is None else self.budget_band,
        )
