"""One options object per stage: the config section, the keyword options and the resume record.

SearchOptions, DeriveOptions and RetrainOptions define each option and its default once. Every
field can be set from a config file and from Python; the ranges are checked in the object.
"""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import dmcpfx
from dmcpfx.config import Config, load_config
from dmcpfx.errors import ConfigError

STAGES = [(dmcpfx.SearchOptions, "search", dmcpfx.search), (dmcpfx.DeriveOptions, "derive", dmcpfx.derive),
          (dmcpfx.RetrainOptions, "retrain", dmcpfx.retrain)]
#: what each stage function takes besides its options: data, files, device, progress
RUN_ARGS = {"search": {"space", "train_loader", "options", "val_loader", "run_dir", "resume", "device", "progress",
                       "callback", "option_values"},
            "derive": {"space", "mode", "options", "val_loader", "calib_loader", "path", "plot_path", "model_name",
                       "option_values"},
            "retrain": {"model", "train_loader", "options", "val_loader", "device", "run_dir", "resume", "progress",
                        "option_values"}}


@pytest.mark.parametrize("cls,section,fn", STAGES, ids=[s for _, s, _ in STAGES])
def test_the_config_section_is_the_options_object(cls, section, fn):
    assert type(getattr(Config(), section)) is cls
    assert getattr(Config(), section) == cls()  # one set of defaults
    # the function takes no option of its own: a new option is a field of the dataclass, nothing else
    assert set(inspect.signature(fn).parameters) == RUN_ARGS[section]


@pytest.mark.parametrize("cls,section,fn", STAGES, ids=[s for _, s, _ in STAGES])
def test_every_field_is_settable_from_a_config_override(cls, section, fn):
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if callable(value):
            continue
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        cfg = load_config(None, [f"{section}.{f.name}={text}"])
        assert getattr(getattr(cfg, section), f.name) == value


@pytest.mark.parametrize("key,value", [
    ("search.momentum", 1.0), ("search.arch_momentum", -0.1), ("search.budget_band", 0.0),
    ("search.budget_band", 1.5), ("search.budget_metric", "energy"), ("search.distill_temperature", 0.0),
    ("search.slimmable", "yes"), ("search.lr_warmup_start", 9.0), ("search.epochs", 0), ("search.target", -1),
    ("search.target", True), ("derive.max_draws", 0), ("derive.val_batches", 0), ("derive.seed", -1),
    ("derive.budget_metric", "energy"), ("retrain.nesterov", 1), ("retrain.momentum", 1.0),
    ("retrain.init", "zeros"), ("retrain.warmup_epochs", 8),
])
def test_validate_names_the_key(key, value):
    section, name = key.split(".")
    obj = dataclasses.replace(getattr(Config(), section), **{name: value})
    with pytest.raises(ConfigError, match=rf"config key '{key}' must be"):
        obj.validate()


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match="retrain.nesterov"):
        dmcpfx.RetrainOptions(momentum=0.0).validate()
    dmcpfx.RetrainOptions(momentum=0.0, nesterov=False).validate()


def test_build_keywords_unknown_and_deprecated():
    opts = dmcpfx.SearchOptions.build(None, {"lr": 0.3}, "search")
    assert opts.lr == 0.3 and opts.min_lr == dmcpfx.SearchOptions().min_lr
    with pytest.raises(TypeError, match=r"search\(\) got an unexpected keyword argument 'lrr' \(did you mean 'lr'\?\)"):
        dmcpfx.SearchOptions.build(None, {"lrr": 0.3}, "search")
    with pytest.warns(DeprecationWarning, match="target_flops"):
        assert dmcpfx.SearchOptions.build(None, {"target_flops": 0.3}, "search").target == 0.3
    base = dmcpfx.SearchOptions(epochs=3)
    assert dmcpfx.SearchOptions.build(base, {"seed": 4}, "search") == dataclasses.replace(base, seed=4)
    with pytest.raises(TypeError, match="options must be a SearchOptions"):
        dmcpfx.SearchOptions.build(dmcpfx.RetrainOptions(), {}, "search")


def test_derive_options_take_the_search_values():
    s = dmcpfx.SearchOptions(target=0.3, seed=7, calib_batches=2, budget_metric="params")
    d = dmcpfx.DeriveOptions().resolved(s)
    assert (d.target, d.seed, d.calib_batches, d.budget_metric) == (0.3, 7, 2, "params")
    alone = dmcpfx.DeriveOptions().resolved()
    assert alone.target is None and alone.seed == dmcpfx.SearchOptions().seed  # no silent 50% target


def test_derive_without_a_target_is_an_error():
    from dmcpfx.demo_models import small_resnet

    space = dmcpfx.instrument(small_resnet(width=8), torch.randn(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="target is required"):
        dmcpfx.derive(space, "expected")
    by_object = dmcpfx.derive(space, options=dmcpfx.DeriveOptions(target=0.5))
    assert by_object == dmcpfx.derive(space, "expected", target=0.5)


def _digits(n=64, size=16):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=16)


def test_search_options_object_equals_keywords_and_resume_checks_every_option(tmp_path):
    from dmcpfx.demo_models import small_resnet

    def space():
        torch.manual_seed(0)
        return dmcpfx.instrument(small_resnet(width=8), torch.randn(1, 3, 16, 16))

    opts = dmcpfx.SearchOptions(target=0.5, epochs=2, warmup_epochs=1, calib_batches=0, momentum=0.8,
                                budget_band=0.9, distill_temperature=2.0, slimmable=False)
    a, b = space(), space()
    ra = dmcpfx.search(a, _digits(), opts, run_dir=tmp_path / "a", progress=False, device="cpu")
    rb = dmcpfx.search(b, _digits(), run_dir=tmp_path / "b", progress=False, device="cpu",
                       **dataclasses.asdict(opts))
    assert ra.expected == rb.expected
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["momentum"] == 0.8 and ckpt["config"]["distill_temperature"] == 2.0
    with pytest.raises(ConfigError, match="cannot resume .*momentum was 0.8, now 0.9"):
        dmcpfx.search(space(), _digits(), dataclasses.replace(opts, momentum=0.9), run_dir=tmp_path / "a",
                      resume=True, progress=False, device="cpu")
    # log_interval changes no result: a resume may change it
    dmcpfx.search(space(), _digits(), dataclasses.replace(opts, log_interval=7), run_dir=tmp_path / "a",
                  resume=True, progress=False, device="cpu")
