"""Transposed convolutions (U-Net decoders, FPN-style upsampling): weight ``(in, out / groups,
*kernel)``. With one group they consume their input and open their output space like a conv
(both sides prunable); grouped ones freeze with the reason. Either way their MACs count
(``input elements * out / groups * kernel`` per image), in the analysis and in the
independent counter alike. Also the dense prediction such a decoder serves: a segmentation
search end to end, and void pixels left out of the scores."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dmcpfx
from dmcpfx.counting import count_flops, count_params
from equivalence import check_properties, randomize_norms

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TCONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class TransposedUNet(nn.Module):
    """Encoder, a strided transposed conv (output_padding) concatenated with the skip, a
    dilated transposed conv without bias, a 1x1 head."""

    def __init__(self, dims: int = 2, groups: int = 1):
        super().__init__()
        conv, tconv, bn = _CONV[dims], _TCONV[dims], _BN[dims]
        self.e1 = nn.Sequential(conv(3, 16, 3, padding=1), bn(16), nn.ReLU())
        self.e2 = nn.Sequential(conv(16, 32, 3, stride=2, padding=1), bn(32), nn.ReLU())
        self.up = tconv(32, 16, 3, stride=2, padding=1, output_padding=1, groups=groups)
        self.up_bn = bn(16)
        self.d = nn.Sequential(conv(32, 16, 3, padding=1), bn(16), nn.ReLU())
        self.up2 = tconv(16, 8, 2, dilation=2, bias=False)
        self.head = conv(8, 4, 1)

    def forward(self, x):
        a = self.e1(x)
        u = torch.relu(self.up_bn(self.up(self.e2(a))))
        d = self.d(torch.cat([a, u], 1))
        return self.head(torch.relu(self.up2(d)))


INPUTS = {1: (2, 3, 12), 2: (2, 3, 12, 12), 3: (2, 3, 6, 6, 6)}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_transposed_convs_are_pruned_on_both_sides(dims):
    torch.manual_seed(0)
    model = randomize_norms(TransposedUNet(dims).eval())
    x = torch.randn(*INPUTS[dims], generator=torch.Generator().manual_seed(1))
    graph = dmcpfx.analyze(model, x)
    assert {"up", "up2"} <= set(graph.prunable)  # their output spaces
    assert graph.groups["e2.0"].prunable  # the transposed conv's input
    figures = check_properties(model, x)
    for widths, compact in figures["compacts"]:
        assert type(compact) is TransposedUNet  # the same class: attributes follow the weights
        assert compact.up.in_channels == widths["e2.0"] and compact.up.out_channels == widths["up"]
        assert compact.up2.weight.shape[:2] == (widths["d.0"], widths["up2"])


def test_grouped_transposed_conv_freezes_and_still_counts():
    torch.manual_seed(0)
    model = randomize_norms(TransposedUNet(groups=2).eval())
    x = torch.randn(*INPUTS[2])
    graph = dmcpfx.analyze(model, x)
    reasons = graph.groups["e2.0"].frozen_reasons
    assert any("grouped transposed convolution" in r and "'up'" in r for r in reasons), reasons
    assert graph.full_flops == count_flops(model, x)
    check_properties(model, x)  # the other groups still prune correctly


def test_counter_counts_a_transposed_conv_per_input_element():
    """By hand: each of the 5x5 input pixels of each of 4 channels meets 6 / 2 filters of 3x3 taps."""
    layer = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    assert count_flops(layer, torch.randn(3, 4, 5, 5)) == 5 * 5 * 4 * (6 // 2) * 9
    graph_full = dmcpfx.analyze(nn.Sequential(nn.Conv2d(3, 4, 1), layer), torch.randn(1, 3, 5, 5)).full_flops
    assert graph_full == 5 * 5 * 3 * 4 + 5 * 5 * 4 * 3 * 9


def test_onnx_of_a_pruned_transposed_unet_matches(tmp_path):
    torch.manual_seed(0)
    model = randomize_norms(TransposedUNet().eval())
    x = torch.randn(*INPUTS[2])
    space = dmcpfx.instrument(model, x)
    widths = {gid: g.candidates[len(g.candidates) // 3] for gid, g in space.groups.items()}
    compact = dmcpfx.materialize(model, widths, x)
    assert count_params(compact) == space.params(widths) < count_params(model)
    dmcpfx.export_onnx(compact, x, tmp_path / "unet.onnx")  # checked against PyTorch with onnxruntime
    assert (tmp_path / "unet.onnx").stat().st_size > 0


def test_a_segmentation_search_keeps_its_supernet_trained(tmp_path):
    """A per-pixel classifier (N, classes, H, W) with a transposed-conv decoder: search -> derive ->
    materialize. The max net's cross-entropy stays near log(4) on noise labels (it reached 12-40
    when the sub-nets' distillation summed over the pixels), and the compact model keeps its class."""
    torch.manual_seed(0)
    model = TransposedUNet()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 12, 12, generator=g), torch.randint(0, 4, (4, 14, 14), generator=g)) for _ in range(4)]
    space = dmcpfx.instrument(model, data[0][0][:2])
    result = dmcpfx.search(space, data, target=0.5, epochs=4, lr=0.05, progress=False)
    losses = [record["loss_max"] for record in result.history]
    assert max(losses) < 2.0, losses  # log(4) = 1.39
    widths = dmcpfx.derive(space, target=0.5)
    compact = dmcpfx.materialize(space, widths, data[0][0][:2])
    assert type(compact) is TransposedUNet and compact(data[0][0]).shape == (4, 4, 14, 14)


def test_void_pixels_are_not_scored():
    """Labels equal to cross-entropy's ignore index (-100, a void pixel) count neither as hits nor
    as misses, in ``evaluate`` (the compact model) and in the supernet's evaluation alike."""
    from dmcpfx.accuracy import evaluate
    from dmcpfx.search.evaluation import evaluate_space

    torch.manual_seed(0)
    model = TransposedUNet().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        predicted = model(x).argmax(1)  # (2, 14, 14)
    labels = (predicted + 1) % 4  # every pixel wrong ...
    labels[0, :7] = predicted[0, :7]  # ... but 98 of them right
    labels[1] = -100  # and one image all void
    for got in (evaluate(model, [(x, labels)]),
                evaluate_space(dmcpfx.instrument(model, x), [(x, labels)], calib_batches=0)):
        assert got["top1"] == pytest.approx(100.0 * 98 / 196)


@pytest.mark.slow
def test_a_timm_model_with_transposed_convs():
    """timm's LowFormer upsamples its attention output with ConvTranspose2d (one group): the
    properties hold on it, its MACs include them, and the compact model keeps its class."""
    pytest.importorskip("timm", reason="timm is a dev dependency: pip install -e '.[dev]'")
    from zoo_models import build_timm

    model, x = build_timm("lowformer_b0")
    randomize_norms(model)
    assert any(isinstance(m, nn.ConvTranspose2d) and m.groups == 1 for m in model.modules())
    assert dmcpfx.analyze(model, x).full_flops == count_flops(model, x)
    figures = check_properties(model, x, seeds=(0, 1))
    assert all(type(compact) is type(model) for _, compact in figures["compacts"])
