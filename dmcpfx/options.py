"""Options objects: one dataclass per stage (search, derive, retrain).

Each is at once the stage's config section (``search:``, ``derive:``, ``retrain:`` in a YAML
file, typed by its annotations), the keyword options of the stage's Python function
(``dmcpfx.search(space, loader, lr=0.1)`` or ``dmcpfx.search(space, loader, options)``) and
what its resume record stores. Defaults live in the dataclass only; the ranges live in its
``rules()``, checked once by :meth:`Options.validate` (the config loader checks the types,
the stage function calls :meth:`Options.build`).

A rule is ``(field name, check)``; the checks here raise :class:`~dmcpfx.errors.ConfigError`
naming the key as ``section.name``, the way a config file spells it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from typing import Any, Callable, Iterable, Mapping, TypeVar

from .errors import ConfigError

__all__ = ["Options", "MAX_EPOCHS", "MAX_SEED", "fail", "is_int", "int_in", "float_in", "one_of", "boolean", "closest"]

MAX_EPOCHS = 1_000_000  # far above any real schedule; 1e30 would never end
MAX_SEED = 2**32 - 1  # the largest seed numpy (and the stratified subset drawn with it) accepts
T = TypeVar("T", bound="Options")
Check = Callable[[str, Any], None]  # (key, value) -> None or ConfigError


def fail(key: str, rule: str, value: Any) -> None:
    """ConfigError ``config key 'KEY' must be RULE, got VALUE``."""
    raise ConfigError(f"config key {key!r} must be {rule}, got {value!r}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_in(low: int, high: int | None = None, *, optional: bool = False) -> Check:
    """An integer in ``[low, high]`` (``high`` None: no upper end); None allowed when ``optional``."""
    def check(key: str, value: Any) -> None:
        if value is None and optional:
            return
        rule = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        if not is_int(value) or value < low or (high is not None and value > high):
            fail(key, rule + (" or null" if optional else ""), value)
    return check


def float_in(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
             high_key: str | None = None) -> Check:
    """A finite number in the interval (open or closed at each end; ``high`` None: no upper end;
    ``high_key``: the config key ``high`` comes from, named in the error)."""
    def check(key: str, value: Any) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low)
        if high is not None:
            ok = ok and (value < high if high_open else value <= high)
        if not ok:
            left, right = "(" if low_open else "[", ")" if high_open else "]"
            upper = f"{high_key} = {high}" if high_key else f"{high}"
            rule = f"a finite number in {left}{low}, {upper}{right}" if high is not None else \
                f"a finite number {'>' if low_open else '>='} {low}"
            fail(key, rule, value)
    return check


def one_of(choices: Iterable[Any]) -> Check:
    choices = tuple(choices)

    def check(key: str, value: Any) -> None:
        if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
            fail(key, " or ".join("null" if c is None else repr(c) for c in choices), value)
    return check


def boolean(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        fail(key, "true or false", value)


def closest(key: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``key``, or ''."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Options:
    """Base of the options dataclasses. Subclasses set ``section`` (the config section) and
    ``aliases`` (old keyword -> field, accepted with a DeprecationWarning) as plain class
    attributes, and implement :meth:`rules`."""

    section = "options"
    aliases = {}  # type: Mapping[str, str]  (not an annotation: it would read as a config key)

    def rules(self) -> list[tuple[str, Check]]:
        """``(field, check)`` pairs, in the order the keys are reported."""
        return []

    def validate(self) -> None:
        """Check every field against its rule; ConfigError naming the first bad key."""
        for name, check in self.rules():
            check(f"{self.section}.{name}", getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (YAML- and checkpoint-safe when the values are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def build(cls: type[T], options: T | None, overrides: Mapping[str, Any], caller: str) -> T:
        """``options`` (default: the defaults) updated by the keyword ``overrides`` of
        ``caller``, validated. An unknown keyword is a TypeError naming it (and the closest
        option); an old keyword name works with a DeprecationWarning."""
        if options is None:
            options = cls()
        elif not isinstance(options, cls):
            raise TypeError(f"{caller}(): options must be a {cls.__name__}, got {type(options).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            name = cls.aliases.get(key, key)
            if name != key:
                warnings.warn(f"{caller}({key}=...) is deprecated; use {name}=...", DeprecationWarning, stacklevel=3)
            if name not in names:
                raise TypeError(f"{caller}() got an unexpected keyword argument {key!r}{closest(key, names)}")
            changes[name] = value
        built = dataclasses.replace(options, **changes)  # type: ignore[type-var]
        built.validate()
        return built
