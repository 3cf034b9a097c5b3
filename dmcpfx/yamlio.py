"""YAML reading with ``yaml.safe_load`` semantics, where a duplicate key is an error.

PyYAML keeps the last of two equal keys, so a second ``search:`` section silently replaces
the first. :func:`safe_load` raises :class:`DuplicateKeyError` naming the key and its line.
Anchors and aliases (``&a``, ``*a``, ``<<: *a``) have no use in a config or an arch file and
let a few lines expand to gigabytes (the "billion laughs"): :class:`AliasError`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["UniqueKeyLoader", "DuplicateKeyError", "AliasError", "load_file", "safe_load"]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice."""


class AliasError(yaml.composer.ComposerError):
    """The document uses a YAML anchor or alias."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate mapping keys, anchors and aliases."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            line = event.start_mark.line + 1
            raise AliasError(None, None, f"YAML {kind} {'*' if kind == 'alias' else '&'}{event.anchor} on line "
                             f"{line}: anchors and aliases are not allowed here", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(
                        None, None, f"duplicate key {key!r} (line {line}; first on line {seen[key]})",
                        key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``, but a duplicate key raises :class:`DuplicateKeyError`."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def first_line(exc: yaml.YAMLError) -> str:
    """A one-line description of a YAML error (the duplicate key, or the parser's problem)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem:
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None and "line" not in problem else ""
        return f"{problem}{where}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load_file(path: str | os.PathLike, what: str, error: type[Exception], invalid: str = "is not valid YAML") -> Any:
    """:func:`safe_load` of the file at ``path``; a missing, unreadable or invalid file raises
    ``error`` with one line naming the file (``what``: e.g. ``"arch file"``)."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        return safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{p} {invalid}: {first_line(exc)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {p}: {exc}") from exc
