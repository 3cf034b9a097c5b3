"""Run configuration: dataclasses loaded from YAML, with ``--set key=value`` overrides.

A config file has up to six sections (every key optional; the defaults are the digits demo)::

    model:   {spec: dmcpfx.demo_models:small_resnet, input_shape: null, num_classes: null, kwargs: {}}
    data:    {kind: digits, root: null, image_size: 32, batch_size: 64, train_subset: null, ...}
    search:  {target: 50%, epochs: 8, divisor: 1, lr: 0.2, ...}    (dmcpfx.search.options.SearchOptions)
    derive:  {mode: expected, tolerance: 0.01, samples: 5, ...}   (dmcpfx.search.options.DeriveOptions)
    retrain: {epochs: 8, lr: 0.1, init: scratch, ...}             (dmcpfx.product.retrain_options.RetrainOptions)
    run:     {name: digits_demo, dir: runs, device: null, latency_runs: 50, threads: 1, ...}

Overrides use dotted keys and YAML values: ``--set search.epochs=2 --set data.train_subset=256``.
An unknown key (in the file or an override) is a :class:`~dmcpfx.errors.ConfigError` naming
the key and the closest valid key; a value of the wrong type is one too.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import yaml

from .errors import ConfigError
from .options import closest as _closest
from .product.retrain_options import RetrainOptions
from .search.options import DeriveOptions, SearchOptions
from .yamlio import first_line, load_file, safe_load

__all__ = ["Config", "load_config", "apply_overrides", "config_to_dict"]


@dataclass
class ModelConfig:
    """``spec``: ``torchvision:NAME`` or ``package.module:factory``. ``input_shape``: example
    input ``[1, C, H, W]`` in pixels (null: the data's shape). ``num_classes``: passed to the
    factory (null: the data's class count). ``kwargs``: further factory arguments."""

    spec: str = "dmcpfx.demo_models:small_resnet"
    input_shape: Union[list, None] = None
    num_classes: Union[int, None] = None
    kwargs: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """``kind``: digits | fashion-mnist | imagefolder | synthetic. ``root``: the ImageFolder tree
    (``train/``, ``val/``), or the folder of Fashion-MNIST's idx files (null: the Debian package's
    /usr/share/datasets/fashion-mnist). ``image_size``: side in pixels. ``batch_size``: per
    process. ``train_subset``: digits and fashion-mnist, keep that many training images (a fixed
    stratified choice seeded by ``search.seed``). ``augment``: digits and fashion-mnist, random
    shifts. ``workers``: loader processes (imagefolder). ``steps``: synthetic batches per epoch.
    ``num_classes``: synthetic only."""

    kind: str = "digits"
    root: Union[str, None] = None
    image_size: int = 32
    batch_size: int = 64
    train_subset: Union[int, None] = None
    augment: bool = False
    workers: int = 8
    steps: int = 20
    num_classes: int = 1000


# the stage sections are the stages' options objects (their defaults and ranges live there)
SearchConfig = SearchOptions
DeriveConfig = DeriveOptions
RetrainConfig = RetrainOptions


@dataclass
class RunConfig:
    """``name``: run directory ``<dir>/<name>``. ``device``: null = cuda if available.
    ``latency_runs``: ONNX Runtime timings per model for the report (median, batch 1).
    ``resume``: continue an interrupted search/retrain in the same run directory.
    ``threads``: torch CPU threads per process (null: torch's default). Default 1: fastest for
    the small demo models (2 threads were 3-60x slower on a busy 2-core machine)."""

    name: str = "digits_demo"
    dir: str = "runs"
    device: Union[str, None] = None
    latency_runs: int = 50
    resume: bool = False
    progress: bool = True
    threads: Union[int, None] = 1


@dataclass
class Config:
    """The whole run configuration (see the module docstring)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchOptions = field(default_factory=SearchOptions)
    derive: DeriveOptions = field(default_factory=DeriveOptions)
    retrain: RetrainOptions = field(default_factory=RetrainOptions)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def run_dir(self) -> Path:
        """``<run.dir>/<run.name>``."""
        return Path(self.run.dir) / self.run.name


def _allowed(tp: Any) -> tuple[type, ...]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return tuple(t for a in typing.get_args(tp) for t in _allowed(a))
    if tp is type(None):
        return (type(None),)
    return (origin or tp,)


#: a number YAML 1.1 leaves as a string (``4e-5`` has no dot): read as the float it spells
_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _check_value(dotted: str, value: Any, tp: Any) -> Any:
    allowed = _allowed(tp)
    if float in allowed and str not in allowed and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        return float(value)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value) if int not in allowed else value
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, allowed)
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        raise ConfigError(f"config key {dotted!r} must be {names}, got {value!r}")
    return value


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if parts[0] not in sections:
        raise ConfigError(f"unknown config key {dotted!r}{_closest(parts[0], sections)}")
    section = getattr(cfg, parts[0])
    if len(parts) == 1:
        if not isinstance(value, dict):
            raise ConfigError(f"config section {dotted!r} must be a mapping, got {value!r}")
        for k, v in value.items():
            _set(cfg, f"{dotted}.{k}", v)
        return
    hints = typing.get_type_hints(type(section))
    key = parts[1]
    if key not in hints:
        valid = [f"{parts[0]}.{k}" for k in hints]
        raise ConfigError(f"unknown config key {dotted!r}{_closest(f'{parts[0]}.{key}', valid)}")
    if len(parts) > 2:
        if hints[key] is not dict:
            raise ConfigError(f"config key {'.'.join(parts[:2])!r} is not a mapping (got {dotted!r})")
        getattr(section, key)[".".join(parts[2:])] = value
        return
    setattr(section, key, _check_value(dotted, value, hints[key]))


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``key=value`` strings (dotted keys, values parsed with ``yaml.safe_load``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. search.epochs=2")
        try:
            value = safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({first_line(exc)})") from exc
        _set(cfg, key.strip(), value)
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """The defaults, updated by the YAML file at ``path`` (if any), then by ``overrides``."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        doc = load_file(p, "config file", ConfigError)
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{p}: expected a mapping of sections (model, data, search, ...)")
        try:
            for key, value in doc.items():
                _set(cfg, str(key), value)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from exc
    return apply_overrides(cfg, overrides)


def config_to_dict(cfg: Config) -> dict:
    """A plain dict (YAML-safe) of ``cfg``."""
    return dataclasses.asdict(cfg)
