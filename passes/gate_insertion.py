"""FX pass: insert Markov gates into a traced model (DESIGN.md section 3).

Each prunable group's gate is called once at the top of the graph and returns its
channel mask (shape ``(C,)``, or None for all ones). Every consumer of a pruned
channel — the input of a conv or linear, and LayerNorms over channels — gets the
mask of the segments that make up its input channels. Masking the *consumers*
rather than the producers makes a hard mask exactly equivalent to removing the
channels, whatever sits in between (sigmoid gates, biases, residual adds): a
removed channel's values still flow through per-channel ops but no layer that
mixes channels ever reads them.

Where the consumer is a convolution with ``groups == 1`` or a linear layer, a HARD mask
(``min``/``width`` modes: constants) multiplies the consumer's weight along its input-channel
dim instead of the input activation: ``conv(x * m, W) == conv(x, W * m)``, the same zeros,
the same gradients, at the cost of the (small) weight rather than of the (large) activation.
A SOFT mask (``expected`` mode, which carries the alphas' gradient) stays on the
activation, where its gradient costs an elementwise product rather than a weight-gradient
convolution.
"""
from __future__ import annotations

import copy
import re

import torch
import torch.nn.functional as F
from torch import fx, nn

MaskSpec = tuple  # (dim, block, ((length, gate_index or -1), ...))


def build_mask(spec: MaskSpec, masks, like: torch.Tensor) -> torch.Tensor | None:
    """The mask along a layout's dim, shape ``(extent,)`` in ``like``'s dtype, or None."""
    _dim, block, segs = spec
    if all(i < 0 or masks[i] is None for _length, i in segs):
        return None
    pieces = []
    for length, i in segs:
        m = masks[i] if i >= 0 else None
        pieces.append(m if m is not None else torch.ones(length, device=like.device))
    mask = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    if block > 1:
        mask = mask.repeat_interleave(block)
    return mask.to(like.dtype)


def apply_channel_mask(x: torch.Tensor, spec: MaskSpec, *masks) -> torch.Tensor:
    """Multiply ``x`` by the channel mask along ``spec``'s dim (identity when all kept)."""
    mask = build_mask(spec, masks, x)
    if mask is None:
        return x
    shape = [1] * x.ndim
    shape[spec[0]] = -1
    return x * mask.view(shape)


def _soft(masks) -> bool:
    """True when a mask carries a gradient (``expected`` mode under autograd)."""
    return any(m is not None and m.requires_grad for m in masks)


def mask_consumer_input(x: torch.Tensor, spec: MaskSpec, *masks) -> torch.Tensor:
    """The input of a weight-masked consumer: masked only by a soft mask (see the module doc)."""
    return apply_channel_mask(x, spec, *masks) if _soft(masks) else x


def mask_consumer_weight(weight: torch.Tensor, spec: MaskSpec, *masks) -> torch.Tensor:
    """The weight of a weight-masked consumer: a hard mask along ``spec``'s dim (the weight's
    input-channel dim), identity for a soft mask or when every channel is kept."""
    return weight if _soft(masks) else apply_channel_mask(weight, spec, *masks)


def width_aware_layer_norm(x, spec: MaskSpec, weight, bias, eps: float, *masks):
    """LayerNorm over the last dim whose mean and variance use the kept channels only.

    With a 0/1 mask this equals ``F.layer_norm`` on the kept channels alone (the
    removed channels' outputs are never read); with soft masks (``expected`` mode)
    the statistics are mask-weighted.
    """
    mask = build_mask(spec, masks, x)
    if mask is None:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    denom = mask.sum().clamp_min(torch.finfo(mask.dtype).tiny)
    mean = (x * mask).sum(-1, keepdim=True) / denom
    centered = x - mean
    var = (centered * centered * mask).sum(-1, keepdim=True) / denom
    y = centered * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def gate_key(group_id: str, taken: set[str]) -> str:
    """A ModuleDict-safe key for a group id (dots and other symbols become '_')."""
    key = re.sub(r"\W", "_", group_id) or "group"
    base, k = key, 1
    while key in taken:
        k += 1
        key = f"{base}_{k}"
    taken.add(key)
    return key


def insert_gates(channel_graph, gates: nn.ModuleDict, keys: dict[str, str]) -> dict[str, fx.GraphModule]:
    """Return instrumented copies of the traced graphs (``{"eval": gm, "train": gm}``).

    ``gates`` maps gate keys to :class:`~dmcpfx.search.gates.MarkovGate` modules and
    ``keys`` maps group ids to those keys; the copies share every original module
    (so training the instrumented model trains the original weights).
    """
    out: dict[str, fx.GraphModule] = {}
    done: dict[int, fx.GraphModule] = {}
    for tag in ("eval", "train"):
        gm = channel_graph.graph_modules[tag]
        if id(gm) in done:
            out[tag] = done[id(gm)]
            continue
        new = fx.GraphModule(gm, copy.deepcopy(gm.graph), type(gm).__name__)
        new.dmcpfx_gates = gates
        _instrument_graph(new, channel_graph, keys, tag)
        done[id(gm)] = new
        out[tag] = new
    return out


def _instrument_graph(gm: fx.GraphModule, channel_graph, keys: dict[str, str], tag: str) -> None:
    graph = gm.graph
    nodes = {n.name: n for n in graph.nodes}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    gate_nodes: dict[str, fx.Node] = {}
    anchor = placeholders[-1] if placeholders else next(iter(graph.nodes))

    def gate_node(gid: str) -> fx.Node:
        nonlocal anchor
        if gid not in gate_nodes:
            if placeholders:
                ctx = graph.inserting_after(anchor)
            else:
                ctx = graph.inserting_before(anchor)
            with ctx:
                gate_nodes[gid] = graph.call_module(f"dmcpfx_gates.{keys[gid]}", ())
            if placeholders:
                anchor = gate_nodes[gid]
        return gate_nodes[gid]

    for site in channel_graph.mask_sites:
        if site.graph != tag:
            continue
        node = nodes[site.node]
        spec, gate_args = _mask_spec(channel_graph, site.layout, keys, gate_node)
        if not gate_args:
            continue
        if site.kind == "consumer" and _weight_maskable(node, site):
            with graph.inserting_before(node):
                masked = graph.call_function(mask_consumer_input, (node.args[0], spec, *gate_args))
                weight = graph.call_function(mask_consumer_weight, (node.args[1], (1, *spec[1:]), *gate_args))
            node.update_arg(0, masked)
            node.update_arg(1, weight)
        elif site.kind == "consumer":
            with graph.inserting_before(node):
                masked = graph.call_function(apply_channel_mask, (node.args[site.arg], spec, *gate_args))
            node.update_arg(site.arg, masked)
        else:
            _replace_layer_norm(gm, node, spec, gate_args)
    graph.lint()
    gm.recompile()


#: consumers whose input-channel mask may move onto the weight, keyed by op:
#: (spatial dims of the input, index of ``groups`` in the args or None, index of ``transposed``
#: or None). Every weight here is ``(out, in, *kernel)``: its input-channel dim is 1.
_WEIGHT_MASKED = {
    torch.ops.aten.conv1d.default: (1, 6, None),
    torch.ops.aten.conv2d.default: (2, 6, None),
    torch.ops.aten.conv3d.default: (3, 6, None),
    torch.ops.aten.convolution.default: (None, 8, 6),
    torch.ops.aten.linear.default: (0, None, None),
}


def _weight_maskable(node: fx.Node, site) -> bool:
    """True when ``site`` masks the input (arg 0) of a :data:`_WEIGHT_MASKED` op along its channel
    dim, with one group and a weight node; anything else keeps the activation mask."""
    rule = _WEIGHT_MASKED.get(node.target) if node.op == "call_function" else None
    if rule is None or site.arg != 0 or node.kwargs or len(node.args) < 2:
        return False
    spatial, groups_at, transposed_at = rule
    x, weight = node.args[0], node.args[1]
    val, wval = getattr(x, "meta", {}).get("val"), getattr(weight, "meta", {}).get("val")
    if not isinstance(weight, fx.Node) or not isinstance(val, torch.Tensor) or not isinstance(wval, torch.Tensor):
        return False
    if groups_at is not None and len(node.args) > groups_at and node.args[groups_at] != 1:
        return False
    if transposed_at is not None and (len(node.args) <= transposed_at or node.args[transposed_at] is not False):
        return False
    if spatial is None:
        spatial = wval.ndim - 2
    channel_dim = val.ndim - 1 - spatial
    return site.layout.dim == channel_dim and wval.ndim == spatial + 2 and wval.shape[1] == val.shape[channel_dim]


def _mask_spec(channel_graph, layout, keys, gate_node):
    segs, gate_args, index = [], [], {}
    for seg in layout.segs:
        group = channel_graph.group_of(seg)
        if group.id in keys and seg.length == group.width:
            if group.id not in index:
                index[group.id] = len(gate_args)
                gate_args.append(gate_node(group.id))
            segs.append((seg.length, index[group.id]))
        else:
            segs.append((seg.length, -1))
    return (layout.dim, layout.block, tuple(segs)), gate_args


def _replace_layer_norm(gm: fx.GraphModule, node: fx.Node, spec, gate_args) -> None:
    graph = gm.graph
    with graph.inserting_before(node):
        if node.op == "call_module":
            ln = gm.get_submodule(node.target)
            weight = graph.get_attr(f"{node.target}.weight") if ln.weight is not None else None
            bias = graph.get_attr(f"{node.target}.bias") if ln.bias is not None else None
            args = (node.args[0], spec, weight, bias, ln.eps, *gate_args)
        else:  # F.layer_norm(input, normalized_shape, weight, bias, eps)
            a = list(node.args) + [None] * (5 - len(node.args))
            weight = node.kwargs.get("weight", a[2])
            bias = node.kwargs.get("bias", a[3])
            eps = node.kwargs.get("eps", a[4] if a[4] is not None else 1e-5)
            args = (a[0], spec, weight, bias, eps, *gate_args)
        new = graph.call_function(width_aware_layer_norm, args)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
