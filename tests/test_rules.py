"""Hand-written networks with unusual wiring: each rule of DESIGN.md section 2.

Every model that has prunable groups must satisfy the section 8 properties
(check_properties); the rest must freeze the right groups with a reason.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dmcpfx
from equivalence import check_properties, randomize_norms

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def cbr(i, o, **kw):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(o), nn.ReLU())


class ConcatSEDepthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(3, 24)
        self.dw = nn.Sequential(nn.Conv2d(40, 40, 3, padding=1, groups=40), nn.BatchNorm2d(40), nn.Hardswish())
        self.proj = cbr(40, 32)
        self.se1, self.se2 = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        y = self.proj(self.dw(torch.cat([self.a(x), self.b(x)], dim=1)))
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        return self.head((y * s).mean((2, 3)))


class ConcatThenSE(nn.Module):
    """An SE gate (one 40-channel space) multiplies a concat of 16 + 24 channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(3, 24)
        self.se1, self.se2 = nn.Conv2d(40, 10, 1), nn.Conv2d(10, 40, 1)
        self.proj = nn.Conv2d(40, 6, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        return self.proj(y * s)


class AddOfConcat(nn.Module):
    """cat([a, b]) + c: c's channels split into the two pieces they are added to."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 16, 1)
        self.d = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.d(torch.cat([self.a(x), self.b(x)], 1) + self.c(x))


class SharedConv(nn.Module):
    """One conv module called twice (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x)) + x
        return self.out(x)


class LiteralFlatten(nn.Module):
    """A forward that holds the flattened feature count as a literal."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), nn.MaxPool2d(2), cbr(8, 12), nn.AdaptiveAvgPool2d(3))
        self.fc1, self.fc2 = nn.Linear(12 * 9, 20), nn.Linear(20, 3)

    def forward(self, x):
        x = self.features(x).view(-1, 108)
        return self.fc2(F.relu(self.fc1(x)))


class ChannelParamAndSpatialAttention(nn.Module):
    """A per-channel get_attr parameter and a 1-channel attention map broadcast over channels."""

    def __init__(self):
        super().__init__()
        self.c1 = cbr(3, 16)
        self.scale = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)
        self.att = nn.Conv2d(16, 1, 7, padding=3)
        self.c2 = nn.Conv2d(16, 6, 1)

    def forward(self, x):
        x = self.c1(x) * self.scale
        x = x * torch.sigmoid(self.att(x))
        return self.c2(x)


class IndexedLayerScale(nn.Module):
    """A 1-d per-channel parameter broadcast with None-indexing (as many zoos write layer scale)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = cbr(3, 16), nn.Conv2d(16, 4, 1)
        self.gamma = nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x):
        return self.c2(self.c1(x) * self.gamma[None, :, None, None] + self.gamma[..., None, None])


class ChannelsLastMLP(nn.Module):
    """Conv stem -> channels-last LayerNorm -> MLP -> back (ConvNeXt-like)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 4, stride=4)
        self.norm = nn.LayerNorm(24)
        self.fc1, self.fc2 = nn.Linear(24, 48), nn.Linear(48, 24)
        self.head = nn.Conv2d(24, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.fc2(F.gelu(self.fc1(self.norm(x.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.head(x + y)


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(3, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16))
        self.fc = nn.Linear(16 * 16, 4)

    def forward(self, x):
        x = self.c1(x)
        x = F.relu(self.c2(x) + x)
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize(
    "factory,x",
    [
        (ConcatSEDepthwise, X),
        (ConcatThenSE, X),
        (AddOfConcat, X),
        (SharedConv, X),
        (LiteralFlatten, X),
        (ChannelParamAndSpatialAttention, X),
        (ChannelsLastMLP, X),
        (IndexedLayerScale, X),
        (Conv1dNet, torch.randn(2, 3, 16)),
    ],
    ids=lambda v: getattr(v, "__name__", "x"),
)
def test_unusual_wiring_is_equivalent(factory, x):
    torch.manual_seed(0)
    model = randomize_norms(factory().eval())
    check_properties(model, x)


def test_concat_groups_and_se_coupling():
    graph = dmcpfx.analyze(ConcatSEDepthwise(), X)
    # the depthwise conv carries the concatenated spaces; the SE gate joins proj's space
    assert graph.groups["a.0"].prunable and graph.groups["b.0"].prunable
    assert any(m.module == "dw.0" for m in graph.groups["a.0"].members)
    assert "dw.0" not in graph.groups  # depthwise output is its input space
    assert "se2" not in graph.groups and any(m.module == "se2" for m in graph.groups["proj.0"].members)


def test_concat_refines_the_space_it_meets():
    graph = dmcpfx.analyze(ConcatThenSE(), X)
    assert graph.groups["a.0"].prunable and graph.groups["b.0"].prunable
    assert "se2" not in graph.groups  # its 40 channels split into 16 (with a.0) and 24 (with b.0)
    assert any(m.module == "se2" for m in graph.groups["a.0"].members)
    assert any(m.module == "se2" for m in graph.groups["b.0"].members)


def test_indexed_parameter_is_sliced_with_its_space():
    graph = dmcpfx.analyze(IndexedLayerScale(), X)
    assert graph.groups["c1.0"].prunable
    assert any(m.tensor == "gamma" for m in graph.groups["c1.0"].members)


def test_group_norm_prunes_whole_groups():
    graph = dmcpfx.analyze(GroupNormNet(), X)
    group = graph.groups["c1"]
    assert group.prunable and group.divisor == 4
    with pytest.raises(dmcpfx.ArchError, match="multiple of its divisor 4"):
        dmcpfx.materialize(GroupNormNet().eval(), {"c1": 6}, X)
    compact = dmcpfx.materialize(GroupNormNet().eval(), {"c1": 8}, X)
    assert (compact.gn1.num_groups, compact.gn1.num_channels) == (2, 8)
    torch.manual_seed(0)
    check_properties(randomize_norms(GroupNormNet().eval()), X)


def test_example_inputs_must_be_tensors():
    with pytest.raises(TypeError, match="example_inputs"):  # the argument named (issue 19)
        dmcpfx.analyze(SharedConv(), [1, 2])


def test_shared_module_is_one_group():
    graph = dmcpfx.analyze(SharedConv(), X)
    assert graph.groups["stem.0"].prunable
    assert "shared" not in graph.groups  # coupled to the stem through the residual add


def test_literal_flatten_returns_a_graph_module():
    model = LiteralFlatten().eval()
    compact = dmcpfx.materialize(model, {"features.2.0": 6}, X)
    assert isinstance(compact, torch.fx.GraphModule)
    assert compact.fc1.weight.shape[1] == 6 * 9  # the sliced weights under their own names


class LiteralFlattenWithConstant(LiteralFlatten):
    """As LiteralFlatten, plus a tensor made in forward: export lifts it into the graph."""

    def forward(self, x):
        x = (self.features(x) * torch.tensor([0.5, 1.0, 2.0])).view(-1, 108)  # over the width dim
        return self.fc2(F.relu(self.fc1(x)))


def test_graph_module_fallback_carries_lifted_constants():
    model = LiteralFlattenWithConstant().eval()
    x = torch.randn(2, 3, 12, 12)
    compact = dmcpfx.materialize(model, {"features.2.0": 6}, x)  # verified against the masked model
    assert isinstance(compact, torch.fx.GraphModule)
    assert any(name.startswith("lifted_tensor") for name, _ in compact.named_buffers()) or any(
        n.op == "get_attr" and "lifted" in str(n.target) for n in compact.graph.nodes)


def test_same_class_and_state_dict_keys_when_possible():
    model = ConcatSEDepthwise().eval()
    compact = dmcpfx.materialize(model, {"a.0": 8}, X)
    assert type(compact) is ConcatSEDepthwise
    assert list(compact.state_dict()) == list(model.state_dict())
    assert compact.dw[0].groups == 32 and compact.proj[0].in_channels == 32


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = cbr(3, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.c1(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.c2(x)


class GroupNormNet(nn.Module):
    """GroupNorm on a residual stream: widths must keep whole groups of 4 channels."""

    def __init__(self):
        super().__init__()
        self.c1, self.gn1 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c2, self.gn2 = nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.c3 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = F.relu(self.gn1(self.c1(x)))
        return self.c3(F.relu(self.gn2(self.c2(x)) + x))


class GroupNormOverConcat(nn.Module):
    """GroupNorm groups of 8 straddle a 4 + 12 concat: must freeze."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 12, 1)
        self.gn, self.c2 = nn.GroupNorm(2, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c2(self.gn(torch.cat([self.a(x), self.b(x)], 1)))


@torch.fx.wrap
def opaque_fn(x):
    return x.flip(1)


class WrappedFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c2(opaque_fn(self.c1(x)))


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        f = self.c1(x)
        return self.c2(f), f


class AddOfConcatGrouped(nn.Module):
    """cat([a, b]) + c where c is a grouped conv: c cannot be cut into pieces, so freeze."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.pre, self.c = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.d = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.d(torch.cat([self.a(x), self.b(x)], 1) + self.c(self.pre(x)))


class SizeReadElsewhere(nn.Module):
    """Reads x's channel count and uses it to shape another tensor (as MaxViT attention does)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a = self.c1(x)
        b, c, h, w = a.shape
        other = self.c2(x).permute(0, 2, 3, 1).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return self.c3(torch.relu(a) * 2 + 0 * other.mean())


class SizeReadSelf(nn.Module):
    """Reads x's channel count to reshape x itself: stays prunable."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 16, 1), nn.Linear(16, 4)

    def forward(self, x):
        a = self.c1(x)
        n, c = a.size(0), a.size(1)
        return self.fc(a.reshape(n, c, -1).mean(-1))


def test_channel_count_read_for_itself_stays_prunable():
    graph = dmcpfx.analyze(SizeReadSelf(), X)
    assert graph.groups["c1"].prunable
    check_properties(SizeReadSelf().eval(), X)


@pytest.mark.parametrize(
    "factory,group,reason",
    [
        (Shuffle, "c1.0", "splits or merges the channel dimension"),
        (GroupNormOverConcat, "b", "straddle"),
        (WrappedFunction, "c1", "aten.flip"),
        (TwoOutputs, "c1", "model output"),
        (AddOfConcatGrouped, "a", "do not line up"),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_unsupported_wiring_freezes_with_reason(factory, group, reason):
    graph = dmcpfx.analyze(factory(), X)
    g = graph.groups[group]
    assert g.frozen and any(reason in r for r in g.frozen_reasons), g.frozen_reasons
    with pytest.raises(dmcpfx.ArchError, match=group.replace(".", r"\.")):
        dmcpfx.materialize(factory(), {group: 4}, X)
