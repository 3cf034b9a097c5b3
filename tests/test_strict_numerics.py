"""The three output checks (materialize's verification, the slimmable check, the ONNX check)
run in strict float32 (no TF32, no autocast) whatever the caller set, and every setting
is back afterwards, also after an exception (DESIGN.md section 5, issue 17 item 1).

The caller here turns TF32 on (the CUDA default for convolutions) and runs the check
inside a CPU bf16 autocast; a forward pre-hook records the settings at the moment the
checked model runs.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import dmcpfx
from dmcpfx.demo_models import small_resnet
from dmcpfx.numerics import numerics_state, strict_numerics
from dmcpfx.search.slimmable import SlicedRunner

STRICT = {"cuda_matmul_tf32": False, "cudnn_tf32": False, "matmul_precision": "highest",
          "autocast:cpu": False, "autocast:cuda": False}


@pytest.fixture
def tf32_on():
    """The user's settings: TF32 for matmuls and convolutions, matmul precision "high"."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    yield numerics_state()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])


def _is_strict(state: dict) -> bool:
    reduced = [k for k, v in state.items() if k.startswith("fp32_precision") and v not in ("none", "ieee")]
    return not reduced and all(state[k] == v for k, v in STRICT.items())


def _recorder(module: nn.Module, fail: bool = False) -> list[dict]:
    """Record the numeric settings (and the input dtype) each time ``module`` runs."""
    seen: list[dict] = []

    def hook(_module, args):
        seen.append({**numerics_state(), "dtype": args[0].dtype})
        if fail:
            raise RuntimeError("boom")

    module.register_forward_pre_hook(hook)
    return seen


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return small_resnet(width=8, blocks=(1, 1)).eval(), torch.randn(2, 3, 16, 16)


def _half_widths(graph) -> dict[str, int]:
    return {gid: max(1, g.width // 2) for gid, g in graph.prunable.items()}


def test_strict_numerics_sets_and_restores_every_setting(tf32_on):
    assert not _is_strict(tf32_on)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with strict_numerics():
            assert _is_strict(numerics_state())
        assert torch.is_autocast_enabled("cpu")
        with pytest.raises(ValueError), strict_numerics():
            raise ValueError("inside")
        assert torch.is_autocast_enabled("cpu")
    assert numerics_state() == tf32_on


def test_strict_numerics_restores_the_new_precision_api():
    """A state set through ``fp32_precision`` (torch >= 2.9), legacy reads refused, comes back."""
    if not hasattr(torch.backends, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision API")
    conv = torch.backends.cudnn.conv
    saved = (torch.backends.fp32_precision, conv.fp32_precision, torch.backends.mkldnn.conv.fp32_precision)
    try:
        torch.backends.fp32_precision = "ieee"
        conv.fp32_precision = "tf32"
        torch.backends.mkldnn.conv.fp32_precision = "tf32"
        before = numerics_state()
        with strict_numerics():
            inside = numerics_state()
        assert numerics_state() == before
        assert all(v in ("none", "ieee") for k, v in inside.items() if k.startswith("fp32_precision"))
    finally:
        torch.backends.fp32_precision, conv.fp32_precision, torch.backends.mkldnn.conv.fp32_precision = saved


def test_materialize_verifies_in_strict_float32(tf32_on):
    model, x = _model()
    graph = dmcpfx.analyze(model, x)  # reused below: the model runs only in the check
    seen = _recorder(model)  # the hook travels with the compact copy that is checked
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dmcpfx.materialize(model, _half_widths(graph), x, graph=graph)
        assert torch.is_autocast_enabled("cpu")
    assert seen and all(_is_strict(s) and s["dtype"] == torch.float32 for s in seen)
    assert numerics_state() == tf32_on


def test_materialize_restores_the_settings_after_a_failure(tf32_on, monkeypatch):
    model, x = _model()
    graph = dmcpfx.analyze(model, x)
    seen = _recorder(model, fail=True)  # the checked copy crashes: the GraphModule fallback is used
    compact = dmcpfx.materialize(model, _half_widths(graph), x, graph=graph)
    assert isinstance(compact, torch.fx.GraphModule)
    assert seen and all(_is_strict(s) for s in seen)
    assert numerics_state() == tf32_on

    def crash(*args):
        assert _is_strict(numerics_state())
        raise RuntimeError("slicing failed")

    monkeypatch.setattr(importlib.import_module("dmcpfx.materialize"), "slice_model", crash)
    with pytest.raises(RuntimeError, match="slicing failed"):
        dmcpfx.materialize(model, _half_widths(graph), x, graph=graph)
    assert numerics_state() == tf32_on


def test_materialize_confirms_a_float32_mismatch_in_float64(monkeypatch):
    """A float32 comparison that fails (here forced, as rounding in a deep, badly conditioned
    net can) is confirmed in float64: a correct slice passes, a wrong slice still fails."""
    model, x = _model()
    widths = _half_widths(dmcpfx.analyze(model, x))
    module = importlib.import_module("dmcpfx.materialize")
    real_outputs_match, real_slice, seen = module.nested_outputs_match, module.slice_model, []

    def float32_fails(got, want, rtol):
        seen.append(got.dtype)
        if got.dtype == torch.float32:
            return False
        assert rtol == 1e-6  # materialize's float64 tolerance
        return real_outputs_match(got, want, rtol)

    monkeypatch.setattr(module, "nested_outputs_match", float32_fails)
    compact = dmcpfx.materialize(model, widths, x)
    assert seen == [torch.float32, torch.float64]
    assert not isinstance(compact, torch.fx.GraphModule)
    assert all(p.dtype == torch.float32 for p in compact.parameters())

    def wrong(m, graph, w):
        real_slice(m, graph, w)
        with torch.no_grad():
            next(m.parameters()).add_(0.5)

    monkeypatch.setattr(module, "slice_model", wrong)
    with pytest.raises(dmcpfx.MaterializeError, match="does not reproduce"):
        dmcpfx.materialize(model, widths, x)


def test_slimmable_check_runs_strict(tf32_on):
    model, x = _model()
    space = dmcpfx.instrument(model, x)
    runner = SlicedRunner(space)
    widths = {gid: g.candidates[len(g.candidates) // 2] for gid, g in space.groups.items()}
    seen = _recorder(space)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert runner.check(widths), runner.reason
        assert torch.is_autocast_enabled("cpu")
    assert len(seen) == 2 and all(_is_strict(s) and s["dtype"] == torch.float32 for s in seen)
    assert numerics_state() == tf32_on
    failing = SlicedRunner(space)
    _recorder(space, fail=True)
    assert not failing.check(widths) and "boom" in failing.reason
    assert numerics_state() == tf32_on


def test_onnx_check_runs_strict(tf32_on, tmp_path):
    pytest.importorskip("onnxruntime")
    model, x = _model()
    seen = _recorder(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dmcpfx.export_onnx(model, x, tmp_path / "m.onnx")
    assert seen and all(_is_strict(s) and s["dtype"] == torch.float32 for s in seen)
    assert numerics_state() == tf32_on
    _recorder(model, fail=True)
    with pytest.raises(Exception, match="boom"):
        dmcpfx.export_onnx(model, x, tmp_path / "n.onnx")
    assert not (tmp_path / "n.onnx").exists()
    assert numerics_state() == tf32_on


def test_onnx_export_of_a_bfloat16_model_is_float32_and_leaves_the_model(tmp_path):
    pytest.importorskip("onnxruntime")
    model, x = _model()
    model = model.to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dmcpfx.export_onnx(model, x.to(torch.bfloat16), tmp_path / "m.onnx")
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
