"""Hand-written networks whose channels meet unusual ops (a reduction over channels, a channel
permutation, padding or repetition along channels, parametrized weights, recurrent and
attention heads...). Each is a stem ``a`` (3 -> 16), a block ``b`` (16 -> 16) and a pooled
linear head, wired differently between them. Input ``(2, 3, 8, 8)``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations


def cbr(i: int, o: int, k: int = 3, **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False, **kw), nn.BatchNorm2d(o), nn.ReLU())


class Base(nn.Module):
    def __init__(s, b_in: int = 16):
        super().__init__()
        s.a, s.b, s.head = cbr(3, 16), cbr(b_in, 16), nn.Linear(16, 5)

    def tail(s, y):
        return s.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


# --- reductions and normalizations over the channel dimension
class MeanOverC(Base):
    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(y) * torch.sigmoid(y.mean(1, keepdim=True)))


class SoftmaxOverC(Base):
    def forward(s, x):
        return s.tail(s.b(s.a(x).softmax(1)))


class StdOverC(Base):
    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(y - y.std(1, keepdim=True)))


class MaxOverC(Base):
    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(y) * y.amax(1, keepdim=True))


class LogSumExpOverC(Base):
    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(y) + torch.logsumexp(y, 1, keepdim=True))


class ArgmaxOverC(Base):
    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(y) + y.argmax(1, keepdim=True).float())


class NormalizeOverC(Base):
    def forward(s, x):
        return s.tail(s.b(F.normalize(s.a(x), dim=1)))


class LocalResponse(Base):
    def __init__(s):
        super().__init__()
        s.n = nn.LocalResponseNorm(3)

    def forward(s, x):
        return s.tail(s.b(s.n(s.a(x))))


class InstanceNormAffine(Base):
    def __init__(s):
        super().__init__()
        s.n = nn.InstanceNorm2d(16, affine=True)

    def forward(s, x):
        return s.tail(s.b(s.n(s.a(x))))


class FunctionalBatchNorm(Base):
    def __init__(s):
        super().__init__()
        s.register_buffer("rm", torch.randn(16) * 0.1)
        s.register_buffer("rv", torch.rand(16) + 0.5)
        s.w = nn.Parameter(torch.rand(16) + 0.5)

    def forward(s, x):
        return s.tail(s.b(F.batch_norm(s.a(x), s.rm, s.rv, s.w, None, False)))


# --- the channel order: scans, sorts, permutations
class CumsumOverC(Base):
    def forward(s, x):
        return s.tail(s.b(torch.cumsum(s.a(x), 1)))


class SortOverC(Base):
    def forward(s, x):
        return s.tail(s.b(torch.sort(s.a(x), 1)[0]))


class RollOverC(Base):
    def forward(s, x):
        return s.tail(s.b(torch.roll(s.a(x), 3, 1)))


class IndexSelectOverC(Base):
    def __init__(s):
        super().__init__()
        s.register_buffer("idx", torch.tensor([3, 1, 0, 2, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 15, 14]))

    def forward(s, x):
        return s.tail(s.b(s.a(x).index_select(1, s.idx)))


class ChannelShuffleFn(Base):
    def forward(s, x):
        return s.tail(s.b(F.channel_shuffle(s.a(x), 4)))


class ChunkSwap(Base):
    def forward(s, x):
        p, q = s.a(x).chunk(2, 1)
        return s.tail(s.b(torch.cat([q, p], 1)))


class ViewGroupsSum(Base):
    def forward(s, x):
        y = s.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).sum(1)
        return s.tail(s.b(torch.cat([y, y], 1)))


# --- slices, pads, repeats along channels
class NarrowC(Base):
    def __init__(s):
        super().__init__(b_in=8)

    def forward(s, x):
        return s.tail(s.b(s.a(x)[:, 4:12]))


class SplitUneven(Base):
    def __init__(s):
        super().__init__(b_in=6)
        s.c = cbr(10, 16)

    def forward(s, x):
        p, q = torch.split(s.a(x), [6, 10], 1)
        return s.tail(s.b(p) + s.c(q))


class PadChannels(Base):  # the option-A shortcut of CIFAR ResNets
    def __init__(s):
        super().__init__()
        s.c = cbr(3, 8)

    def forward(s, x):
        return s.tail(s.b(s.a(x) + F.pad(s.c(x), (0, 0, 0, 0, 4, 4))))


class CatZeros(Base):
    def __init__(s):
        super().__init__(b_in=20)

    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(torch.cat([y, torch.zeros(y.shape[0], 4, y.shape[2], y.shape[3])], 1)))


class CatTwice(Base):
    def __init__(s):
        super().__init__(b_in=32)

    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(torch.cat([y, y], 1)))


class RepeatC(Base):
    def __init__(s):
        super().__init__(b_in=32)

    def forward(s, x):
        return s.tail(s.b(s.a(x).repeat(1, 2, 1, 1)))


class RepeatInterleaveC(Base):
    def __init__(s):
        super().__init__(b_in=32)

    def forward(s, x):
        return s.tail(s.b(s.a(x).repeat_interleave(2, 1)))


class InplaceSliceAssign(Base):
    def forward(s, x):
        y = s.a(x).clone()
        y[:, :4] = 0
        return s.tail(s.b(y))


# --- channels to space and back, unfold
class PixelShuffle(Base):
    def __init__(s):
        super().__init__(b_in=4)

    def forward(s, x):
        return s.tail(s.b(F.pixel_shuffle(s.a(x), 2)))


class UnfoldLinear(Base):
    def __init__(s):
        super().__init__()
        s.fc = nn.Linear(16 * 4, 16)

    def forward(s, x):
        return s.head(s.fc(F.unfold(s.a(x), 2, stride=2).transpose(1, 2)).mean(1))


class MaxUnpool(Base):
    def forward(s, x):
        y, i = F.max_pool2d(s.a(x), 2, return_indices=True)
        return s.tail(s.b(F.max_unpool2d(y, i, 2)))


# --- convolutions of other kinds
class DepthwiseMultiplier2(Base):
    def __init__(s):
        super().__init__(b_in=32)
        s.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)

    def forward(s, x):
        return s.tail(s.b(s.dw(s.a(x))))


class GroupedDilated(Base):
    def __init__(s):
        super().__init__(b_in=24)
        s.g = nn.Conv2d(16, 24, 3, padding=2, dilation=2, groups=4)

    def forward(s, x):
        return s.tail(s.b(s.g(s.a(x))))


class ReflectPadded(Base):
    def __init__(s):
        super().__init__()
        s.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=2, dilation=2, padding_mode="reflect"), nn.ReLU())

    def forward(s, x):
        return s.tail(s.b(s.a(x)))


class GroupedTransposedUp(Base):
    def __init__(s):
        super().__init__()
        s.up = nn.ConvTranspose2d(16, 16, 2, stride=2, groups=4)

    def forward(s, x):
        return s.tail(s.b(s.up(s.a(x))))


class SharedFunctional1x1(Base):
    def __init__(s):
        super().__init__()
        s.w = nn.Parameter(torch.randn(16, 16, 1, 1) * 0.3)

    def forward(s, x):
        return s.tail(s.b(F.conv2d(F.relu(F.conv2d(s.a(x), s.w)), s.w)))


class WeightNormParametrized(Base):
    def __init__(s):
        super().__init__()
        s.a = nn.Sequential(parametrizations.weight_norm(nn.Conv2d(3, 16, 3, padding=1)), nn.ReLU())

    def forward(s, x):
        return s.tail(s.b(s.a(x)))


# --- parameters, buffers and constants over channels
class SeparateBias(Base):
    def __init__(s):
        super().__init__()
        s.bias = nn.Parameter(torch.randn(16) * 0.3)

    def forward(s, x):
        return s.tail(s.b(s.a(x) + s.bias.view(1, -1, 1, 1)))


class MaskBuffer(Base):
    def __init__(s):
        super().__init__()
        s.register_buffer("mask", (torch.arange(16) % 3 != 0).float().view(1, 16, 1, 1))

    def forward(s, x):
        return s.tail(s.b(s.a(x) * s.mask))


class ArangeConstant(Base):
    def forward(s, x):
        return s.tail(s.b(s.a(x) + torch.arange(16.0).view(1, 16, 1, 1) / 16))


class EinsumMix(Base):
    def __init__(s):
        super().__init__()
        s.w = nn.Parameter(torch.randn(16, 16) * 0.3)

    def forward(s, x):
        return s.tail(s.b(torch.einsum("nchw,dc->ndhw", s.a(x), s.w)))


class MatmulBuffer(Base):
    def __init__(s):
        super().__init__()
        s.register_buffer("m", torch.randn(16, 16))

    def forward(s, x):
        return s.tail(s.b((s.a(x).permute(0, 2, 3, 1) @ s.m).permute(0, 3, 1, 2)))


class EmbeddingAdd(Base):
    def __init__(s):
        super().__init__()
        s.emb = nn.Embedding(64, 16)

    def forward(s, x):
        y = s.a(x)
        n, c, h, w = y.shape
        return s.tail(s.b(y + s.emb(torch.arange(h * w)).t().reshape(1, c, h, w)))


class ChannelCountRead(Base):
    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(y) * y.shape[1] / 16.0)


# --- heads: recurrent, attention, bilinear, a flatten of the whole map
class LSTMHead(Base):
    def __init__(s):
        super().__init__()
        s.rnn, s.head = nn.LSTM(16, 12, batch_first=True), nn.Linear(12, 5)

    def forward(s, x):
        out, _ = s.rnn(s.b(s.a(x)).mean(2).transpose(1, 2))
        return s.head(out[:, -1])


class AttentionHead(Base):
    def __init__(s):
        super().__init__()
        s.att = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(s, x):
        t = s.b(s.a(x)).flatten(2).transpose(1, 2)
        return s.head(s.att(t, t, t)[0].mean(1))


class BilinearHead(Base):
    def __init__(s):
        super().__init__()
        s.c, s.bil = cbr(3, 16), nn.Bilinear(16, 16, 5)

    def forward(s, x):
        pool = lambda t: F.adaptive_avg_pool2d(t, 1).flatten(1)  # noqa: E731
        return s.bil(pool(s.b(s.a(x))), pool(s.c(x)))


class FlattenWholeMap(Base):
    def __init__(s):
        super().__init__()
        s.fc = nn.Linear(16 * 8 * 8, 5)

    def forward(s, x):
        y = s.b(s.a(x))
        return s.fc(y.reshape(y.shape[0], -1))


class SpatialSelfAttention(Base):
    def forward(s, x):
        y = s.a(x)
        n, c, h, w = y.shape
        t = y.flatten(2)
        att = torch.softmax(t.transpose(1, 2) @ t / c ** 0.5, -1)
        return s.tail(s.b((t @ att).view(n, c, h, w)))


MODELS = [m for m in list(globals().values())
          if isinstance(m, type) and issubclass(m, Base) and m is not Base]
