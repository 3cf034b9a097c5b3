"""Torchvision segmentation models (dict outputs) and detection backbones (submodule option)."""
from __future__ import annotations

import pytest
import torch
import torchvision

import dmcpfx
from dmcpfx.counting import count_flops
from dmcpfx.analysis.submodule import capture_inputs
from equivalence import assert_untouched, check_properties, randomize_norms, random_widths, rel_diff, state_snapshot
from marks import slow_unless

SEGMENTATION = ["lraspp_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50"]
DETECTION = ["fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn", "ssdlite320_mobilenet_v3_large"]


@pytest.mark.parametrize("name", slow_unless(SEGMENTATION, {"lraspp_mobilenet_v3_large"}))
def test_segmentation_properties_hold(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=3).eval()
    randomize_norms(model)
    check_properties(model, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)), seeds=(0,))


def _detector(name):
    torch.manual_seed(0)
    kwargs = {"min_size": 128, "max_size": 128} if "ssd" not in name else {}
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs).eval()
    return randomize_norms(model), torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", slow_unless(DETECTION, {DETECTION[0]}))
def test_detection_backbone_pruned_in_place(name):
    model, x = _detector(name)
    before = state_snapshot(model)
    space = dmcpfx.instrument(model, x, submodule="backbone")
    assert space.groups
    widths = random_widths(space, 0)
    inputs = capture_inputs(model, x, "backbone")
    space.eval()
    space.set_widths(widths)
    with torch.no_grad():
        masked = space(*inputs)
        compact = dmcpfx.materialize(model, widths, x, submodule="backbone")
        got = compact.eval().backbone(*inputs)
        full = model.backbone(*inputs)
    masked, got, full = (list(v.values()) if isinstance(v, dict) else [v] for v in (masked, got, full))
    assert all(rel_diff(a, b) <= 1e-4 for a, b in zip(got, masked))  # NaN fails
    assert any(rel_diff(m, f) > 1e-3 for m, f in zip(masked, full))  # pruning changed something
    assert [a.shape for a in got] == [f.shape for f in full]  # the heads see the shapes they expect
    assert count_flops(compact, x) < count_flops(model, x)
    compact(x)  # the whole detector runs end to end
    assert_untouched(model, before)


def test_missing_submodule_is_named():
    model, x = _detector(DETECTION[0])
    with pytest.raises(dmcpfx.ConfigError, match="'backbone.nope' does not exist"):
        dmcpfx.analyze(model, x, submodule="backbone.nope")
