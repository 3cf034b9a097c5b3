"""derive(expected)'s rounding of E[c] (dmcpfx.search.rounding): every width a neighbour of its E[c],
the count tracking the search's expectation (DESIGN.md section 5: derive moves the count by a
rounding only)."""
from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

import dmcpfx
from dmcpfx.demo_models import small_resnet
from dmcpfx.search.budget import exact_flops, expected_flops, expected_width_values
from dmcpfx.search.rounding import round_expected, round_to_count, valid_widths


def fake_space(widths: dict[str, int], divisor: int = 1):
    groups = {g: SimpleNamespace(width=w, divisor=divisor, candidates=list(range(1, w + 1))) for g, w in widths.items()}
    return SimpleNamespace(groups=groups)


def additive(costs: dict[str, float]):
    return lambda space, widths: sum(costs[g] * w for g, w in widths.items())


def test_the_sum_is_kept_where_nearest_rounding_loses_it():
    space = fake_space({f"g{i}": 8 for i in range(5)})
    e = {g: 2.4 for g in space.groups}  # nearest: 5 x 2 = 10, the expectation is 12
    count = additive({g: 1.0 for g in space.groups})
    assert count(space, round_expected(space, e)) == 10
    widths = round_to_count(space, e, count, aim=12.0)
    assert count(space, widths) == 12
    assert sorted(widths.values()) == [2, 2, 2, 3, 3]


def test_a_pair_of_flips_when_every_single_flip_overshoots():
    space = fake_space({"big": 16, "a": 16})
    e = {"big": 4.4, "a": 4.6}  # nearest: 4 and 5
    count = additive({"big": 3.0, "a": 2.5})  # 12 + 12.5 = 24.5
    # aim 25.5: big up lands on 27.5 (2 away), a down on 22 (3.5 away), both on 25 (0.5 away)
    widths = round_to_count(space, e, count, aim=25.5)
    assert widths == {"big": 5, "a": 4}, widths


def test_the_band_comes_before_the_aim():
    space = fake_space({"a": 8, "b": 8})
    e = {"a": 2.5, "b": 2.5}
    count = additive({"a": 1.0, "b": 3.0})
    # aim 9.4: (2, 2) -> 8 and (3, 2) -> 9 are closer than (2, 3) -> 11, but only 11 is in [10, 12]
    assert count(space, round_to_count(space, e, count, aim=9.4)) == 9
    assert count(space, round_to_count(space, e, count, aim=9.4, band=(10.0, 12.0))) == 11


def test_the_divisor_grid_and_the_bounds_hold():
    space = fake_space({"a": 30, "b": 12}, divisor=4)  # valid: 4..28 and 30; 4, 8, 12
    e = {"a": 29.0, "b": 2.0}  # between 28 and the full 30; below the smallest valid width
    widths = round_to_count(space, e, additive({"a": 1.0, "b": 1.0}), aim=31.0)
    assert widths["b"] == 4 and widths["a"] in (28, 30)
    assert all(w in valid_widths(space)[g] for g, w in widths.items())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_real_models_random_alphas_derive_tracks_expectation(seed):
    """Properties on a real model, random gates (fixed seeds): every width is a valid neighbour of
    its E[c]; the rounded count is at least as close to the aim as the official nearest rounding;
    derive(expected) never exceeds the budget and lands in the band: the target band, whose lower
    edge drops to 0.99 E when the search ended inside its budget band [0.95 T, T] (then the arch
    stays within 2% of E); a search below that band is filled up to the target band."""
    torch.manual_seed(seed)
    space = dmcpfx.instrument(small_resnet(width=10), (torch.randn(1, 3, 28, 28),))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in space.gates().values():
            gate.alpha.copy_(torch.randn(gate.alpha.shape, generator=gen) * 1.5 + 1.0)
    e = expected_width_values(space)
    expected = float(expected_flops(space))
    valid = valid_widths(space)
    for ratio in (0.9, 0.95, 0.98, 1.0):
        target = expected / ratio
        aim = min(max(expected, 0.99 * target), 1.01 * target)
        band = (0.99 * target, 1.01 * target)
        rounded = round_to_count(space, e, exact_flops, aim, band)
        for g, w in rounded.items():
            below = max((v for v in valid[g] if v <= e[g]), default=valid[g][0])
            above = min((v for v in valid[g] if v >= e[g]), default=valid[g][-1])
            assert w in (below, above), (g, w, e[g])

        def score(f):
            return max(band[0] - f, f - band[1], 0.0), abs(f - aim)
        assert score(exact_flops(space, rounded)) <= score(exact_flops(space, round_expected(space, e)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            widths = dmcpfx.derive(space, "expected", target=target)
        f = exact_flops(space, widths)
        reached = expected >= 0.95 * target
        lo = min(band[0], 0.99 * expected) if reached else band[0]
        assert lo <= f <= band[1], (ratio, f / target)
        if reached:
            assert abs(f / expected - 1.0) <= 0.02, (ratio, f / expected)


def test_the_official_nearest_rounding_stays_an_option():
    space = dmcpfx.instrument(small_resnet(width=10), (torch.randn(1, 3, 28, 28),))
    with torch.no_grad():
        for i, gate in enumerate(space.gates().values()):
            gate.alpha.copy_(torch.linspace(2.5, -0.5 - 0.2 * i, gate.alpha.numel()))
    e = expected_width_values(space)
    nearest = round_expected(space, e)
    target = exact_flops(space, nearest)  # the nearest rounding lies exactly on the target
    assert dmcpfx.derive(space, "expected", target=target, rounding="nearest") == nearest
    with pytest.raises(dmcpfx.ConfigError, match="rounding"):
        dmcpfx.derive(space, "expected", target=target, rounding="floor")
