"""Prune one submodule of a model that cannot be exported whole (a detector's backbone).

The submodule's example inputs are captured by running the whole model once on its
example inputs (eval mode, a forward pre-hook on the submodule). The submodule is
then analyzed on its own: its outputs are model outputs there, so they are frozen,
and the rest of the model sees tensors of the same shapes after pruning.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import AnalysisError, ConfigError
from ..inputs import as_tuple
from .model_state import preserved_state


def resolve_submodule(model: nn.Module, path: str | None) -> nn.Module:
    """The submodule at ``path`` (e.g. ``backbone``), or ``model`` itself for None / ''."""
    if not path:
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"submodule '{path}' does not exist in {type(model).__name__}") from None


def capture_inputs(model: nn.Module, example_inputs, path: str) -> tuple[torch.Tensor, ...]:
    """The positional tensor inputs of submodule ``path`` when ``model`` runs ``example_inputs``.

    The model's buffers, modes and the RNG state are left as they were.
    """
    sub = resolve_submodule(model, path)
    seen: list[tuple] = []

    def hook(_module, args, kwargs):
        if not seen:
            seen.append((args, kwargs))

    handle = sub.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with preserved_state(model), torch.no_grad():
            model.eval()
            model(*as_tuple(example_inputs))
    except Exception as exc:  # noqa: BLE001 - one line naming the model
        raise AnalysisError(f"running {type(model).__name__} to capture the inputs of '{path}' failed: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        handle.remove()
    if not seen:
        raise ConfigError(f"submodule '{path}' is never called by {type(model).__name__}.forward")
    args, kwargs = seen[0]
    if kwargs or not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise ConfigError(f"submodule '{path}' is called with non-tensor or keyword arguments; "
                          "only tensor positional inputs can be captured")
    return tuple(a.detach().clone() for a in args)


def replace_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path`` inside ``model`` (in place)."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)
