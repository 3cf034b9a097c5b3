"""Model specs on the command line: ``torchvision:NAME``, ``timm:NAME`` or ``package.module:factory``."""
from __future__ import annotations

import importlib
import inspect

from torch import nn

from .errors import ConfigError


def load_model(spec: str, **kwargs) -> nn.Module:
    """Build the model named by ``spec`` (no pretrained weights are downloaded).

    ``torchvision:resnet50`` calls ``torchvision.models.get_model("resnet50", weights=None)``
    (segmentation and detection builders also get ``weights_backbone=None``);
    ``timm:resnet50`` calls ``timm.create_model("resnet50", pretrained=False)`` (the
    optional ``timm`` extra);
    ``package.module:factory`` imports the module and calls ``factory(**kwargs)``.
    """
    if ":" not in spec:
        raise ConfigError(f"model spec {spec!r} must look like 'torchvision:NAME', 'timm:NAME' or 'package.module:factory'")
    source, _, name = spec.partition(":")
    if source == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        if name not in known:
            raise ConfigError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())")
        builder = torchvision.models.get_model_builder(name)
        if "weights_backbone" in inspect.signature(builder).parameters:
            kwargs.setdefault("weights_backbone", None)
        return builder(weights=None, **kwargs)
    if source == "timm":
        return _timm_model(name, kwargs)
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


def _timm_model(name: str, kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError("model spec 'timm:...' needs timm: pip install 'dmcpfx[timm]'") from None
    if not timm.list_models(name):
        raise ConfigError(f"unknown timm model {name!r} (see timm.list_models())")
    return timm.create_model(name, pretrained=False, **kwargs)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"input shape {text!r} must be comma-separated integers, e.g. 1,3,224,224") from exc
    if not shape or any(v < 1 for v in shape):
        raise ConfigError(f"input shape {text!r} must be positive integers")
    return shape
