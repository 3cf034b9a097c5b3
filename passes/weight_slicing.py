"""FX pass: cut pruned channels out of a model's weights (DESIGN.md section 7).

:func:`slice_model` edits a model in place: every parameter / buffer the analysis
recorded is index-selected along its channel dim to the kept indices of the given
widths (the LEADING channels in Markov order), and every module's attributes
(``in_channels``, ``num_features``, ``normalized_shape``, ...) follow. The model
keeps its class and its state_dict keys.

:func:`patch_constants` rewrites literal channel counts held in a traced graph's
arguments (``x.view(-1, 512 * 7 * 7)``) for the GraphModule fallback.
"""
from __future__ import annotations

import torch
from torch import fx, nn


def owner_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, attr = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), attr


def _set_tensor(owner: nn.Module, attr: str, new: torch.Tensor) -> None:
    old = getattr(owner, attr)
    _put(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new)


def _put(owner: nn.Module, attr: str, value: torch.Tensor) -> None:
    if attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        setattr(owner, attr, value)


def _aliases(model: nn.Module) -> dict[int, tuple[torch.Tensor, list[str]]]:
    """Every qualified name of each parameter / buffer, keyed by the tensor's identity (tied
    weights have several; ``named_parameters()`` alone would show only the first). The entry
    holds the tensor, so that no identity is reused while the dict lives."""
    names: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), (t, []))[1].append(name)
    return names


def slice_model(model: nn.Module, channel_graph, widths: dict[str, int]) -> None:
    """Slice ``model`` (whose analysis is ``channel_graph``) in place to ``widths``. A tensor
    held under several names (tied weights) gets its sliced copy under every name, so it stays
    tied: the analysis saw one tensor, under the one name that export gave it."""
    aliases = _aliases(model)
    tied_modules: dict[str, str] = {}  # a module holding a tied copy -> the module the analysis saw
    for spec in channel_graph.slices:
        owner, attr = owner_of(model, spec.tensor)
        tensor = getattr(owner, attr)
        idx = channel_graph.kept_indices(spec.layout, widths)
        if spec.grouped > 1:
            per_group = spec.layout.extent // spec.grouped
            idx = idx[idx < per_group]
        if idx.numel() == tensor.shape[spec.dim]:
            continue
        with torch.no_grad():
            new = tensor.detach().index_select(spec.dim, idx.to(tensor.device)).clone()
        _set_tensor(owner, attr, new)
        names = aliases.get(id(tensor), (tensor, [spec.tensor]))[1]
        made = getattr(owner, attr)
        aliases[id(made)] = (made, names)
        for alias in names:
            if alias != spec.tensor:
                alias_owner, alias_attr = owner_of(model, alias)
                _put(alias_owner, alias_attr, made)
                tied_modules[alias.rpartition(".")[0]] = spec.tensor.rpartition(".")[0]
    for edit in channel_graph.edits.values():
        update_attributes(model.get_submodule(edit.module), edit, channel_graph, widths)
    for module, seen in tied_modules.items():  # same class, same tensor: the same attribute edit
        edit = channel_graph.edits.get(seen)
        if module not in channel_graph.edits and edit is not None and \
                type(model.get_submodule(module)) is type(model.get_submodule(seen)):
            update_attributes(model.get_submodule(module), edit, channel_graph, widths)


def update_attributes(m: nn.Module, edit, channel_graph, widths) -> None:
    if edit.kind == "conv":
        m.out_channels = m.weight.shape[0]
        m.in_channels = m.weight.shape[1] * m.groups
    elif edit.kind == "tconv":  # a transposed conv's weight is (in, out / groups, *kernel)
        m.in_channels = m.weight.shape[0]
        m.out_channels = m.weight.shape[1] * m.groups
    elif edit.kind == "dwconv":
        c = m.weight.shape[0]
        m.in_channels = m.out_channels = m.groups = c
    elif edit.kind == "linear":
        m.out_features, m.in_features = m.weight.shape
    elif edit.kind in ("batchnorm", "instancenorm"):
        m.num_features = int(channel_graph.kept_extent(edit.layout, widths))
    elif edit.kind == "layernorm":
        m.normalized_shape = (int(channel_graph.kept_extent(edit.layout, widths)),)
    elif edit.kind == "groupnorm":
        per_group = m.num_channels // m.num_groups
        m.num_channels = int(channel_graph.kept_extent(edit.layout, widths))
        m.num_groups = m.num_channels // per_group
    elif edit.kind == "prelu":
        m.num_parameters = m.weight.shape[0]


def spell_out_args(node: fx.Node, last: int) -> None:
    """Give ``node`` positional arguments up to index ``last`` (schema defaults filled in)."""
    schema = node.target._schema.arguments
    args = list(node.args)
    for pos in range(len(args), last + 1):
        name = schema[pos].name
        args.append(node.kwargs[name] if name in node.kwargs else schema[pos].default_value)
    node.args = tuple(args)
    node.kwargs = {k: v for k, v in node.kwargs.items() if k not in {a.name for a in schema[:last + 1]}}


def set_constant(node: fx.Node, entry, value) -> None:
    """Put ``value`` (an int, or a Node that yields one) where ``entry`` points in ``node``'s
    arguments (``spell_out_args`` must have given it that argument)."""
    if entry.index is None:
        node.update_arg(entry.arg, value)
    else:
        sizes = list(node.args[entry.arg])
        sizes[entry.index] = value
        node.update_arg(entry.arg, sizes)


def as_split_with_sizes(node: fx.Node, sizes) -> None:
    """``split.Tensor(self, size, dim)`` -> ``split_with_sizes(self, sizes, dim)``."""
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    node.target = torch.ops.aten.split_with_sizes.default
    node.args, node.kwargs = (node.args[0], sizes, dim), {}


def patch_constants(gm: fx.GraphModule, channel_graph, widths: dict[str, int], tag: str) -> None:
    """Rewrite the literal channel counts in ``gm``'s arguments (view sizes, split sizes,
    slice bounds, depthwise ``groups``, GroupNorm ``num_groups``, LayerNorm shapes)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    for site in channel_graph.constant_sites:
        if site.graph != tag or site.node not in nodes:
            continue
        node = nodes[site.node]
        if site.kind == "split":
            as_split_with_sizes(node, [int(channel_graph.kept_extent(e.layout, widths)) for e in site.entries])
            continue
        spell_out_args(node, max(e.arg for e in site.entries))
        for entry in site.entries:
            set_constant(node, entry, int(channel_graph.kept_extent(entry.layout, widths)) // entry.divide)
    gm.recompile()
