"""Model specs: ``torchvision:NAME``, ``timm:NAME``, ``package.module:factory`` or ``path/to/file.py:factory``.

A ``package.module`` is imported from the installed environment only: dmcpfx never puts the
working directory on ``sys.path`` (a stray ``onnxruntime.py`` there must not be imported).
A file is named explicitly, ``path/to/file.py:factory``, and loaded from that path.
``examples.models`` is an alias of :mod:`dmcpfx.demo_models` (the demo models).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from torch import nn

from .errors import ConfigError

__all__ = ["load_model", "parse_shape", "check_input_shape", "MAX_INPUT_ELEMENTS"]

_ALIASES = {"examples.models": "dmcpfx.demo_models"}
MAX_INPUT_ELEMENTS = 1 << 28  # 1 GiB of float32: far above any example input a trace needs


def _import_file(path_text: str, spec: str) -> ModuleType:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"model spec {spec!r}: file {path} not found")
    name = f"dmcpfx_user_model_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"model spec {spec!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        with _user_code():
            module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's file: report it in one line
        del sys.modules[name]
        raise ConfigError(f"model spec {spec!r}: importing {path} raised {_raised(exc)}") from exc
    return module


def _import_module(source: str, spec: str) -> ModuleType:
    try:
        with _user_code():
            return importlib.import_module(_ALIASES.get(source, source))
    except ImportError as exc:
        raise ConfigError(f"cannot import module {source!r} of model spec {spec!r}: {exc} "
                          f"(install it, or name a file: path/to/file.py:factory)") from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the module's own code raised while importing
        raise ConfigError(f"model spec {spec!r}: importing {source!r} raised {_raised(exc)}") from exc


def _user_code():
    """While user code runs (an import, a factory): its ``print`` goes to stderr, so that
    ``analyze --json`` stays valid JSON on stdout."""
    return contextlib.redirect_stdout(sys.stderr)


def _check_factory(factory, spec: str) -> None:
    """A spec names an ``nn.Module`` class or a Python function, never a builtin or another
    callable (``sys:exit``, ``os:abort`` are refused before anything is called)."""
    target = factory.func if isinstance(factory, functools.partial) else factory
    if inspect.isclass(target):
        if issubclass(target, nn.Module):
            return
        raise ConfigError(f"model spec {spec!r} names the class {target.__name__}, which is not an nn.Module")
    if inspect.isfunction(target) or (inspect.ismethod(target) and inspect.isfunction(target.__func__)):
        return
    raise ConfigError(f"model spec {spec!r} names {type(target).__name__} {getattr(target, '__name__', target)!r}: a "
                      f"spec must name an nn.Module class or a Python function returning one")


def _raised(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r})"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _call_factory(factory, spec: str, kwargs: dict) -> nn.Module:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            accepted = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
            raise ConfigError(f"model factory {spec!r} cannot be called with arguments {sorted(kwargs)}: {exc} "
                              f"(it takes {accepted}; set them with model.kwargs)") from exc
    try:
        with _user_code():
            model = factory(**kwargs)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the factory is user code: one line naming it
        raise ConfigError(f"model factory {spec!r} raised {_raised(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def load_model(spec: str, **kwargs) -> nn.Module:
    """Build the model named by ``spec`` (no pretrained weights are downloaded).

    ``torchvision:resnet50`` calls ``torchvision.models.get_model("resnet50", weights=None)``
    (segmentation and detection builders also get ``weights_backbone=None``);
    ``timm:resnet50`` calls ``timm.create_model("resnet50", pretrained=False)`` (the
    optional ``timm`` extra);
    ``package.module:factory`` imports the installed module and calls ``factory(**kwargs)``;
    ``path/to/file.py:factory`` loads that file. A factory that raises, or does not take
    ``kwargs``, is a :class:`ConfigError` naming the spec.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"model spec {spec!r} must look like 'torchvision:NAME', 'timm:NAME', 'package.module:factory' "
                          f"or 'path/to/file.py:factory'")
    source, _, name = spec.rpartition(":")
    if source == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        if name not in known:
            raise ConfigError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())")
        builder = torchvision.models.get_model_builder(name)
        if "weights_backbone" in inspect.signature(builder).parameters:
            kwargs.setdefault("weights_backbone", None)
        return _call_factory(lambda **kw: builder(weights=None, **kw), spec, kwargs)
    if source == "timm":
        return _call_factory(lambda **kw: _timm_model(name, kw), spec, kwargs)
    module = _import_file(source, spec) if source.endswith(".py") else _import_module(source, spec)
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"module {source!r} has no callable {name!r} (model spec {spec!r})")
    _check_factory(factory, spec)
    return _call_factory(factory, spec, kwargs)


def check_input_shape(shape, what: str = "input shape") -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints, small enough to allocate (else :class:`ConfigError`)."""
    if not isinstance(shape, (list, tuple)) or not shape or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ConfigError(f"{what} must be positive integers like [1, 3, 224, 224], got {shape!r}")
    numel = 1
    for v in shape:
        numel *= v
    if numel > MAX_INPUT_ELEMENTS:
        raise ConfigError(f"{what} {list(shape)} has {numel:,} elements, more than the {MAX_INPUT_ELEMENTS:,} "
                          f"an example input may have; use batch 1 and the training resolution")
    return tuple(shape)


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
    return check_input_shape(shape, f"input shape {text!r}")
