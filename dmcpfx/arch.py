"""The arch YAML: learned widths per group (DESIGN.md section 6).

```yaml
format: dmcpfx-arch/1
model: torchvision.models.resnet50
input_shape: [1, 3, 224, 224]
flops: {full: 4089184256, pruned: 2011111111, target: 2.0e9}
params: {full: 25557032, pruned: 14000000}
latency: {full: 632.6, pruned: 310.2, target: 316.3, backend: ort-cpu, batch: 16, threads: 2}  # latency budgets only
groups:
  conv1: {channels: 52, of: 64}
```
Groups not listed keep their full width. ``latency`` (ms per batch, the latency table's
prediction on its backend) is written only under a latency budget and is informative: it
holds on the machine that measured the table. Loading validates the file's structure;
:func:`validate_widths` checks widths against a model's :class:`ChannelGraph`.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

from .errors import ArchError
from .fileio import write_text_atomic
from .yamlio import load_file

FORMAT = "dmcpfx-arch/1"
TOP_KEYS = ("format", "model", "input_shape", "flops", "params", "latency", "groups")


@dataclass
class Arch:
    """Widths per group id, plus the metadata of the file they came from."""

    widths: dict[str, int]
    full_widths: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    input_shape: list | None = None
    flops: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    source: str | None = None
    latency: dict = field(default_factory=dict)


def save_arch(
    path: str | os.PathLike,
    widths: Mapping[str, int],
    space_or_graph,
    *,
    model: str | None = None,
    target_flops: float | None = None,
    latency: Mapping | None = None,
) -> Path:
    """Write ``widths`` as an arch YAML (atomically) with exact full/pruned FLOPs and params.

    ``space_or_graph``: a :class:`~dmcpfx.search.space.SearchSpace` or a
    :class:`~dmcpfx.analysis.channel_graph.ChannelGraph` of the model the widths belong to.
    """
    graph = getattr(space_or_graph, "graph", space_or_graph)
    clean = validate_widths(widths, graph)
    shapes = [list(s) for s in graph.input_shapes]
    doc = {
        "format": FORMAT,
        "model": model or graph.model_name,
        "input_shape": shapes[0] if len(shapes) == 1 else shapes,
        "flops": {
            "full": int(graph.full_flops),
            "pruned": int(graph.flops(clean)),
            "target": None if target_flops is None else float(target_flops),
        },
        "params": {"full": int(graph.full_params), "pruned": int(graph.params(clean))},
        **({"latency": dict(latency)} if latency else {}),
        "groups": {gid: {"channels": int(clean[gid]), "of": graph.groups[gid].width} for gid in graph.prunable},
    }
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)
    write_text_atomic(path, text)
    return Path(path)


def load_arch(path: str | os.PathLike) -> Arch:
    """Read and structurally validate an arch YAML; errors name the file and key."""
    from .api_checks import check_path

    check_path(path, "load_arch", "path")
    p = Path(path)
    doc = load_file(p, "arch file", ArchError)
    if not isinstance(doc, dict):
        raise ArchError(f"{p}: expected a mapping with keys format/groups, got {type(doc).__name__}")
    unknown = sorted(str(k) for k in doc if k not in TOP_KEYS)
    if unknown:
        raise ArchError(f"{p}: unknown top-level key(s) {unknown} (an arch file has {', '.join(TOP_KEYS)})")
    fmt = doc.get("format")
    if fmt != FORMAT:
        raise ArchError(f"{p}: unsupported format {fmt!r} (expected {FORMAT!r})")
    _check_metadata(p, doc)
    groups = doc.get("groups")
    if not isinstance(groups, dict):
        raise ArchError(f"{p}: key 'groups' must be a mapping of group id -> {{channels, of}}")
    widths, full = {}, {}
    for gid, entry in groups.items():
        if isinstance(entry, dict):
            unknown = set(entry) - {"channels", "of"}
            if unknown:
                raise ArchError(f"{p}: group '{gid}' has unknown keys {sorted(unknown)} (expected channels, of)")
            channels, of = entry.get("channels"), entry.get("of")
        else:
            channels, of = entry, None
        if not _is_int(channels):
            raise ArchError(f"{p}: group '{gid}': 'channels' must be an integer, got {channels!r}")
        if of is not None and not _is_int(of):
            raise ArchError(f"{p}: group '{gid}': 'of' must be an integer, got {of!r}")
        widths[str(gid)] = int(channels)
        if of is not None:
            full[str(gid)] = int(of)
    return Arch(
        widths=widths,
        full_widths=full,
        model=doc.get("model"),
        input_shape=doc.get("input_shape"),
        flops=doc.get("flops") or {},
        params=doc.get("params") or {},
        source=str(p),
        latency=doc.get("latency") or {},
    )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value) -> bool:
    """A finite number >= 0 (not a bool): a MACs, params or milliseconds figure."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


#: what each metadata block of an arch file may hold: key -> (check, what it must be)
_COUNT = (_is_count, "a finite number >= 0")
METADATA_KEYS = {
    "flops": {"full": _COUNT, "pruned": _COUNT, "target": _COUNT},
    "params": {"full": _COUNT, "pruned": _COUNT},
    "latency": {"full": _COUNT, "pruned": _COUNT, "target": _COUNT,
                "backend": (lambda v: isinstance(v, str), "a string"),
                "batch": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
                "threads": (lambda v: _is_int(v) and v >= 1, "an integer >= 1")},
}


def _is_shape(value) -> bool:
    """One input's shape: a list of integers >= 1 (empty for a scalar input)."""
    return isinstance(value, list) and all(_is_int(v) and v >= 1 for v in value)


def _check_metadata(p: Path, doc: Mapping) -> None:
    """The informative keys of an arch file (``model``, ``input_shape``, ``flops``, ``params``,
    ``latency``): each absent, null or of its type; a figure is finite (a NaN count is an error,
    not a pass)."""
    if doc.get("model") is not None and not isinstance(doc["model"], str):
        raise ArchError(f"{p}: key 'model' must be a string (the model spec), got {doc['model']!r}")
    shape = doc.get("input_shape")
    if shape is not None and not (_is_shape(shape) or (isinstance(shape, list) and shape and all(map(_is_shape, shape)))):
        raise ArchError(f"{p}: key 'input_shape' must be a list of positive integers (or a list of such lists), "
                        f"got {shape!r}")
    for block, rules in METADATA_KEYS.items():
        entries = doc.get(block)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ArchError(f"{p}: key '{block}' must be a mapping ({', '.join(rules)}), got {type(entries).__name__}")
        unknown = sorted(str(k) for k in entries if k not in rules)
        if unknown:
            raise ArchError(f"{p}: '{block}' has unknown key(s) {unknown} (it may hold {', '.join(rules)})")
        for key, value in entries.items():
            check, what = rules[key]
            if value is not None and not check(value):
                raise ArchError(f"{p}: {block}.{key} must be {what} or null, got {value!r}")


def resolve_arch(arch, graph) -> dict[str, int]:
    """Widths for every prunable group of ``graph`` from a dict, an :class:`Arch` or a path."""
    if isinstance(arch, (str, os.PathLike)):
        arch = load_arch(arch)
    if isinstance(arch, Arch):
        for gid, of in arch.full_widths.items():
            group = graph.groups.get(gid)
            if group is not None and group.width != of:
                raise ArchError(
                    f"group '{gid}': the arch was made for {of} channels but the model has {group.width} "
                    f"(is {arch.source} for another model?)"
                )
        try:
            widths = validate_widths(arch.widths, graph)
        except ArchError as exc:  # name the file too
            raise ArchError(f"{arch.source}: {exc}" if arch.source else str(exc)) from None
        check_arch_counts(arch, graph, widths)
        return widths
    if isinstance(arch, Mapping):
        return validate_widths(arch, graph)
    raise ArchError(f"arch must be a dict of widths, an Arch or a YAML path, got {type(arch).__name__}")


def _shapes(value) -> list[list]:
    """An arch's ``input_shape`` (one shape, or a list of shapes) as a list of shapes."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return [list(v) for v in value]
    return [list(value)] if isinstance(value, (list, tuple)) else []


def check_arch_counts(arch: Arch, graph, widths: Mapping[str, int]) -> None:
    """The arch file's ``input_shape``, ``flops`` and ``params`` against the model of ``graph``
    (the full and pruned MACs and params are compared, within 1%, when the input shapes are equal,
    batch included; the pruned ones at ``widths``, the arch's widths)."""
    name = arch.source or "the arch"
    theirs, ours = _shapes(arch.input_shape), [list(s) for s in graph.input_shapes]
    if theirs and [s[1:] for s in theirs] != [s[1:] for s in ours]:
        shown = lambda v: v[0] if len(v) == 1 else v  # noqa: E731
        raise ArchError(f"{name} was made at input shape {shown(theirs)}, it is applied at {shown(ours)}: its MACs "
                        f"would not hold (pass the arch's input shape, e.g. --input-shape)")
    if theirs != ours:
        return
    counted = {("flops", "full"): graph.full_flops, ("params", "full"): graph.full_params,
               ("flops", "pruned"): graph.flops(widths), ("params", "pruned"): graph.params(widths)}
    for (block, key), value in counted.items():
        stated = (arch.flops if block == "flops" else arch.params).get(key)
        # 1% slack: a search space's graph and the plain model's may differ by a few MACs (gate-free ops)
        if stated is not None and (not isinstance(stated, (int, float)) or abs(stated - value) > 0.01 * max(value, 1)):
            raise ArchError(f"{name}: {block}.{key} is {stated!r} but the model it is applied to counts {int(value):,} "
                            f"at input shape {ours[0] if len(ours) == 1 else ours} (is the arch for another model?)")


def check_arch_model(arch, spec: str | None) -> None:
    """An arch file's ``model`` against the model spec it is applied to (ArchError when both are
    given and differ)."""
    if isinstance(arch, (str, os.PathLike)):
        arch = load_arch(arch)
    if isinstance(arch, Arch) and arch.model and spec and str(arch.model) != str(spec):
        raise ArchError(f"{arch.source or 'the arch'} was made for model {arch.model!r}, not {spec!r}; use the arch "
                        f"file of this model")


def validate_widths(widths: Mapping[str, int], graph) -> dict[str, int]:
    """Check widths against ``graph``; return a width for every prunable group.

    Errors name the group: unknown id (with the closest known ids), frozen group
    asked to shrink, non-integer width, width outside ``[1, full]``, width breaking
    the group's divisor (grouped convolutions).
    """
    out = {gid: g.width for gid, g in graph.prunable.items()}
    for gid, width in widths.items():
        group = graph.groups.get(gid)
        if group is None:
            close = difflib.get_close_matches(str(gid), list(graph.groups), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ArchError(f"unknown group '{gid}'{hint}")
        if not _is_int(width):
            raise ArchError(f"group '{gid}': width must be an integer, got {width!r}")
        if group.frozen:
            if width != group.width:
                raise ArchError(f"group '{gid}' is frozen ({group.frozen_reasons[0]}); it must keep {group.width} channels")
            continue
        if not 1 <= width <= group.width:
            raise ArchError(f"group '{gid}': width {width} is outside [1, {group.width}]")
        if width % group.divisor:
            raise ArchError(f"group '{gid}': width {width} is not a multiple of its divisor {group.divisor}")
        out[gid] = int(width)
    return out


def validate_count_widths(widths: Mapping[str, object] | None, graph) -> None:
    """Check the widths given to ``SearchSpace.flops/params`` (errors name the group).

    Integer widths get every check of :func:`validate_widths` (unknown group, frozen group
    asked to shrink, width outside ``[1, full]``, divisor). Tensor widths (the differentiable
    expected count) must name known prunable groups; their values are not read (no sync).
    Anything else (a float, a bool, a string) is an error.
    """
    if not widths:
        return
    ints = {gid: w for gid, w in widths.items() if _is_int(w)}
    validate_widths(ints, graph)
    for gid, width in widths.items():
        if gid in ints:
            continue
        group = graph.groups.get(gid)
        if group is None:
            validate_widths({gid: 1}, graph)  # raises: unknown group, with the closest ids
        if not hasattr(width, "detach"):
            raise ArchError(f"group '{gid}': width must be an integer (or a tensor for an expected count), "
                            f"got {width!r}")
        if group.frozen:
            raise ArchError(f"group '{gid}' is frozen ({group.frozen_reasons[0]}); it has no width to set")
