"""Import MMRazor's DMCP ResNet-50 architectures into a dmcpfx arch YAML (DESIGN.md section 6).

MMRazor stores a searched ResNet-50 in two forms (``configs/pruning/mmcls/dmcp``):

- ``DMCP_R50_2G.yaml``: ``{unit_index: channels}`` with 37 units, indices 0..36;
- ``DMCP_R50_2G.json``: the ``DMCPChannelMutator`` config, whose ``channel_unit_cfg.units``
  maps unit names like ``"backbone.layer1.0.conv3_(0, 256)_256"`` to ``{"choice": 106, ...}``.

Unit order. MMRazor's units are in network order of each unit's first output layer, which is
exactly dmcpfx's order of the 37 prunable torchvision ResNet-50 groups (each named after its
first producer module): ``conv1`` (stem), then per stage ``layerS.0.conv1``,
``layerS.0.conv2``, ``layerS.0.conv3`` (the residual group: conv3 of every block of the stage
plus the downsample conv), then ``layerS.B.conv1``, ``layerS.B.conv2`` for the later blocks
B. Checked against MMRazor's own JSON, whose unit names give the same index -> layer map
(index 3 is ``backbone.layer1.0.conv3_(0, 256)_256``, index 17 is ``layer3.0.conv1``); the
widths of both files agree under it. A float choice ``<= 1`` is read as a ratio of the full
width (MMRazor's ``choice_mode: ratio``), rounded to the nearest channel.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping


from ..analysis import analyze
from ..arch import save_arch
from ..errors import ArchError
from ..models import parse_shape
from ..yamlio import load_file

__all__ = ["RESNET50_UNITS", "import_mmrazor", "parse_mmrazor"]

MODEL_SPEC = "torchvision:resnet50"


def _resnet50_units() -> list[str]:
    units = ["conv1"]
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        units += [f"layer{stage}.0.conv1", f"layer{stage}.0.conv2", f"layer{stage}.0.conv3"]
        for b in range(1, blocks):
            units += [f"layer{stage}.{b}.conv1", f"layer{stage}.{b}.conv2"]
    return units


RESNET50_UNITS: list[str] = _resnet50_units()  # MMRazor unit index -> dmcpfx group id (37 entries)
_NAME_RE = re.compile(r"^(?:backbone\.)?(?P<name>[\w.]+?)(?:_\(\d+, *\d+\)_\d+)?$")


def _as_int_key(key: Any) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return None


def _choice(value: Any, where: str) -> int | float:
    if isinstance(value, Mapping):
        if "choice" not in value:
            raise ArchError(f"{where}: expected a 'choice' entry, got keys {sorted(value)}")
        value = value["choice"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArchError(f"{where}: channels must be a number, got {value!r}")
    return value


def parse_mmrazor(doc: Any, source: str = "<mmrazor>") -> dict[str, int | float]:
    """``{dmcpfx group id: channels (int) or ratio (float <= 1)}`` from a loaded MMRazor file."""
    if isinstance(doc, Mapping) and isinstance(doc.get("channel_unit_cfg"), Mapping):
        doc = doc["channel_unit_cfg"].get("units")
    if not isinstance(doc, Mapping) or not doc:
        raise ArchError(f"{source}: expected a mapping {{unit_index: channels}} or an MMRazor "
                        f"DMCPChannelMutator config with channel_unit_cfg.units")
    out: dict[str, int | float] = {}
    for key, value in doc.items():
        index = _as_int_key(key)
        if index is not None:
            if not 0 <= index < len(RESNET50_UNITS):
                raise ArchError(f"{source}: unit index {index} out of range 0..{len(RESNET50_UNITS) - 1} "
                                f"(ResNet-50 has {len(RESNET50_UNITS)} units)")
            gid = RESNET50_UNITS[index]
        else:
            m = _NAME_RE.match(str(key))
            gid = m.group("name") if m else str(key)
            if gid not in RESNET50_UNITS:
                raise ArchError(f"{source}: unit {key!r} is not a ResNet-50 unit (expected e.g. "
                                f"'backbone.layer1.0.conv3_(0, 256)_256' or an index 0..36)")
        if gid in out:
            raise ArchError(f"{source}: unit {key!r} given twice (group {gid})")
        out[gid] = _choice(value, f"{source}: unit {key!r}")
    return out


def import_mmrazor(path: str | os.PathLike, output: str | os.PathLike, *,
                   input_shape: str | tuple[int, ...] = (1, 3, 224, 224)) -> dict[str, int]:
    """Convert the MMRazor file at ``path`` into an arch YAML at ``output`` for
    ``torchvision:resnet50``; MACs are counted at ``input_shape`` (pixels). Returns the widths.

    Raises :class:`~dmcpfx.errors.ArchError` naming the unit for an unknown unit, a width out of
    range, or a file that is not an MMRazor arch.
    """
    import torch
    import torchvision

    p = Path(path)
    doc = load_file(p, "MMRazor file", ArchError, invalid="is neither YAML nor JSON")  # YAML is a superset of JSON
    raw = parse_mmrazor(doc, str(p))
    shape = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
    graph = analyze(torchvision.models.resnet50().eval(), torch.randn(*shape), model_name=MODEL_SPEC)
    missing = [g for g in RESNET50_UNITS if g not in graph.prunable]
    if missing:  # the analysis must agree with the unit table above
        raise ArchError(f"ResNet-50 analysis has no group(s) {missing}; cannot map MMRazor units")
    widths: dict[str, int] = {}
    for gid, value in raw.items():
        full = graph.groups[gid].width
        widths[gid] = max(1, round(value * full)) if isinstance(value, float) and value <= 1.0 else int(value)
    try:
        save_arch(output, widths, graph, model=MODEL_SPEC)
    except ArchError as exc:
        raise ArchError(f"{p}: {exc}") from exc
    return widths
