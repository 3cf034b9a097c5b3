"""More hand-written networks for tests/test_wiring_zoo.py: ops that slide, attend or recur
over the channel dimension (ECA's 1-d conv, a 3-d conv over (C, H, W), Restormer's channel
attention, a GRU reading channels as a sequence), global-context pooling, channels folded into
the batch, a LayerNorm over (C, H, W) and learned channels concatenated to a feature map. The
same stem ``a`` / block ``b`` / head layout as tests/wiring_models.py. Input ``(2, 3, 8, 8)``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wiring_models import Base


class EfficientChannelAttention(Base):  # ECA-Net: a 1-d conv across the pooled channels
    def __init__(s):
        super().__init__()
        s.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(s, x):
        y = s.a(x)
        w = torch.sigmoid(s.eca(y.mean((2, 3)).unsqueeze(1))).transpose(1, 2).unsqueeze(-1)
        return s.tail(s.b(y * w))


class Conv3dOverChannels(Base):  # channels become the depth of a 3-d conv
    def __init__(s):
        super().__init__(b_in=32)
        s.c3 = nn.Conv3d(1, 2, 3, padding=1)

    def forward(s, x):
        return s.tail(s.b(s.c3(s.a(x).unsqueeze(1)).flatten(1, 2)))


class ChannelAttention(Base):  # Restormer's MDTA: a (C x C) attention map per head
    def __init__(s):
        super().__init__()
        s.qkv, s.proj = nn.Conv2d(16, 48, 1), nn.Conv2d(16, 16, 1)

    def forward(s, x):
        y = s.a(x)
        n, c, h, w = y.shape
        q, k, v = (t.reshape(n, 2, 8, h * w) for t in s.qkv(y).chunk(3, 1))
        att = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)).softmax(-1)
        return s.tail(s.b(y + s.proj((att @ v).reshape(n, c, h, w))))


class GlobalContext(Base):  # GCNet: softmax-pooled context through a bottleneck, added back
    def __init__(s):
        super().__init__()
        s.key, s.t1, s.t2 = nn.Conv2d(16, 1, 1), nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)

    def forward(s, x):
        y = s.a(x)
        att = s.key(y).flatten(2).softmax(-1)
        ctx = torch.bmm(y.flatten(2), att.transpose(1, 2)).unsqueeze(-1)
        return s.tail(s.b(y + s.t2(F.relu(s.t1(ctx)))))


class GRUOverChannels(Base):  # each channel is a time step of 64 features
    def __init__(s):
        super().__init__()
        s.rnn, s.head = nn.GRU(64, 8, batch_first=True), nn.Linear(8, 5)

    def forward(s, x):
        out, _ = s.rnn(s.b(s.a(x)).flatten(2))
        return s.head(out[:, -1])


class ChannelsAsBatch(Base):  # one 3x3 filter shared by every channel, channels folded into the batch
    def __init__(s):
        super().__init__()
        s.shared = nn.Conv2d(1, 1, 3, padding=1)

    def forward(s, x):
        y = s.a(x)
        n, c, h, w = y.shape
        return s.tail(s.b(s.shared(y.reshape(n * c, 1, h, w)).reshape(n, c, h, w)))


class LayerNormOverCHW(Base):
    def __init__(s):
        super().__init__()
        s.norm = nn.LayerNorm([16, 8, 8])

    def forward(s, x):
        return s.tail(s.b(s.norm(s.a(x))))


class LearnedChannelsConcat(Base):  # 4 learned constant channels appended to the features
    def __init__(s):
        super().__init__(b_in=20)
        s.extra = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(s, x):
        y = s.a(x)
        n, _, h, w = y.shape
        return s.tail(s.b(torch.cat([y, s.extra.expand(n, -1, h, w)], 1)))


MODELS = [m for m in list(globals().values())
          if isinstance(m, type) and issubclass(m, Base) and m is not Base]
