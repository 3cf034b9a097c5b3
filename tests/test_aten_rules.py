"""Hand-written networks for the ATen rules that the exported graph needs (DESIGN.md section 2).

Each network with prunable groups must satisfy the section 8 properties; the rest
freeze the right groups with a reason that names the op and the module.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dmcpfx
from dmcpfx.counting import count_flops
from equivalence import check_properties, randomize_norms
from test_rules import SizeReadElsewhere

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class FunctionalBNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm subclass that calls F.batch_norm itself, then an activation."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return F.silu(x)


class BNActNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), FunctionalBNAct(16)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), FunctionalBNAct(16)
        self.c2 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c2(self.bn2(self.dw(self.bn1(self.c1(x)))))


class SplitBranches(nn.Module):
    """res2net / MixConv wiring: split the channels, run a conv per piece, concat."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 24, 1)
        self.b1, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c2 = nn.Conv2d(24, 6, 1)

    def forward(self, x):
        a, b = torch.split(F.relu(self.c1(x)), [8, 16], dim=1)
        return self.c2(torch.cat([self.b1(a), self.b2(b)], 1))


class ChunkAndSlice(nn.Module):
    """GhostNet / CSP wiring: chunk into halves, slice a prefix of a concat."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.c2, self.c3 = nn.Conv2d(8, 12, 1), nn.Conv2d(8, 4, 1)
        self.c4 = nn.Conv2d(20, 5, 1)

    def forward(self, x):
        a, b = self.c1(x).chunk(2, dim=1)
        y = torch.cat([self.c2(a), self.c3(b)], 1)
        return self.c4(torch.cat([y[:, :12], y[:, 12:], b[:, :4]], 1))


class ParamMatmulAndGroupNorm(nn.Module):
    """A channels-last MLP written with matmul against raw parameters, and functional group_norm."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.gn_w, self.gn_b = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.randn(16))
        self.w1 = nn.Parameter(torch.randn(16, 32) * 0.2)
        self.w2 = nn.Parameter(torch.randn(32, 7) * 0.2)

    def forward(self, x):
        y = F.group_norm(self.c1(x), 4, self.gn_w, self.gn_b)
        y = y.permute(0, 2, 3, 1)
        return F.gelu(y @ self.w1) @ self.w2


class StackedHeads(nn.Module):
    """Two branches of one space stacked on a new dim, then averaged."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a = self.c1(x)
        return self.head(torch.stack([a, self.c2(a)], 0).mean(0))


class ExpandAsGates(nn.Module):
    """SE gate through ``expand_as`` (ECA / timm wiring), a per-channel mean and a broadcast with it."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc1, self.fc2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        a = self.c1(x)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(a.mean((2, 3), keepdim=True)))))
        a = a * gate.expand_as(a)
        a = a + a.mean((2, 3), keepdim=True).expand_as(a)  # the same channels
        return self.head(a + x.new_ones(1, 1, 1, 1).expand_as(a))  # broadcast: takes a's channels


class ExpandAsFromOther(nn.Module):
    """``expand_as`` whose result takes its channels from ``other``: a one-channel map and
    parameters (one value, one per channel, one per pixel) broadcast to a tracked activation,
    then concatenated with it or multiplied into it."""

    def __init__(self):
        super().__init__()
        self.c1, self.one = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 1, 1)
        self.scalar, self.per_channel = nn.Parameter(torch.randn(1, 1, 1, 1)), nn.Parameter(torch.randn(1, 8, 1, 1))
        self.per_pixel = nn.Parameter(torch.randn(1, 1, 16, 16))
        self.head = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        a = F.relu(self.c1(x))
        a = a * self.per_pixel.expand_as(a)
        parts = [a, self.one(a).expand_as(a), self.scalar.expand_as(a), self.per_channel.expand_as(a)]
        return self.head(torch.cat(parts, 1))


_SHIFT = torch.randn(8, 1, 1, generator=torch.Generator().manual_seed(1))  # a global the model does not own


class LiftedConstants(nn.Module):
    """Per-channel tensors that export lifts out of the forward (``lifted_tensor_0``): a global
    and one that a forward hook closes over. Nothing can slice them: their channels freeze."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 1), nn.Conv2d(8, 6, 1)
        self.mid, self.head = nn.Conv2d(6, 7, 1), nn.Conv2d(7, 5, 1)
        scale = torch.rand(1, 6, 1, 1) + 0.5
        self.c2.register_forward_hook(lambda module, args, out: out * scale)

    def forward(self, x):
        a = F.relu(self.c1(x)) + _SHIFT
        return self.head(F.relu(self.mid(F.relu(self.c3(a)) + self.c2(x))))


class ActivationProducts(nn.Module):
    """Products of two activations: a global-context pooling (channels as rows), a Gram
    matrix contracting the channels with themselves, and a product over two channel dims."""

    def __init__(self):
        super().__init__()
        self.c1, self.attn, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 1, 1), nn.Conv2d(16, 16, 1)
        self.c2, self.c3 = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        a = self.c1(x)
        n, c, h, w = a.shape
        weights = torch.softmax(self.attn(a).reshape(n, h * w), -1).unsqueeze(-1)  # (N, HW, 1)
        context = (a.reshape(n, c, h * w) @ weights).unsqueeze(-1)  # (N, C, 1, 1)
        attn = torch.softmax(self.attn(a).reshape(n, 1, h * w), -1).unsqueeze(3)  # timm's GlobalContext
        context = context + (a.reshape(n, c, h * w).unsqueeze(1) @ attn).view(n, c, 1, 1)
        flat = a.flatten(2)
        gram = torch.softmax(flat.transpose(1, 2) @ flat, -1)  # (N, HW, HW): contracts a's channels
        mixed = (flat @ gram).reshape(n, c, h, w)
        b = self.c2(x).flatten(2)
        cross = (self.c3(x).flatten(2) @ b.transpose(1, 2)).mean()  # (N, 4, 8): two channel dims -> frozen
        return self.head(a + self.fc(context) + mixed + cross)


class ChannelsLastPad(nn.Module):
    """Swin's window padding: channels last, only the spatial dims padded; and a pad of the
    channel dim itself, which freezes."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.norm, self.fc = nn.LayerNorm(16), nn.Linear(16, 12)
        self.head = nn.Conv2d(12 + 7, 5, 1)

    def forward(self, x):
        a = F.pad(self.c1(x).permute(0, 2, 3, 1), (0, 0, 0, 1, 0, 1))  # (N, H+1, W+1, C)
        a = self.fc(self.norm(a)).permute(0, 3, 1, 2)[:, :, :-1, :-1]
        b = F.pad(self.c2(x), (0, 0, 0, 0, 1, 0))  # one more channel
        return self.head(torch.cat([a, b], 1))


class FreshTensors(nn.Module):
    """timm's DropPath in train mode (``x.new_empty((N, 1, 1, 1)).bernoulli_(p)``), and
    ``zeros_like`` / ``new_zeros`` meeting the channels."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 5, 1)

    def forward(self, x):
        a = self.c1(x)
        keep = a.new_empty((a.shape[0], 1, 1, 1)).bernoulli_(0.9) / 0.9 if self.training else 1.0
        a = a + self.c2(a) * keep + torch.zeros_like(a)
        return self.head(a + a.new_zeros((1, 1, 1, 1)))


class StdConv(nn.Conv2d):
    """timm's StdConv2d: each filter standardized over its input channels in forward."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class StdConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.std, self.head = nn.Conv2d(3, 8, 1), StdConv(8, 16, 3, padding=1), nn.Conv2d(16, 5, 1)

    def forward(self, x):
        return self.head(F.relu(self.std(F.relu(self.c1(x)))))


class LiteralScale(nn.Module):
    """timm's MetaFormer ``Scale``: ``x * self.scale.view(self.shape)`` with ``shape = (C, 1, 1)``
    held as a Python attribute: the compact model must fall back to a GraphModule."""

    def __init__(self):
        super().__init__()
        self.c1, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 5, 1)
        self.scale = nn.Parameter(torch.rand(16) + 0.5)
        self.shape = (16, 1, 1)

    def forward(self, x):
        a = self.c1(x)
        return self.head(a + a * self.scale.view(self.shape))


class PatchMerging(nn.Module):
    """Swin's patch merging: ``(N, H, W, C) -> (N, H/2, W/2, 2, 2, C) -> (N, H/2, W/2, 4C)``,
    then LayerNorm(4C) and Linear(4C -> 2C); and a reshape that folds the batch into
    the channels, which freezes."""

    def __init__(self):
        super().__init__()
        self.c1, self.norm, self.reduction = nn.Conv2d(3, 8, 1), nn.LayerNorm(32), nn.Linear(32, 16)
        self.c2, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(16, 5, 1)

    def forward(self, x):
        a = self.c1(x).permute(0, 2, 3, 1)
        n, h, w, c = a.shape
        a = a.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        a = self.reduction(self.norm(a)).permute(0, 3, 1, 2)
        b = self.c2(x).reshape(1, -1, h, w).mean()  # batch folded into the channels
        return self.head(a) + b


@pytest.mark.parametrize(
    "factory", [BNActNet, SplitBranches, ChunkAndSlice, ParamMatmulAndGroupNorm, StackedHeads, SizeReadElsewhere,
                ExpandAsGates, ExpandAsFromOther, LiftedConstants, ActivationProducts, ChannelsLastPad, PatchMerging,
                FreshTensors, LiteralScale],
    ids=lambda f: f.__name__)
def test_aten_wiring_is_equivalent(factory):
    torch.manual_seed(0)
    check_properties(randomize_norms(factory().eval()), X)


def test_functional_batchnorm_is_per_channel_and_sliced():
    graph = dmcpfx.analyze(BNActNet(), X)
    group = graph.groups["c1"]
    assert group.prunable
    assert {m.tensor for m in group.members} >= {"bn1.running_mean", "bn2.running_var", "dw.weight"}


def test_expand_as_keeps_the_gated_space_prunable():
    graph = dmcpfx.analyze(ExpandAsGates(), X)
    assert graph.groups["c1"].prunable, graph.groups["c1"].frozen_reasons
    assert graph.groups["fc1"].prunable


def test_products_of_activations_keep_row_channels_and_freeze_two_channel_dims():
    graph = dmcpfx.analyze(ActivationProducts(), X)
    assert graph.groups["c1"].prunable, graph.groups["c1"].frozen_reasons
    for gid in ("c2", "c3"):
        assert graph.groups[gid].frozen and "two channel dimensions" in graph.groups[gid].frozen_reasons[0]


def test_padding_spatial_dims_keeps_channels_last_prunable():
    graph = dmcpfx.analyze(ChannelsLastPad(), X)
    assert graph.groups["c1"].prunable and graph.groups["fc"].prunable
    assert graph.groups["c2"].frozen and "pads across the channel" in graph.groups["c2"].frozen_reasons[0]


def test_patch_merging_repeats_the_channel_segments():
    graph = dmcpfx.analyze(PatchMerging(), X)
    assert graph.groups["c1"].prunable, graph.groups["c1"].frozen_reasons
    assert graph.groups["reduction"].prunable
    assert graph.groups["c2"].frozen


def test_fresh_tensors_do_not_freeze_their_template():
    graph = dmcpfx.analyze(FreshTensors(), X)
    assert graph.groups["c1"].prunable, graph.groups["c1"].frozen_reasons


def test_computed_weight_conv_freezes_both_sides_and_is_counted():
    model = StdConvNet().eval()
    graph = dmcpfx.analyze(model, X)
    for gid in ("c1", "std"):
        assert graph.groups[gid].frozen, gid
    assert "computed weight" in graph.groups["std"].frozen_reasons[0]
    assert graph.full_flops == count_flops(model, X)


def test_a_parameter_viewed_with_a_literal_size_is_rewritten():
    model = LiteralScale().eval()
    graph = dmcpfx.analyze(model, X)
    assert graph.groups["c1"].prunable
    compact = dmcpfx.materialize(model, {"c1": 8}, X, graph=graph)
    assert isinstance(compact, torch.fx.GraphModule)  # the same class would read shape (16, 1, 1)
    assert compact(X).shape == (2, 5, 16, 16)


def test_split_pieces_become_sub_spaces():
    graph = dmcpfx.analyze(SplitBranches(), X)
    widths = sorted(g.width for g in graph.prunable.values())
    assert 8 in widths and 16 in widths  # c1 cut into its two pieces
    compact = dmcpfx.materialize(SplitBranches().eval(), {gid: g.width // 2 for gid, g in graph.prunable.items()
                                                          if g.width % 2 == 0 and g.divisor == 1}, X)
    assert compact(X).shape == (2, 6, 16, 16)


def test_unsupported_op_freezes_naming_op_and_module():
    class PixelShuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c2(F.pixel_shuffle(self.c1(x), 2))

    graph = dmcpfx.analyze(PixelShuffle(), X)
    reasons = graph.groups["c1"].frozen_reasons
    assert any("pixel_shuffle" in r and "node" in r for r in reasons), reasons


def test_macs_are_per_image_whatever_the_batch():
    model = BNActNet().eval()
    one, four = torch.randn(1, 3, 16, 16), torch.randn(4, 3, 16, 16)
    assert count_flops(model, four) == count_flops(model, one) > 0
    assert dmcpfx.analyze(model, four).full_flops == dmcpfx.analyze(model, one).full_flops == count_flops(model, one)
    space = dmcpfx.instrument(model, four)
    assert space.full_flops == count_flops(model, one)


def test_expand_as_takes_the_channels_of_other():
    graph = dmcpfx.analyze(ExpandAsFromOther(), X)
    assert graph.groups["c1"].prunable, graph.groups["c1"].frozen_reasons
    assert any(m.tensor == "per_channel" for m in graph.groups["c1"].members)  # sliced with the channels


def test_constants_from_outside_the_model_freeze_their_channels():
    graph = dmcpfx.analyze(LiftedConstants(), X)
    assert graph.groups["mid"].prunable
    for gid in ("c1", "c3"):  # c3 is c2's group (the residual add)
        assert graph.groups[gid].frozen and "untracked tensor" in graph.groups[gid].frozen_reasons[0]

