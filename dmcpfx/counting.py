"""Independent FLOPs / parameter counters (DESIGN.md section 4).

MACs (multiply-accumulates) PER IMAGE, the papers' convention, counted at the ATen
dispatch level while the model runs, so they measure whatever module is passed (the
original class, a compact model or a GraphModule) without using the analysis:

- every convolution: ``out.numel() * (in_channels / groups) * prod(kernel)``; a transposed one:
  ``input.numel() * (out_channels / groups) * prod(kernel)``;
- every matrix product (``mm`` / ``addmm`` / ``bmm``, which ``linear`` dispatches to)
  with an operand stored in one of the model's parameters or buffers (or a view of one):
  ``out.numel() * contracted_dim``;
- the fused fast paths of ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` (eval
  mode): their projections and feed-forward layers, from their weights' shapes;
- recurrent layers (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``): every weight matrix once per
  token, ``tokens * sum(W.numel())``, whether the backend runs them as matrix products (counted
  as such) or as one fused kernel (oneDNN's ``mkldnn_rnn_layer``, cuDNN's ``_cudnn_rnn``,
  MIOpen's ``miopen_rnn``: counted from their weights, :func:`fused_rnn_macs`).

Products of two activations (attention scores), biases, norms and activations are
not counted. One eval-mode forward runs on the first image of ``example_inputs``
(dim 0 is the batch): MACs per image, as at batch 1, so an op computed once per
forward (a positional encoding) counts once. torchvision resnet50 at 224x224 gives
about 4.09e9.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .inputs import as_tuple

_aten = torch.ops.aten
_CONVS = {_aten.convolution.default, _aten._convolution.default, _aten.convolution_overrideable.default}
_PRODUCTS = {_aten.mm.default: (0, 1), _aten.addmm.default: (1, 2), _aten.bmm.default: (0, 1)}
#: fused recurrent kernels -> where their weight matrices are: ("each", indices) for one layer's
#: tensors, ("list", index) for a list of every layer's weights (biases are 1-D, skipped)
_FUSED_RNNS = {"mkldnn_rnn_layer": ("each", (1, 2)), "_cudnn_rnn": ("list", 1), "miopen_rnn": ("list", 1)}


def fused_rnn_macs(op_name: str, args) -> int | None:
    """MACs of one call of a fused recurrent kernel (None for another op): each 2-d weight
    matrix ``W`` is applied once per token, ``tokens * W.numel()``, tokens being every row of
    ``input`` (``(T, N, in)``, ``(N, T, in)`` or packed ``(tokens, in)``), as the same layer
    computed with matrix products counts."""
    spec = _FUSED_RNNS.get(op_name)
    if spec is None:
        return None
    kind, where = spec
    weights = [args[i] for i in where] if kind == "each" else list(args[where])
    tokens = args[0].numel() // max(1, args[0].shape[-1])
    return tokens * sum(w.numel() for w in weights if isinstance(w, torch.Tensor) and w.ndim == 2)


class _MacCounter(TorchDispatchMode):
    def __init__(self, param_storages: set[int]) -> None:
        super().__init__()
        self.params = param_storages
        self.total = 0

    def _is_param(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in self.params

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _CONVS:
            # weight (out, in / groups, *kernel): each OUTPUT element takes in / groups * kernel MACs;
            # transposed (in, out / groups, *kernel): each INPUT element gives out / groups * kernel
            weight, elements = args[1], (args[0] if args[6] else out)
            self.total += elements.numel() * weight.shape[1] * math.prod(weight.shape[2:])
        elif func is _aten._native_multi_head_attention.default:  # nn.MultiheadAttention's fast path
            # the q projection on the query's tokens, k and v on the key's, the output projection
            # (proj_weight (out, embed): a compact model may have fewer outputs than embed_dim)
            query, key, embed, qkv_weight, proj_weight = args[0], args[1], args[3], args[5], args[7]
            q_tokens, kv_tokens = query.numel() // embed, key.numel() // embed
            self.total += (q_tokens + 2 * kv_tokens) * qkv_weight.shape[1] * embed + q_tokens * proj_weight.numel()
        elif func is _aten._transformer_encoder_layer_fwd.default:  # nn.TransformerEncoderLayer's fast path
            # qkv, the output projection and the two feed-forward layers, on every token
            tokens = args[0].numel() // args[1]
            self.total += tokens * sum(args[i].numel() for i in (3, 5, 14, 16))
        elif func in _PRODUCTS:
            a, b = (args[i] for i in _PRODUCTS[func])
            if self._is_param(a) or self._is_param(b):
                self.total += out.numel() * a.shape[-1]
        else:
            self.total += fused_rnn_macs(func.overloadpacket.__name__, args) or 0
        return out


def count_flops(model: nn.Module, example_inputs) -> int:
    """MACs per image of convolutions and products with a parameter or buffer, eval-mode forward."""
    inputs = as_tuple(example_inputs)
    storages = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    modes = {m: m.training for m in model.modules()}
    counter = _MacCounter(storages)
    inputs = tuple(t[:1] for t in inputs)  # one image: what a batch of 1 costs
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return int(counter.total)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return int(sum(p.numel() for p in model.parameters()))
