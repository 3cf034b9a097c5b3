"""Validate everything before anything (issue 19): every key with its range, sizes against memory,
the example input and num_classes against the data; no run directory on any of these errors."""
from __future__ import annotations

import pytest

import dmcpfx.arch as dmcpfx_arch
from dmcpfx.config import load_config
from dmcpfx.config_checks import validate_config
from dmcpfx.errors import ConfigError
from dmcpfx.pipeline import run_pipeline

TINY = ["data.kind=synthetic", "data.num_classes=4", "data.image_size=8", "data.batch_size=2", "data.steps=2",
        "model.kwargs.width=4", "run.progress=false"]


@pytest.mark.parametrize("override,key", [
    ("search.markov_schedule=cubic", "search.markov_schedule"),
    ("search.bn_stats=some", "search.bn_stats"),
    ("search.markov_decay=2.0", "search.markov_decay"),
    ("search.markov_decay=.nan", "search.markov_decay"),
    ("search.markov_decay=0", "search.markov_decay"),
    ("search.markov_prob_final=1.5", "search.markov_prob_final"),
    ("search.lr_warmup_start=5.0", "search.lr_warmup_start"),
    ("search.lr_warmup_start=-0.1", "search.lr_warmup_start"),
    ("search.epochs=1000000000", "search.epochs"),
    ("retrain.epochs=1000000000", "retrain.epochs"),
    ("derive.holdout_images=-5", "derive.holdout_images"),
    ("derive.holdout_images=0 derive.mode=direct", "derive.holdout_images"),  # ranking on no image
    # a cosine to a final rate above its peak (this used to fail inside the schedule, after the run directory)
    ("search.min_lr=0.5", "search.min_lr"),
    ("search.arch_min_lr=0.9", "search.arch_min_lr"),
    ("search.budget_band=1.0", "search.budget_band"),  # the band [T, T] is empty: log|E - T| has no minimum
    ("search.seed=4294967296", "search.seed"),  # numpy's seeds end at 2**32 - 1
    ("derive.seed=4294967296", "derive.seed"),
    ("retrain.seed=4294967296", "retrain.seed"),
])
def test_every_key_is_checked_with_its_range(override, key):
    with pytest.raises(ConfigError, match=rf"config key '{key}' must be"):
        validate_config(load_config(None, override.split()))


def test_epochs_as_huge_float_is_refused():
    with pytest.raises(ConfigError, match="search.epochs"):
        validate_config(load_config(None, ["search.epochs=1e30"]))


def test_late_keys_leave_no_run_directory(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, TINY + ["search.markov_decay=2.0"])
    cfg.run.dir, cfg.run.name = str(tmp_path), "run"
    with pytest.raises(ConfigError, match="search.markov_decay"):
        run_pipeline(cfg)
    assert not run.exists()


def test_a_final_rate_names_the_peak_it_is_bounded_by():
    with pytest.raises(ConfigError, match=r"'search.min_lr' must be a finite number in \[0.0, search.lr = 0.001\], "
                                          r"got 0.01"):
        validate_config(load_config(None, ["search.lr=1e-3"]))


def test_lr_warmup_past_the_search_is_refused_before_the_run_directory(tmp_path):
    # TINY: 2 synthetic batches per epoch, so a 1-epoch search has 2 weight steps
    cfg = _run(tmp_path, "search.epochs=1", "search.lr_warmup_steps=2")
    with pytest.raises(ConfigError, match=r"'search.lr_warmup_steps' must be below the search's 2 weight steps "
                                          r"\(1 epoch\(s\) x 2 batches\), got 2"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()


def test_image_size_against_available_memory():
    # the documented maximum with the digits (all 1,797 images held in memory): about 1.3 TiB
    with pytest.raises(ConfigError, match=r"data.image_size=8192 with data.batch_size=64 needs about .* GiB"):
        validate_config(load_config(None, ["data.image_size=8192"]))
    validate_config(load_config(None, ["data.image_size=64"]))


def _run(tmp_path, *extra):
    cfg = load_config(None, TINY + list(extra))
    cfg.run.dir, cfg.run.name = str(tmp_path), "run"
    return cfg


def test_input_shape_must_match_the_data(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.input_shape' \[1, 3, 24, 24\] does not match the data's images "
                                          r"\[3, 8, 8\]"):
        run_pipeline(_run(tmp_path, "model.input_shape=[1,3,24,24]"), ("analyze",))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,key", [("model.num_classes=3", "model.num_classes"),
                                          ("model.kwargs.num_classes=2", "model.kwargs.num_classes")])
def test_num_classes_against_the_data(tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"'{key}' is \d but the data has 4 classes"):
        run_pipeline(_run(tmp_path, override), ("analyze",))
    assert not (tmp_path / "run").exists()


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"


@pytest.mark.parametrize("text", [
    "search: &s {epochs: 2}\nretrain: *s\n",
    "model:\n  kwargs:\n    " + BOMB.replace("\n", "\n    "),
])
def test_yaml_anchors_and_aliases_are_refused_in_configs(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    message = str(failure.value)
    assert "\n" not in message and str(path) in message and "anchors and aliases are not allowed" in message


def test_yaml_anchors_are_refused_in_arch_files(tmp_path):
    import dmcpfx

    path = tmp_path / "arch.yaml"
    path.write_text("format: dmcpfx-arch/1\ngroups:\n  conv1: &w {channels: 4, of: 8}\n  conv2: *w\n")
    with pytest.raises(dmcpfx.ArchError) as failure:
        dmcpfx_arch.load_arch(path)
    assert "\n" not in str(failure.value) and str(path) in str(failure.value) and "anchor &w" in str(failure.value)


def test_yaml_alias_in_an_override_is_refused():
    with pytest.raises(ConfigError, match="anchors and aliases are not allowed"):
        load_config(None, ["model.kwargs.x=&a [1, *a]"])


@pytest.fixture()
def tiny_arch(tmp_path):
    import torch

    import dmcpfx
    from dmcpfx.demo_models import small_resnet

    model = small_resnet(num_classes=4, width=4).eval()
    x = torch.randn(1, 3, 8, 8)
    graph = dmcpfx.analyze(model, x)
    widths = {gid: max(1, g.width // 2) for gid, g in graph.prunable.items()}
    path = dmcpfx_arch.save_arch(tmp_path / "arch.yaml", widths, graph, model="dmcpfx.demo_models:small_resnet")
    return model, x, path


def test_arch_input_shape_is_checked(tiny_arch):
    import torch

    import dmcpfx

    model, _, path = tiny_arch
    with pytest.raises(dmcpfx.ArchError, match=r"made at input shape \[1, 3, 8, 8\], it is applied at \[1, 3, 16, 16\]"):
        dmcpfx.materialize(model, path, torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("block,key", [("flops", "full"), ("params", "full")])
def test_arch_flops_and_params_are_checked(tiny_arch, block, key):
    import yaml

    import dmcpfx

    model, x, path = tiny_arch
    doc = yaml.safe_load(path.read_text())
    doc[block][key] *= 2
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(dmcpfx.ArchError, match=rf"{block}\.{key} is \d+ but the model it is applied to counts"):
        dmcpfx.materialize(model, path, x)


def test_arch_model_is_checked(tiny_arch, tmp_path, capsys):
    import dmcpfx
    from dmcpfx.cli import main

    import torch

    _, _, path = tiny_arch
    torch.save({}, tmp_path / "none.pt")
    with pytest.raises(dmcpfx.ArchError, match=r"made for model 'dmcpfx.demo_models:small_resnet', not 'dmcpfx.demo_models:custom_net'"):
        dmcpfx.load("dmcpfx.demo_models:custom_net", path, tmp_path / "none.pt", input_shape=[1, 3, 8, 8])
    out = tmp_path / "c.pt"
    assert main(["materialize", "dmcpfx.demo_models:custom_net", str(path), "--input-shape", "1,3,8,8",
                 "--output", str(out)]) == 2
    assert "made for model" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("device,said", [
    ("tpu", r"must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'tpu'"),
    (7, r"is 'cuda:7' but (CUDA is not available here|this machine has \d CUDA device)"),
])
def test_a_device_this_machine_lacks_is_one_line_naming_the_stage(device, said):
    """search and retrain check ``device`` before anything: not torch's parser or driver error."""
    import torch

    import dmcpfx
    from dmcpfx.demo_models import small_resnet

    batches = [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))]
    model = small_resnet(num_classes=4, width=4)
    with pytest.raises(ConfigError, match=r"^retrain.device " + said):
        dmcpfx.retrain(model, batches, epochs=1, device=device, progress=False)
    space = dmcpfx.instrument(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match=r"^search.device " + said):
        dmcpfx.search(space, batches, target=0.7, epochs=1, device=device, progress=False)


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path):
    import torch

    import dmcpfx
    from dmcpfx.demo_models import small_resnet
    from dmcpfx.errors import OutputError

    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    batches = [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))]
    model = small_resnet(num_classes=4, width=4)
    with pytest.raises(OutputError, match=rf"^retrain: run_dir {taken} exists and is not a directory$"):
        dmcpfx.retrain(model, batches, epochs=1, run_dir=taken, progress=False)
    space = dmcpfx.instrument(model, torch.randn(1, 3, 8, 8))
    with pytest.raises(OutputError, match=rf"^search: run_dir {taken} exists and is not a directory$"):
        dmcpfx.search(space, batches, target=0.7, epochs=1, run_dir=taken, progress=False)
    assert taken.read_text() == "not a directory"


def test_a_space_without_a_prunable_group_says_why_in_instrument_and_search():
    """instrument warns (every group frozen or too narrow, one example of each); search refuses in
    one line instead of 'the target is below the smallest sub-net'."""
    import torch

    import dmcpfx
    from dmcpfx.demo_models import small_resnet

    with pytest.warns(UserWarning, match=r"^instrument\(\): no prunable group: of 10 channel groups, 1 frozen "
                                         r"\(e.g. 'fc': model output\), 9 too narrow to prune \(e.g. 'conv1'"):
        space = dmcpfx.instrument(small_resnet(num_classes=4, width=4), torch.randn(1, 3, 8, 8), divisor=64)
    assert not space.groups
    with pytest.raises(ConfigError, match=r"^search: no prunable group: .*; there is nothing to search$"):
        dmcpfx.search(space, [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))], target=0.5, epochs=1, progress=False)


def _files(run) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


@pytest.mark.parametrize("edit,said", [
    (lambda t: t.replace("conv1: {channels: ", "conv1: {channels: 9", 1), r"group 'conv1': width 9\d* is outside \[1, 4\]"),
    pytest.param(lambda t: t + "  fc: {channels: 2, of: 4}\n", r"group 'fc' is frozen", marks=pytest.mark.slow),
], ids=["width_above_its_of", "frozen_group"])
def test_retrain_checks_a_hand_edited_arch_before_the_run_directory_changes(tmp_path, edit, said):
    # retrain used to rewrite config.yaml and the marker, then fail on the arch inside materialize
    cfg = _run(tmp_path, "search.epochs=1", "search.calib_batches=1", "retrain.epochs=1")
    run_pipeline(cfg, ("analyze", "search", "derive", "materialize"))
    run = tmp_path / "run"
    arch = run / "arch.yaml"
    arch.write_text(edit(arch.read_text()))
    before = _files(run)
    (run / "config.yaml").write_text("# the user's copy\n")  # a rewrite before the check would replace it
    before["config.yaml"] = b"# the user's copy\n"
    with pytest.raises(dmcpfx_arch.ArchError, match=said):
        run_pipeline(_run(tmp_path, "search.epochs=1", "search.calib_batches=1", "retrain.epochs=1"),
                     ("retrain", "report"))
    assert _files(run) == before
