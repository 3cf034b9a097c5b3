"""DESIGN.md section 8 properties over a broad timm sample (tests/zoo_models.py).

The default run keeps TIMM_DEFAULT (one model per kind of wiring); the rest run
under ``-m slow``. A model that cannot be supported must fail with a one-line
error naming the reason: UNSUPPORTED lists them with that reason.
"""
from __future__ import annotations

import pytest

pytest.importorskip("timm", reason="timm is a dev dependency: pip install -e '.[dev]'")

import dmcpfx  # noqa: E402
from dmcpfx.counting import count_flops  # noqa: E402
from equivalence import check_properties, randomize_norms  # noqa: E402
from zoo_models import TIMM_DEFAULT, TIMM_MODELS, build_timm  # noqa: E402

#: model -> a piece of the one-line error it must fail with
UNSUPPORTED: dict[str, str] = {}
#: model -> a piece of the freeze reason of its convolutions: it has no prunable group
#: (every filter is standardized over its input channels in forward, so pruning any
#: channel changes every filter that reads it; Torch-Pruning's result differs by 0.57)
NOTHING_PRUNABLE: dict[str, str] = {
    "resnetv2_50x1_bit": "computed weight",  # StdConv2d
    "nf_resnet26": "computed weight",  # ScaledStdConv2d
}


#: model -> a known defect (strict xfail: the day it passes, the entry must go)
KNOWN_DEFECTS: dict[str, str] = {}  # coat_lite_tiny left on 2026-12-06: its shared conv rel-pos modules stay tied


def _param(name):
    marks = [] if name in TIMM_DEFAULT else [pytest.mark.slow]
    if name in KNOWN_DEFECTS:
        marks.append(pytest.mark.xfail(reason=KNOWN_DEFECTS[name], strict=True))
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_param(n) for n in TIMM_MODELS])
def test_timm_properties_hold(name):
    model, x = build_timm(name)
    randomize_norms(model)
    if name in UNSUPPORTED:
        with pytest.raises(dmcpfx.DmcpfxError, match=UNSUPPORTED[name]) as info:
            dmcpfx.analyze(model, x)
        assert "\n" not in str(info.value)
        return
    if name in NOTHING_PRUNABLE:
        graph = dmcpfx.analyze(model, x)
        assert not graph.prunable and all(g.frozen_reasons for g in graph.groups.values())
        assert any(NOTHING_PRUNABLE[name] in g.frozen_reasons[0] for g in graph.groups.values())
        assert graph.full_flops == count_flops(model, x)  # frozen convs are still counted
        return
    figures = check_properties(model, x, seeds=(0, 1))
    assert figures["groups"] >= 1


def test_timm_sample_is_broad():
    assert len(TIMM_MODELS) >= 100 and len(set(TIMM_MODELS)) == len(TIMM_MODELS)
