"""Products the rules do not prune through still count their MACs (DESIGN.md section 4):
the analysis's full count equals the independent counter's, and a dense product with a
buffer weight is counted by both. Every network here freezes the product's channels."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dmcpfx
from dmcpfx.counting import count_flops, fused_rnn_macs
from equivalence import check_properties
from marks import slow_unless

X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))


class _Sandwich(nn.Module):
    """conv -> ``mid`` (an 8x8 product in the subclass) -> conv -> conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 4, 1)
        self.w = nn.Parameter(torch.randn(8, 8) / 3)

    def forward(self, x):
        return self.head(F.relu(self.b(self.mid(F.relu(self.a(x))))))


class BufferLinear(_Sandwich):
    def __init__(self):
        super().__init__()
        del self.w
        self.register_buffer("w", torch.randn(8, 8) / 3)

    def mid(self, y):
        return F.linear(y.permute(0, 2, 3, 1), self.w).permute(0, 3, 1, 2)


class EinsumParam(_Sandwich):
    def mid(self, y):
        return torch.einsum("bchw,oc->bohw", y, self.w)


class BmmExpandedParam(_Sandwich):
    def mid(self, y):
        n, _, h, w = y.shape
        return torch.bmm(self.w.expand(n, 8, 8), y.flatten(2)).view(n, 8, h, w)


class AddmmScaled(_Sandwich):
    def mid(self, y):
        n, _, h, w = y.shape
        rows = y.permute(0, 2, 3, 1).reshape(-1, 8)
        return torch.addmm(self.w[0], rows, self.w, beta=0.5).view(n, h, w, 8).permute(0, 3, 1, 2)


class ParamOnTheLeft(_Sandwich):
    def mid(self, y):
        n, _, h, w = y.shape
        return torch.matmul(self.w, y.flatten(2)).view(n, 8, h, w)


class LinearOnSplitWeight(_Sandwich):  # nn.MultiheadAttention's cross-attention splits in_proj_weight so
    def mid(self, y):
        rows = y.permute(0, 2, 3, 1)
        top, bottom = self.w.split(4)
        return torch.cat([F.linear(rows, top), F.linear(rows, bottom)], -1).permute(0, 3, 1, 2)


class MatmulWithSplitParam(_Sandwich):
    def mid(self, y):
        rows = y.permute(0, 2, 3, 1)
        left, right = self.w.split(4, dim=1)
        return torch.cat([rows @ left, rows @ right], -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("factory", [BufferLinear, EinsumParam, BmmExpandedParam, AddmmScaled, ParamOnTheLeft,
                                     LinearOnSplitWeight, MatmulWithSplitParam], ids=lambda f: f.__name__)
def test_the_analysis_counts_what_the_counter_counts(factory):
    torch.manual_seed(0)
    model = factory().eval()
    graph = dmcpfx.analyze(model, X)
    assert graph.full_flops == count_flops(model, X)
    product_macs = 36 * 8 * 8  # per image: 6x6 positions, 8 in, 8 out
    assert graph.full_flops - product_macs == count_flops(nn.Sequential(model.a, model.b, model.head), X)
    if factory is BufferLinear:
        assert graph.groups["a"].prunable  # the buffer is sliced like a weight
    else:
        assert graph.groups["a"].frozen and "unsupported" in graph.groups["a"].frozen_reasons[0]
    check_properties(model, X)  # the groups after the product stay prunable, and counted exactly


class _SelfAttention(nn.Module):
    def __init__(self, out: int):
        super().__init__()
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        self.att.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(16, out)  # a compact model's

    def forward(self, x):
        return self.att(x, x, x)[0]


@pytest.mark.parametrize("out", [16, 8])
def test_the_counter_takes_the_attention_fast_paths_weights_as_they_are(out):
    # eval mode, batch_first: nn.MultiheadAttention runs aten._native_multi_head_attention; a compact
    # model whose out_proj keeps `out` of its 16 outputs costs 10 tokens x (3 x 16 x 16 + out x 16)
    model = _SelfAttention(out).eval()
    assert count_flops(model, torch.randn(1, 10, 16)) == 10 * (3 * 16 * 16 + out * 16)


@pytest.mark.parametrize("factory", [
    lambda: nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0),
    lambda: _SelfAttention(8),
], ids=["encoder_layer", "attention_with_a_narrow_out_proj"])
def test_the_counter_gives_the_fast_path_what_it_gives_the_plain_path(factory):
    # eval mode takes the fused kernel; with the fast path off the same model runs linear by linear
    model, x = factory().eval(), torch.randn(1, 10, 16)
    fused = count_flops(model, x)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        plain = count_flops(model, x)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert fused == plain > 0


class _RecurrentHead(nn.Module):
    """conv features read as a sequence (N, W, C) by a recurrent layer, then a linear head."""

    def __init__(self, rnn: nn.Module, out: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.rnn, self.head = rnn, nn.Linear(out, 4)

    def forward(self, x):
        seq = F.relu(self.b(F.relu(self.a(x)))).mean(2).transpose(1, 2)
        return self.head(self.rnn(seq)[0][:, -1])


RECURRENT = {  # the GRU runs by default, the others (5-8 s each on 2 cores) under -m slow
    "gru": (lambda: nn.GRU(8, 5, batch_first=True), 5),
    "rnn_relu_2_layers": (lambda: nn.RNN(8, 5, num_layers=2, nonlinearity="relu", batch_first=True), 5),
    "lstm_bidirectional": (lambda: nn.LSTM(8, 5, bidirectional=True, batch_first=True), 10),
    "lstm_projected": (lambda: nn.LSTM(8, 5, proj_size=3, batch_first=True), 3),
}


def _rnn_weight_numel(rnn: nn.Module) -> int:
    return sum(p.numel() for name, p in rnn.named_parameters() if name.startswith("weight"))


@pytest.mark.parametrize("name", slow_unless(RECURRENT, {"gru"}))
def test_recurrent_layers_count_every_weight_matrix_once_per_token(name):
    # the counter sees matrix products (GRU, RNN, a projected LSTM) or oneDNN's fused LSTM kernel;
    # the analysis counts the aten.lstm / gru / rnn_* node from its weights: all agree with
    # tokens x sum(W.numel()), 6 tokens (the width of the 6x6 map) per image
    rnn, out = RECURRENT[name]
    torch.manual_seed(0)
    model = _RecurrentHead(rnn(), out).eval()
    convs_and_head = count_flops(nn.Sequential(model.a, model.b), X) + out * 4
    want = convs_and_head + 6 * _rnn_weight_numel(model.rnn)
    assert count_flops(model, X) == want
    with torch.backends.mkldnn.flags(enabled=False):  # every recurrent layer as matrix products
        assert count_flops(model, X) == want
    graph = dmcpfx.analyze(model, X)
    assert graph.full_flops == want
    assert graph.groups["b"].frozen and "aten." in graph.groups["b"].frozen_reasons[0]
    check_properties(model, X)  # group 'a' stays prunable and counted exactly


def test_fused_recurrent_kernels_are_counted_from_their_weights():
    # the cuDNN / MIOpen / oneDNN kernels, as the counter receives their arguments (CPU tensors
    # stand in for CUDA ones: only the shapes matter); 7 tokens, a 2-layer LSTM 4 -> 3
    w = [torch.zeros(12, 4), torch.zeros(12, 3), torch.zeros(12), torch.zeros(12),
         torch.zeros(12, 3), torch.zeros(12, 3), torch.zeros(12), torch.zeros(12)]
    per_token = 12 * 4 + 12 * 3 + 12 * 3 + 12 * 3
    seq = torch.zeros(7, 1, 4)
    assert fused_rnn_macs("_cudnn_rnn", [seq, w, 4, None, None]) == 7 * per_token
    assert fused_rnn_macs("miopen_rnn", [torch.zeros(1, 7, 4), w, 4, None]) == 7 * per_token
    assert fused_rnn_macs("mkldnn_rnn_layer", [seq, *w[:4]]) == 7 * (12 * 4 + 12 * 3)
    assert fused_rnn_macs("addmm", [seq]) is None
