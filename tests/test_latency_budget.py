"""A budget in latency (issue 20): ``budget_metric: latency`` with a latency table.

The table's timer is replaced by an analytic cost (as in ``test_latency_table.py``), so the
search, derive and the pipeline are checked exactly and fast; the real ONNX Runtime timing of a
table is ``test_latency_table.py::test_real_measurement_with_onnx_runtime``.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import dmcpfx
from dmcpfx.config import load_config
from dmcpfx.errors import ConfigError
from dmcpfx.search import latency_build
from dmcpfx.search.budget import parse_target
from dmcpfx.search.latency_build import latency_table
from dmcpfx.search.metric import budget_metric, resolve_budget

from test_latency_table import fake_time

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fake_timer(monkeypatch):
    monkeypatch.setattr(latency_build, "time_layer", fake_time)
    monkeypatch.setattr(latency_build, "time_models", lambda models, x, **kw: dict.fromkeys(models, 5.0))


def _space(width: int = 8):
    from dmcpfx.demo_models import small_resnet

    torch.manual_seed(0)
    return dmcpfx.instrument(small_resnet(num_classes=4, width=width).train(), (torch.randn(1, 3, 8, 8),))


def _loader(n_batches: int = 4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 4, (2,), generator=g)) for _ in range(n_batches)]


def test_latency_targets_parse_and_refuse_the_wrong_unit():
    assert parse_target("12ms", 20.0, unit="ms") == 12.0
    assert parse_target("50%", 20.0, unit="ms") == parse_target(0.5, 20.0, unit="ms") == 10.0
    with pytest.raises(ConfigError, match=r"'12ms' is a latency but the budget is in MACs: set budget_metric: latency"):
        parse_target("12ms", 4e9)
    with pytest.raises(ConfigError, match=r"'2G' does not fit a latency budget"):
        parse_target("2G", 20.0, unit="ms")
    with pytest.raises(ConfigError, match=r"above the full model"):
        parse_target("30ms", 20.0, unit="ms")


def test_a_latency_budget_needs_its_table(fake_timer, tmp_path):
    space = _space()
    with pytest.raises(ConfigError, match=r"'search.latency_table' must be the path of a latency table"):
        dmcpfx.SearchOptions(budget_metric="latency").validate()
    with pytest.raises(ConfigError, match=r"latency table .*missing.json not found: measure it first"):
        budget_metric(space, "latency", str(tmp_path / "missing.json"))
    path = tmp_path / "table.json"
    latency_table(_space(width=16), "ort-cpu", 2, path=path)  # another model's table
    with pytest.raises(dmcpfx.ArchError, match=r"measured for other groups or candidate widths"):
        budget_metric(space, "latency", str(path))


def test_search_and_derive_meet_a_latency_budget(fake_timer, tmp_path):
    space = _space()
    path = tmp_path / "table.json"
    table = latency_table(space, "ort-cpu", 2, path=path)
    target, metric = resolve_budget(space, 0.5, "latency", str(path))
    assert metric.unit == "ms" and metric.full == pytest.approx(table.latency({})) and target == 0.5 * metric.full
    result = dmcpfx.search(space, _loader(), target=0.5, epochs=2, budget_metric="latency", latency_table=str(path),
                           device="cpu", calib_batches=0, progress=False, run_dir=tmp_path / "run")
    assert result.budget_metric == "latency" and result.target == pytest.approx(target)
    assert 0.93 <= result.expected / target <= 1.02  # at its budget from the first step (alpha_init budget)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r.get("metric") for r in records if r["kind"] in ("start", "epoch")} == {"latency"}
    arch_path = tmp_path / "arch.yaml"
    widths = dmcpfx.derive(space, "expected", target=0.5, budget_metric="latency", latency_table=str(path),
                           path=arch_path)
    predicted = table.latency(widths)
    assert predicted <= target * 1.01 and abs(predicted / result.expected - 1) <= 0.02
    arch = yaml.safe_load(arch_path.read_text())
    assert arch["latency"]["pruned"] == pytest.approx(predicted, rel=1e-6)
    assert arch["latency"]["backend"] == "ort-cpu" and arch["latency"]["batch"] == 2
    assert dmcpfx.materialize(space.to_model().eval(), arch_path, torch.randn(1, 3, 8, 8)) is not None


@pytest.mark.slow  # 12 s: the whole pipeline; search and derive under a latency budget run in the default set
def test_pipeline_with_a_latency_budget_reports_prediction_and_measurement(fake_timer, tmp_path):
    from dmcpfx.pipeline import run_pipeline

    table = tmp_path / "lat.json"
    cfg = load_config(None, [
        "data.kind=synthetic", "data.num_classes=4", "data.image_size=8", "data.batch_size=2", "data.steps=2",
        "model.kwargs.width=4", "run.progress=false", "search.epochs=2", "retrain.epochs=1",
        "search.budget_metric=latency", f"search.latency_table={table}", "search.latency_batch=2", "search.divisor=1",
        "search.target=60%",
    ])
    cfg.run.dir, cfg.run.name = str(tmp_path), "run"
    result = run_pipeline(cfg)
    assert table.is_file()  # measured by the pipeline, where the config said
    s = result.summary
    assert s["target_latency_ms"] == pytest.approx(0.6 * s["table_full_latency_ms"])
    assert 0.93 <= s["expected_latency_ms"] / s["target_latency_ms"] <= 1.02
    assert s["pruned_latency_ms"] <= s["target_latency_ms"] * 1.01 and abs(s["derive_change"]) <= 0.02
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Latency budget (ort-cpu, batch 2, 1 thread(s))" in report and "the latency table predicts" in report
    measured = s["measured_pruned_latency_ms"]  # really measured with ONNX Runtime (only the table is faked)
    assert 0 < measured < float("inf") and f"measured {measured:.3f} ms" in report


def test_divisor_auto_is_the_runtime_channel_block():
    """``search.divisor: auto`` is what the backend rewards, probed once (ONNX Runtime's NCHWc block
    on this CPU: 16 with AVX-512, 8 with AVX2, 1 without; 8 on CUDA), and the default under a
    latency budget; MACs and params budgets keep 1."""
    from dmcpfx.search.latency_measure import runtime_divisor

    block = runtime_divisor("ort-cpu")
    assert block in (1, 4, 8, 16) and runtime_divisor("ort-cpu") == block  # deterministic
    assert runtime_divisor("cuda") == 8
    opts = dmcpfx.SearchOptions
    assert opts().resolved_divisor == 1 and opts(divisor=4).resolved_divisor == 4
    assert opts(divisor="auto").resolved_divisor == block
    assert opts(budget_metric="latency", latency_table="t.json").resolved_divisor == block
    assert opts(budget_metric="latency", latency_table="t.json", latency_backend="cuda").resolved_divisor == 8
    with pytest.raises(ConfigError, match=r"'search.divisor' must be an integer >= 1, 'auto' or null, got 'often'"):
        opts(divisor="often").validate()
