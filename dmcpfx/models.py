"""Model specs on the command line: ``torchvision:NAME`` or ``package.module:factory``."""
from __future__ import annotations

import importlib

from torch import nn

from .errors import ConfigError


def load_model(spec: str, **kwargs) -> nn.Module:
    """Build the model named by ``spec`` (no pretrained weights are downloaded).

    ``torchvision:resnet50`` calls ``torchvision.models.get_model("resnet50", weights=None)``;
    ``package.module:factory`` imports the module and calls ``factory(**kwargs)``.
    """
    if ":" not in spec:
        raise ConfigError(f"model spec {spec!r} must look like 'torchvision:NAME' or 'package.module:factory'")
    source, _, name = spec.partition(":")
    if source == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        if name not in known:
            raise ConfigError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())")
        return torchvision.models.get_model(name, weights=None, **kwargs)
    try:
        module = importlib.import_module(source)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {source!r} of model spec {spec!r}: {exc}") from exc
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"module {source!r} has no callable {name!r} (model spec {spec!r})")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"input shape {text!r} must be comma-separated integers, e.g. 1,3,224,224") from exc
    if not shape or any(v < 1 for v in shape):
        raise ConfigError(f"input shape {text!r} must be positive integers")
    return shape
