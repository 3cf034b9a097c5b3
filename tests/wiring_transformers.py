"""Hand-written networks with torch's transformer modules on conv features (tests/wiring_models.py's
stem ``a``, block ``b`` and head): encoder layers (their eval-mode fused fast path), cross-attention
(``in_proj_weight`` split between the query and the key / value), separate key / value inputs and a
decoder layer. Input ``(2, 3, 8, 8)``."""
from __future__ import annotations

import torch
from torch import nn

from wiring_models import Base


def _tokens(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C)


class EncoderStack(Base):
    def __init__(s):
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, dropout=0.0)
        s.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(s, x):
        return s.head(s.enc(_tokens(s.b(s.a(x)))).mean(1))


class EncoderSequenceFirst(Base):
    def __init__(s):
        super().__init__()
        s.enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0)

    def forward(s, x):
        return s.head(s.enc(s.b(s.a(x)).flatten(2).permute(2, 0, 1)).mean(0))


class CrossAttentionQueries(Base):
    def __init__(s):
        super().__init__()
        s.att, s.q = nn.MultiheadAttention(16, 4, batch_first=True), nn.Parameter(torch.randn(1, 3, 16))

    def forward(s, x):
        t = _tokens(s.b(s.a(x)))
        return s.head(s.att(s.q.expand(t.shape[0], -1, -1), t, t, need_weights=False)[0].mean(1))


class SeparateKeyValue(Base):
    def __init__(s):
        super().__init__()
        s.att, s.c = nn.MultiheadAttention(16, 4, kdim=16, vdim=16, batch_first=True), nn.Conv2d(3, 16, 3, padding=1)

    def forward(s, x):
        t, u = _tokens(s.b(s.a(x))), _tokens(s.c(x))
        return s.head(s.att(t, u, u)[0].mean(1))


class DecoderLayer(Base):
    def __init__(s):
        super().__init__()
        s.dec = nn.TransformerDecoderLayer(16, 4, 32, batch_first=True, dropout=0.0)
        s.q = nn.Parameter(torch.randn(1, 3, 16))

    def forward(s, x):
        t = _tokens(s.b(s.a(x)))
        return s.head(s.dec(s.q.expand(t.shape[0], -1, -1), t).mean(1))


MODELS = [EncoderStack, EncoderSequenceFirst, CrossAttentionQueries, SeparateKeyValue, DecoderLayer]
