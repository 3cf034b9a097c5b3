"""The search reaches its budget by itself (DESIGN.md section 5; dmcpfx.search.alpha_init).

``alpha_init="budget"`` starts every alpha at one common value that puts the expected count
at 99% of the target, so the search ends inside the band whatever the number of
architecture steps; ``"zero"`` is the official start (expected MACs near 4% of the model).
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from dmcpfx.config import Config, apply_overrides
from dmcpfx.config_checks import validate_config
from dmcpfx.errors import ConfigError
from dmcpfx.plots import plot_search
from dmcpfx.search.alpha_init import START_FRACTION, budget_alpha, init_alphas
from dmcpfx.search.budget import exact_flops, expected_flops, expected_params
from dmcpfx.search.derive import derive
from dmcpfx.search.loop import search
from test_search import loaders, make_space

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("metric", ["flops", "params"])
def test_budget_start_puts_the_expectation_at_the_target(metric):
    space = make_space()
    expected = expected_flops if metric == "flops" else expected_params
    full = float(space.full_flops if metric == "flops" else space.params())
    starts = []
    for ratio in (0.1, 0.25, 0.5, 0.9):
        target = ratio * full
        a = init_alphas(space, "budget", target, expected)
        alphas = torch.cat([p.detach().flatten() for p in space.arch_parameters()])
        assert torch.all(alphas == a)  # one common value: the uniform network of that budget
        assert float(expected(space).detach()) / target == pytest.approx(START_FRACTION, rel=1e-6)
        starts.append(a)
    assert starts == sorted(starts)  # a larger budget starts wider


def test_budget_alpha_clamps_out_of_reach_goals():
    space = make_space()
    assert budget_alpha(space, 10.0 * space.full_flops, expected_flops) == 16.0
    assert budget_alpha(space, 1.0, expected_flops) == -16.0


def test_zero_start_leaves_the_official_alphas():
    space = make_space()
    assert init_alphas(space, "zero", 0.5 * space.full_flops, expected_flops) is None
    assert all(torch.all(p == 0) for p in space.arch_parameters())
    with pytest.raises(ConfigError, match="alpha_init"):
        init_alphas(space, "uniform", 1.0, expected_flops)


@pytest.mark.parametrize("n_train,epochs,ratio", [(64, 2, 0.5), (256, 4, 0.25), (256, 2, 0.1)])
def test_search_ends_in_its_band_whatever_the_number_of_arch_steps(tmp_path, n_train, epochs, ratio):
    """1, 8 and 4 architecture steps: the expectation ends in [0.93 T, 1.02 T] and derive(expected)
    moves the count by at most 2% from it, without the far-from-E warning."""
    train, _ = loaders(n_train, 32, batch_size=32)
    space = make_space()
    result = search(space, train, target=ratio, epochs=epochs, run_dir=tmp_path / "run", lr=0.2,
                    min_lr=0.02, calib_batches=1, progress=False, log_interval=1)
    assert 0.93 <= result.expected / result.target <= 1.02, result.expected / result.target
    start = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1]
    assert start["kind"] == "start" and start["alpha_init"] == "budget"
    assert start["expected"] / start["target"] == pytest.approx(START_FRACTION, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        widths = derive(space, "expected", target=ratio)
    assert abs(exact_flops(space, widths) / result.expected - 1.0) <= 0.02


def test_official_start_is_kept_and_derive_says_when_it_fills(tmp_path):
    train, _ = loaders(64, 32, batch_size=32)
    space = make_space()
    result = search(space, train, target=0.5, epochs=2, run_dir=tmp_path / "run", alpha_init="zero",
                    calib_batches=1, progress=False)
    assert result.expected < 0.5 * result.target  # two architecture steps climb nowhere near the target
    with pytest.warns(UserWarning, match="from that fill"):
        derive(space, "expected", target=0.5)
    # a resume under another start is refused, naming the option
    with pytest.raises(ConfigError, match="alpha_init"):
        search(space, train, target=0.5, epochs=2, run_dir=tmp_path / "run", resume=True, progress=False,
               calib_batches=1)


def test_config_key_is_validated():
    cfg = apply_overrides(Config(), ["search.alpha_init=zero"])
    validate_config(cfg)
    with pytest.raises(ConfigError, match="search.alpha_init"):
        validate_config(apply_overrides(Config(), ["search.alpha_init=uniform"]))


def test_search_plot_draws_the_records(tmp_path):
    records = [
        {"kind": "slimmable", "sliced": True},
        {"kind": "start", "step": 0, "expected": 99.0, "target": 100.0, "expected_widths": {"a": 4.0, "b": 6.0}},
        {"kind": "step", "step": 5, "expected": 101.0, "target": 100.0},
        {"kind": "epoch", "step": 10, "expected": 98.0, "target": 100.0, "expected_widths": {"a": 5.0, "b": 5.5}},
    ]
    plot_search(records, {"a": 8, "b": 8}, tmp_path / "search.png")
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no search records"):
        plot_search(records[:1], {"a": 8}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_search_never_deletes_a_metrics_file_it_cannot_resume(tmp_path):
    """A run_dir holding a metrics.jsonl but no checkpoint (the user's own, or a run killed before
    its first epoch ended) is refused untouched unless resume=True asks to start it over."""
    train, _ = loaders(64, 32, batch_size=32)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("my own notes\n")
    with pytest.raises(ConfigError, match="metrics.jsonl already exists but no checkpoint"):
        search(make_space(), train, target=0.5, epochs=1, run_dir=run, progress=False, calib_batches=0)
    assert (run / "metrics.jsonl").read_text() == "my own notes\n"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]
    search(make_space(), train, target=0.5, epochs=1, run_dir=run, resume=True, progress=False,
           calib_batches=0)
    assert "my own notes" not in (run / "metrics.jsonl").read_text()
