"""MarkovGate split, modes and masks (DESIGN.md section 3)."""
import pytest
import torch

from dmcpfx.search.gates import MarkovGate, split_channels


@pytest.mark.parametrize("width,divisor", [(64, 1), (100, 8), (256, 8), (12, 8), (30, 4), (1000, 1)])
def test_candidates_respect_the_divisor(width, divisor):
    split = split_channels(width, divisor=divisor)
    cands = split.candidates
    assert cands[-1] == width and cands == sorted(cands)
    assert all(c % divisor == 0 for c in cands[:-1])
    assert cands[0] >= max(divisor, 0.1 * width) - 1e-9 or split.n == 0
    assert len(split.blocks) == split.n and sum(split.blocks) == width - split.min_ch


def test_official_split_of_64_channels():
    split = split_channels(64)
    assert (split.min_ch, split.g, split.n) == (10, 6, 9)


def test_expected_width_uses_block_sizes_and_matches_mask_sum():
    gate = MarkovGate(split_channels(100, divisor=8))
    with torch.no_grad():
        gate.alpha.copy_(torch.linspace(2, -2, gate.split.n))
    p = torch.sigmoid(gate.alpha)
    marg = torch.cumprod(p, 0)
    sizes = torch.tensor(gate.split.blocks, dtype=torch.float32)
    assert torch.allclose(gate.expected_width(), gate.split.min_ch + (sizes * marg).sum())
    gate.set_mode("expected")
    assert torch.allclose(gate().sum(), gate.expected_width())


def test_hard_modes_keep_leading_channels_in_markov_order():
    order = torch.tensor([g * 4 + j for j in range(4) for g in range(2)])  # 2 conv groups of 4
    gate = MarkovGate(split_channels(8, divisor=2), order)
    gate.set_mode("width", 4)
    assert gate().tolist() == [1, 1, 0, 0, 1, 1, 0, 0]  # first 2 channels of each conv group
    gate.set_mode("min")
    assert gate().sum().item() == gate.split.min_ch
    gate.set_mode("max")
    assert gate() is None
    with pytest.raises(ValueError, match="gate width"):
        gate.set_mode("width", 9)


def test_sample_is_a_candidate_and_saturated_alphas_are_deterministic():
    gate = MarkovGate(split_channels(64))
    gen = torch.Generator().manual_seed(0)
    assert all(gate.sample(gen) in gate.candidates for _ in range(50))
    with torch.no_grad():
        gate.alpha.fill_(30.0)
    assert gate.sample(gen) == 64
    with torch.no_grad():
        gate.alpha.fill_(-30.0)
    assert gate.sample(gen) == gate.split.min_ch
