"""A module's version (a state dict's ``_metadata``) survives every place dmcpfx loads weights
into a model it rebuilt: the supernet's copy (``SearchSpace.to_model``, what
``materialize(space, ...)`` and the search's arch file use), and the weights files of a run
(``save_weights`` / ``load_weights`` / ``apply_weights``). torchvision's MNASNet refuses a
state without it; ``dmcpfx search`` on it failed at its last step with that ValueError."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import dmcpfx
from dmcpfx.errors import ConfigError
from dmcpfx.product.run_dir import apply_weights, load_weights, save_weights
from equivalence import random_widths


class _Versioned(nn.Module):
    """A block whose loader insists on its version, as MNASNet's does."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if local_metadata.get("version") != 2:
            raise ValueError(f"version should be 2 instead of {local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_the_supernet_copy_keeps_the_module_versions():
    torch.manual_seed(0)
    model, x = _Versioned().eval(), torch.randn(1, 3, 8, 8)
    space = dmcpfx.instrument(model, x)
    widths = random_widths(space, 1)
    from_space = dmcpfx.materialize(space, widths, x)  # loads the space's weights into a fresh copy
    with torch.no_grad():
        assert torch.equal(from_space(x), dmcpfx.materialize(model, widths, x)(x))


def test_weights_files_keep_the_module_versions(tmp_path):
    torch.manual_seed(0)
    model = _Versioned().eval()
    path = save_weights(model, tmp_path / "w.pt")
    state = load_weights(path)
    assert state._metadata[""]["version"] == 2
    fresh = apply_weights(_Versioned(), state, str(path))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    # a state without versions (a plain dict, a safetensors file) is of the model's own versions
    apply_weights(_Versioned(), dict(model.state_dict()), "plain.pt")
    old = OrderedDict(model.state_dict())
    old._metadata = OrderedDict({"": {"version": 1}})  # written by an older version of the class
    with pytest.raises(ConfigError, match=r"old\.pt does not fit the model .*version should be 2 instead of 1"):
        apply_weights(_Versioned(), old, "old.pt")
