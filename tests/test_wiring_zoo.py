"""DESIGN.md section 8 properties 1-3 and 6 on hand-written networks with unusual wiring
(tests/wiring_models.py): channel reductions, permutations, pads, repeats, parametrized
weights, recurrent and attention heads; ops that slide, attend or recur over the channel
dimension (tests/wiring_channel_mixers.py); channels reversed, gathered, strided, gated or
stacked, GroupNorm and BatchNorm without statistics (tests/wiring_indexing.py); and torch's
transformer modules on conv features (tests/wiring_transformers.py). A group the analysis
cannot prove safe must be frozen; whatever is pruned must give a compact model equal to the
masked one.

The default run keeps three (DEFAULT: a channel pad, a parametrized weight, cross-attention);
the others, at about 1 s each on 2 CPU cores, run under ``-m slow``.
"""
from __future__ import annotations

import pytest
import torch

from equivalence import check_properties, randomize_norms
from wiring_channel_mixers import MODELS as CHANNEL_MIXERS
from wiring_indexing import MODELS as INDEXING
from wiring_models import MODELS as PLAIN
from wiring_transformers import MODELS as TRANSFORMERS

MODELS = PLAIN + CHANNEL_MIXERS + INDEXING + TRANSFORMERS

DEFAULT = {"PadChannels", "WeightNormParametrized", "CrossAttentionQueries"}
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("factory", [m if m.__name__ in DEFAULT else pytest.param(m, marks=pytest.mark.slow)
                                     for m in MODELS], ids=lambda m: m.__name__)
def test_unusual_wiring_holds_the_properties(factory):
    torch.manual_seed(0)
    model = randomize_norms(factory().eval())
    figures = check_properties(model, X)
    assert figures["groups"] >= 1


def test_every_default_model_exists():
    assert DEFAULT <= {m.__name__ for m in MODELS}
