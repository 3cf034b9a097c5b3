"""Group discovery on real models: counts and frozen reasons."""
import torch
import torchvision

import dmcpfx
from dmcpfx.counting import count_flops


def test_resnet50_has_37_prunable_groups():
    graph = dmcpfx.analyze(torchvision.models.resnet50(), torch.randn(1, 3, 64, 64))
    assert len(graph.prunable) == 37  # stem + 4 residual groups + 2 per bottleneck (16)
    assert graph.frozen["fc"].frozen_reasons == ["model output"]
    residual = graph.groups["layer1.0.conv3"]
    members = {(m.module, m.role) for m in residual.members}
    assert ("layer1.0.downsample.0", "out") in members and ("layer1.1.conv1", "in") in members
    assert "prunable" in str(graph) and "layer4.0.conv3" in str(graph)


def test_resnet50_flops_at_224_match_the_papers():
    model = torchvision.models.resnet50()
    x = torch.randn(1, 3, 224, 224)
    graph = dmcpfx.analyze(model, x)
    assert graph.full_flops == count_flops(model, x)
    assert abs(graph.full_flops - 4.09e9) / 4.09e9 < 0.01


def test_grouped_conv_sets_divisor_and_interleaved_order():
    graph = dmcpfx.analyze(torchvision.models.resnext50_32x4d(), torch.randn(1, 3, 64, 64))
    group = graph.groups["layer1.0.conv1"]
    assert group.divisor == 32 and group.prunable
    kept = group.kept_indices(64).tolist()
    assert kept == sorted(g * 4 + j for g in range(32) for j in range(2))


def test_shufflenet_freezes_the_shuffle_but_keeps_branch_convs():
    graph = dmcpfx.analyze(torchvision.models.shufflenet_v2_x1_0(), torch.randn(1, 3, 64, 64))
    assert graph.groups["stage2.0.branch2.0"].prunable
    reasons = " ".join(r for g in graph.frozen.values() for r in g.frozen_reasons)
    assert "splits or merges the channel dimension" in reasons


def test_vit_prunes_mlp_hidden_and_residual_and_freezes_attention_heads():
    graph = dmcpfx.analyze(torchvision.models.vit_b_32(), torch.randn(1, 3, 224, 224))
    assert graph.groups["encoder.layers.encoder_layer_0.mlp.0"].prunable
    assert graph.groups["conv_proj"].prunable  # the residual stream, through width-aware LayerNorms
    qkv = graph.groups["encoder.layers.encoder_layer_0.self_attention"]
    assert qkv.frozen and any("self_attention" in r and "splits" in r for r in qkv.frozen_reasons)


def test_convnext_residual_goes_through_width_aware_layernorm():
    graph = dmcpfx.analyze(torchvision.models.convnext_tiny(), torch.randn(1, 3, 64, 64))
    stem = graph.groups["features.0.0"]
    assert stem.prunable
    assert any(site.kind == "layernorm" for site in graph.mask_sites)


def test_a_torch_prune_mask_freezes_with_the_way_out():
    # torch.nn.utils.prune computes weight = weight_orig * weight_mask in a forward pre-hook: a
    # computed weight, so its channels freeze, and the reason says how to make it plain again
    from torch import nn
    from torch.nn.utils import prune

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    prune.l1_unstructured(model[2], "weight", amount=0.3)
    x = torch.randn(1, 3, 12, 12)
    graph = dmcpfx.analyze(model, x)
    for gid in ("0", "2"):  # both sides of the masked conv
        assert graph.groups[gid].frozen and "prune.remove(module, 'weight')" in graph.groups[gid].frozen_reasons[0]
    prune.remove(model[2], "weight")
    assert dmcpfx.analyze(model, x).groups["0"].prunable
