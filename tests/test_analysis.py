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
