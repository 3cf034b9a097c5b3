"""Per-layer latency tables and the expected latency under the Markov gates (DESIGN.md section 4).

Most tests replace the timer with an analytic cost (so they are fast and exact); one measures a
tiny model with ONNX Runtime to check the plumbing.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import dmcpfx
from dmcpfx.errors import ConfigError
from dmcpfx.search import latency_build
from dmcpfx.search.latency_build import latency_table, load_table
from dmcpfx.search.latency_table import Grid

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_time(geo, c_in, c_out, **kw):
    """A cost that is not bilinear in the widths (so interpolation and exactness differ)."""
    k = geo.kernel[0] * geo.kernel[1]
    mult = c_in if geo.kind != "dwconv" else 1
    return 1e-4 * k * (mult * c_out) ** 1.1 * geo.hw[0] * geo.hw[1] / 64 + 0.01


@pytest.fixture
def fake_timer(monkeypatch):
    monkeypatch.setattr(latency_build, "time_layer", fake_time)
    monkeypatch.setattr(latency_build, "time_models", lambda models, x, **kw: dict.fromkeys(models, 5.0))


class DepthwiseNet(nn.Module):
    """stem -> depthwise -> pointwise -> head: the depthwise conv's two sides are one group."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding="same", groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.stem(x))))
        x = torch.relu(self.pw(x))
        return self.fc(x.mean((2, 3)))


def spaces():
    from dmcpfx.demo_models import small_resnet

    torch.manual_seed(0)
    yield dmcpfx.instrument(small_resnet(num_classes=10).eval(), (torch.randn(1, 3, 16, 16),))
    yield dmcpfx.instrument(DepthwiseNet().eval(), (torch.randn(1, 3, 12, 12),))


def test_grid_interpolates_bilinearly_and_clamps():
    g = Grid([2, 4], [10, 20], [[1.0, 2.0], [3.0, 5.0]])
    assert g.at(2, 10) == 1.0 and g.at(4, 20) == 5.0
    assert g.at(3, 15) == pytest.approx((1 + 2 + 3 + 5) / 4)
    assert g.at(1, 5) == 1.0 and g.at(9, 99) == 5.0
    diag = Grid([2, 4], [2, 4], [[1.0, 0.0], [0.0, 3.0]], same_side=True)
    assert diag.at(3, 3) == pytest.approx(2.0)


@pytest.mark.parametrize("index", [0, 1])
def test_expected_latency_is_exact_at_hard_marginals_and_differentiable(fake_timer, index):
    space = list(spaces())[index]
    table = latency_table(space, "ort-cpu", 4)
    gates = space.gates()
    gen = torch.Generator().manual_seed(index)
    for _ in range(3):
        widths = {}
        with torch.no_grad():
            for gid, gate in gates.items():
                k = int(torch.randint(0, gate.split.n + 1, (1,), generator=gen))
                a = torch.full((gate.split.n,), -40.0)
                a[:k] = 40.0
                gate.alpha.copy_(a)
                widths[gid] = gate.candidates[k]
        assert float(table.expected(gates).detach()) == pytest.approx(table.latency(widths), rel=1e-9)
    for gate in gates.values():
        gate.alpha.data.normal_()
    e = table.expected(gates)
    e.backward()
    grads = torch.cat([g.alpha.grad.flatten() for g in gates.values()])
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0
    assert table.latency({}) == pytest.approx(5.0)  # calibrated to the measured whole model


@pytest.mark.parametrize("index", [0, 1])
def test_expected_latency_equals_the_mean_over_markov_samples(fake_timer, index):
    space = list(spaces())[index]
    table = latency_table(space, "ort-cpu", 4)
    gates = space.gates()
    torch.manual_seed(3)
    with torch.no_grad():
        for gate in gates.values():
            gate.alpha.normal_(1.0, 1.0)
    gen = torch.Generator().manual_seed(0)
    samples = [table.latency({gid: g.sample(gen) for gid, g in gates.items()}) for _ in range(4000)]
    mean = sum(samples) / len(samples)
    std = (sum((s - mean) ** 2 for s in samples) / len(samples)) ** 0.5
    assert float(table.expected(gates)) == pytest.approx(mean, abs=4 * std / len(samples) ** 0.5)


def test_same_geometry_shares_one_grid(fake_timer):
    space = next(spaces())
    table = latency_table(space, "ort-cpu", 4)
    assert len(table.grids) < len(table.layers)
    keys = [e.key for e in table.layers.values()]
    assert any(keys.count(k) > 1 for k in keys)


def test_table_file_is_reused_only_for_the_same_settings(fake_timer, tmp_path):
    space = next(spaces())
    path = tmp_path / "lat.json"
    first = latency_table(space, "ort-cpu", 4, path=path)
    again = latency_table(space, "ort-cpu", 4, path=path)
    assert again.latency({}) == first.latency({}) and again.meta == first.meta
    with pytest.raises(ConfigError, match=r"lat.json.*batch=4.*8"):
        latency_table(space, "ort-cpu", 8, path=path)
    doc = json.loads(path.read_text())
    doc["full_ms"] = float("nan")
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="non-finite"):
        load_table(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="lat.json: not a readable latency table"):
        load_table(path)
    with pytest.raises(ConfigError, match="backend"):
        latency_table(space, "tpu", 4)


def test_sampled_grid_interpolates_between_its_points(fake_timer):
    space = next(spaces())
    full = latency_table(space, "ort-cpu", 4)
    sampled = latency_table(space, "ort-cpu", 4, grid=3)
    assert all(len(g.cin) <= 3 and len(g.cout) <= 3 for g in sampled.grids.values())
    widths = {gid: info.candidates[len(info.candidates) // 2] for gid, info in space.groups.items()}
    assert sampled.latency(widths) == pytest.approx(full.latency(widths), rel=0.1)


def test_real_measurement_with_onnx_runtime():
    space = list(spaces())[1]
    table = latency_table(space, "ort-cpu", 2, grid=2, runs=1)
    assert table.full_ms > 0 and table.skipped == {}
    for g in table.grids.values():
        measured = [g.ms[a][a] for a in range(len(g.cin))] if g.same_side else [v for row in g.ms for v in row]
        assert all(v > 0 for v in measured), g
    # a model this small takes microseconds: its ordering is noise, only the plumbing is checked
    assert 0 < table.latency({gid: info.candidates[0] for gid, info in space.groups.items()}) < float("inf")


def test_models_are_timed_in_interleaved_rounds_keeping_each_ones_lowest_median(monkeypatch):
    """Round r of every model runs before round r + 1 of any (a slow spell of the machine hits
    all models alike); each ort-cpu round is a new session; a model's figure is its lowest median."""
    from dmcpfx.search import latency_measure

    calls = []
    medians = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}

    def fake_timer(model, inputs, threads):
        key = model.name
        return lambda runs, warmup: calls.append(key) or next(medians[key])

    monkeypatch.setattr(latency_measure, "_ort_timer", fake_timer)
    models = {key: nn.Linear(2, 2) for key in "ab"}
    for key, m in models.items():
        m.name = key
    got = latency_measure.time_models(models, (torch.randn(1, 2),), backend="ort-cpu", rounds=3)
    assert got == {"a": 1.0, "b": 4.0} and calls == ["a", "b"] * 3


def test_every_cell_keeps_its_lowest_median_over_the_passes(monkeypatch):
    """Slow spells (4x) do not reach the table: each cell is timed once per pass and keeps the
    lowest figure (the spells hit every other cell, the even ones in the first pass and the odd
    ones in the second, so neither keeping the first nor the last pass would pass)."""
    calls = []

    def spiky(geo, c_in, c_out, **kw):
        calls.append((geo.key, c_in, c_out))
        done, position = divmod(len(calls) - 1, cells)
        return fake_time(geo, c_in, c_out) * (4.0 if done < 2 and (position % 2 == 0) == (done == 0) else 1.0)

    monkeypatch.setattr(latency_build, "time_models", lambda models, x, **kw: dict.fromkeys(models, 5.0))
    for space in spaces():
        monkeypatch.setattr(latency_build, "time_layer", fake_time)
        clean = latency_table(space, "ort-cpu", 4)
        monkeypatch.setattr(latency_build, "time_layer", spiky)
        cells = sum(len(g.cin) if g.same_side else len(g.cin) * len(g.cout) for g in clean.grids.values())
        calls.clear()
        table = latency_table(space, "ort-cpu", 4)
        assert len(calls) == latency_build.CELL_PASSES * cells >= 2 * cells
        assert calls[:cells] == calls[cells:2 * cells]  # every cell once per pass
        assert {k: g.ms for k, g in table.grids.items()} == {k: g.ms for k, g in clean.grids.items()}


@pytest.mark.parametrize("factor, fitted", [(1.5, True), (0.9, True), (0.01, False)])
def test_constant_and_slope_fit_the_full_and_the_thin_model(monkeypatch, factor, fitted):
    """With a compact model, the table is exact at the full and at the thin model (``factor``: the
    thin model's time over the proportional prediction; below 1 the constant is negative); a fit
    that would need a constant below minus half the thin time keeps the proportional calibration."""
    monkeypatch.setattr(latency_build, "time_layer", fake_time)
    monkeypatch.setattr(latency_build, "time_models", lambda models, x, **kw: dict.fromkeys(models, 5.0))
    space = next(spaces())
    thin = latency_build.thin_widths(space)
    thin_ms = factor * latency_table(space, "ort-cpu", 4).latency(thin)  # proportional prediction
    full_params = sum(p.numel() for p in space.to_model().parameters())
    monkeypatch.setattr(latency_build, "time_models", lambda models, x, **kw: {
        key: 5.0 if sum(p.numel() for p in m.parameters()) == full_params else thin_ms for key, m in models.items()})
    table = latency_table(space, "ort-cpu", 4, compact=lambda w: dmcpfx.materialize(space, w, space.example_inputs))
    assert table.latency({}) == pytest.approx(5.0)
    assert "thin_model" in table.meta
    if fitted:
        assert (table.overhead_ms > 0) is (factor > 1)
        assert table.latency(thin) == pytest.approx(thin_ms)
        for gid, gate in space.gates().items():  # hard marginals at the thin widths: expected == latency
            k = gate.candidates.index(thin[gid])
            with torch.no_grad():
                gate.alpha.fill_(-40.0)
                gate.alpha[:k].fill_(40.0)
        assert float(table.expected(space.gates()).detach()) == pytest.approx(thin_ms, rel=1e-6)
    else:  # proportional: whole model / its layers at full width
        assert table.overhead_ms == 0.0 and table.calibration == pytest.approx(5.0 / table.layers_full_ms)
