"""More hand-written networks for tests/test_wiring_zoo.py: channels reversed, gathered, strided
or picked by a list; GLU halves; a Gram matrix over channels; pixel_unshuffle; a per-channel
``where`` mask; channels stacked and flattened; a circular-padded conv; BatchNorm without running
statistics; GroupNorm; uneven split-and-add; a difference along channels; a softmax over pooled
channels; BatchNorm written out; a computed channel appended; a conv and its transpose sharing a
weight; a channels-last layer scale; a conv weight read as a matrix; an expanded 1-channel map;
maxout over channel pairs; an interpolation along channels. The same stem ``a`` / block ``b`` /
head layout as tests/wiring_models.py. Input ``(2, 3, 8, 8)``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wiring_models import Base


class FlipOverC(Base):
    def forward(s, x):
        return s.tail(s.b(torch.flip(s.a(x), dims=[1])))


class GluOverC(Base):  # the first half of the channels gated by the second
    def __init__(s):
        super().__init__(b_in=8)

    def forward(s, x):
        return s.tail(s.b(F.glu(s.a(x), dim=1)))


class GatherOverC(Base):
    def forward(s, x):
        y = s.a(x)
        index = torch.arange(15, -1, -1).view(1, 16, 1, 1).expand_as(y)
        return s.tail(s.b(torch.gather(y, 1, index)))


class StridedSliceC(Base):
    def __init__(s):
        super().__init__(b_in=8)

    def forward(s, x):
        return s.tail(s.b(s.a(x)[:, ::2]))


class ListIndexC(Base):
    def __init__(s):
        super().__init__(b_in=3)

    def forward(s, x):
        return s.tail(s.b(s.a(x)[:, [0, 5, 9]]))


class GramMatrix(Base):  # (N, C, C) channel correlations into the head
    def __init__(s):
        super().__init__()
        s.head = nn.Linear(256, 5)

    def forward(s, x):
        y = s.b(s.a(x)).flatten(2)
        return s.head((y @ y.transpose(1, 2) / y.shape[-1]).flatten(1))


class PixelUnshuffle(Base):
    def __init__(s):
        super().__init__(b_in=64)

    def forward(s, x):
        return s.tail(s.b(F.pixel_unshuffle(s.a(x), 2)))


class WhereChannelMask(Base):
    def __init__(s):
        super().__init__()
        s.register_buffer("even", torch.arange(16).view(1, 16, 1, 1) % 2 == 0)

    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(torch.where(s.even, y, -y)))


class StackFlattenC(Base):  # (N, C, 2, H, W) flattened to 2C interleaved channels
    def __init__(s):
        super().__init__(b_in=32)

    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(torch.stack([y, 2 * y], dim=2).flatten(1, 2)))


class CircularPadConv(Base):
    def __init__(s):
        super().__init__()
        s.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, padding_mode="circular"), nn.BatchNorm2d(16), nn.ReLU())

    def forward(s, x):
        return s.tail(s.b(s.a(x)))


class BatchNormNoStats(Base):
    def __init__(s):
        super().__init__()
        s.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16, track_running_stats=False), nn.ReLU())

    def forward(s, x):
        return s.tail(s.b(s.a(x)))


class GroupNormStem(Base):
    def __init__(s):
        super().__init__()
        s.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU())

    def forward(s, x):
        return s.tail(s.b(s.a(x)))


class SplitAddCat(Base):
    def forward(s, x):
        first, second = torch.split(s.a(x), [8, 8], dim=1)
        return s.tail(s.b(torch.cat([second, first + second], 1)))


class DiffOverC(Base):
    def forward(s, x):
        y = torch.diff(s.a(x), dim=1)
        return s.tail(s.b(F.pad(y, (0, 0, 0, 0, 0, 1))))


class SoftmaxOfPooledC(Base):
    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(y * y.amax(dim=(2, 3), keepdim=True).softmax(1)))


class ManualBatchNorm(Base):  # BatchNorm written out with a parameter and buffer per channel
    def __init__(s):
        super().__init__()
        s.gamma, s.beta = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.randn(16))
        s.register_buffer("mean", torch.randn(16))
        s.register_buffer("var", torch.rand(16) + 0.5)

    def forward(s, x):
        scale = (s.gamma / torch.sqrt(s.var + 1e-5)).view(1, -1, 1, 1)
        y = (s.b(s.a(x)) - s.mean.view(1, -1, 1, 1)) * scale + s.beta.view(1, -1, 1, 1)
        return s.tail(y)


class MeanChannelAppended(Base):  # CoordConv-like: one computed channel concatenated
    def __init__(s):
        super().__init__(b_in=17)

    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(torch.cat([y, y.mean(1, keepdim=True)], 1)))


class TiedTransposedConv(Base):  # a strided conv and its transpose sharing one weight
    def __init__(s):
        super().__init__()
        s.down = nn.Conv2d(16, 16, 2, stride=2)

    def forward(s, x):
        y = s.a(x)
        up = F.conv_transpose2d(F.relu(s.down(y)), s.down.weight, stride=2)
        return s.tail(s.b(y + up))


class LayerScaleChannelsLast(Base):
    def __init__(s):
        super().__init__()
        s.norm, s.gamma = nn.LayerNorm(16), nn.Parameter(torch.rand(16) + 0.5)

    def forward(s, x):
        y = s.norm(s.a(x).permute(0, 2, 3, 1)) * s.gamma
        return s.tail(s.b(y.permute(0, 3, 1, 2)))


class ConvWeightAsMatrix(Base):  # a 1x1 conv's weight also read as an einsum matrix
    def __init__(s):
        super().__init__()
        s.c1 = nn.Conv2d(16, 16, 1)

    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(s.c1(y) + torch.einsum("oc,nchw->nohw", s.c1.weight.flatten(1), y)))


class ExpandedAttention(Base):  # a 1-channel map expanded to every channel
    def __init__(s):
        super().__init__()
        s.c1 = nn.Conv2d(16, 1, 1)

    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(y * torch.sigmoid(s.c1(y)).expand(-1, 16, -1, -1)))


class MaxoutPairs(Base):  # the max over pairs of adjacent channels
    def __init__(s):
        super().__init__(b_in=8)

    def forward(s, x):
        y = s.a(x)
        return s.tail(s.b(y.view(y.shape[0], 8, 2, *y.shape[2:]).amax(2)))


class InterpolateOverC(Base):  # a 3-d nearest interpolation doubling the channel axis
    def __init__(s):
        super().__init__(b_in=32)

    def forward(s, x):
        y = F.interpolate(s.a(x).unsqueeze(1), scale_factor=(2, 1, 1), mode="nearest")
        return s.tail(s.b(y.squeeze(1)))


MODELS = [m for m in list(globals().values())
          if isinstance(m, type) and issubclass(m, Base) and m is not Base]
