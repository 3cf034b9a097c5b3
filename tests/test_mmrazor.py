"""Importing MMRazor's DMCP ResNet-50 arch files (synthetic files in MMRazor's two formats)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmcpfx import ArchError
from dmcpfx.arch import load_arch
from dmcpfx.product.mmrazor import RESNET50_UNITS, import_mmrazor, parse_mmrazor

REPO = Path(__file__).resolve().parents[1]
# the widths of MMRazor's DMCP_R50_2G.yaml, by unit index
R50_2G = [52, 22, 22, 106, 16, 16, 40, 16, 68, 56, 155, 32, 68, 56, 56, 80, 92, 256, 256, 1024, 106, 106, 131, 256,
          131, 256, 256, 256, 256, 256, 512, 512, 2048, 512, 461, 512, 512]


def test_unit_order_is_network_order_of_resnet50_groups():
    import torch
    import torchvision

    from dmcpfx import analyze

    graph = analyze(torchvision.models.resnet50().eval(), torch.randn(1, 3, 64, 64))
    assert RESNET50_UNITS == list(graph.prunable)
    assert RESNET50_UNITS[3] == "layer1.0.conv3" and RESNET50_UNITS[17] == "layer3.0.conv1"


def test_index_and_mutator_formats_agree():
    by_index = parse_mmrazor({i: w for i, w in enumerate(R50_2G)})
    units = {}
    for gid, w in zip(RESNET50_UNITS, R50_2G):
        full = {"conv1": 64}.get(gid) or w
        units[f"backbone.{gid}_(0, {full})_{full}"] = {"init_args": {"num_channels": full}, "choice": w}
    by_name = parse_mmrazor({"type": "DMCPChannelMutator", "channel_unit_cfg": {"units": units}})
    assert by_index == by_name and by_index["layer1.0.conv3"] == 106 and by_index["layer4.1.conv2"] == 461


def test_import_writes_a_valid_arch_yaml(tmp_path):
    src = tmp_path / "DMCP_R50_2G.yaml"
    src.write_text("{" + ", ".join(f"{i}: {w}" for i, w in enumerate(R50_2G)) + "}\n")
    out = tmp_path / "arch.yaml"
    proc = subprocess.run([sys.executable, "-m", "dmcpfx.cli", "import-mmrazor", str(src), "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    arch = load_arch(out)
    assert arch.model == "torchvision:resnet50" and arch.widths["conv1"] == 52 and len(arch.widths) == 37
    doc = yaml.safe_load(out.read_text())
    assert 1.8e9 < doc["flops"]["pruned"] < 2.2e9  # MMRazor's "2G" ResNet-50


def test_bad_mmrazor_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"40": 10}))
    with pytest.raises(ArchError, match="out of range"):
        import_mmrazor(bad, tmp_path / "a.yaml")
    bad.write_text(json.dumps({"0": 100}))  # the stem has 64 channels
    with pytest.raises(ArchError, match="conv1"):
        import_mmrazor(bad, tmp_path / "a.yaml")
    with pytest.raises(ArchError, match="not a ResNet-50 unit"):
        parse_mmrazor({"backbone.layer9.0.conv1_(0, 64)_64": 8})
    assert not (tmp_path / "a.yaml").exists()
