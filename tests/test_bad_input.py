"""Bad input: clear errors that name the culprit, and no partial files."""
import subprocess
import sys

import pytest
import yaml
import torch
import torchvision
from torch import nn

import dmcpfx
from dmcpfx.arch import load_arch, resolve_arch, save_arch

X = torch.randn(1, 3, 32, 32)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Branchy()

    def forward(self, x):
        return self.body(x)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return -self.conv(x)


def test_untraceable_model_names_the_module(capsys):
    with pytest.raises(dmcpfx.TraceError, match=r"module 'body'") as failure:
        dmcpfx.analyze(DataDependent(), X)
    assert "\n" not in str(failure.value)
    # torch prints the partial graph of a failed export to stderr: held back, the error says it all
    assert "def forward" not in capsys.readouterr().err


class _ReservedName(nn.Module):
    """A metadata branch called ``meta``: fx.GraphModule has a ``meta`` dict of its own."""

    def __init__(self, name: str):
        super().__init__()
        self.name, self.conv = name, nn.Conv2d(3, 8, 3)
        setattr(self, name, nn.Linear(4, 8))

    def forward(self, x, extra):
        return self.conv(x).mean((2, 3)) + getattr(self, self.name)(extra)


@pytest.mark.parametrize("name", ["meta", "graph"])
def test_a_top_level_name_that_graph_modules_reserve_is_one_line(name):
    with pytest.raises(dmcpfx.TraceError, match=rf"top-level submodule named '{name}'.*rename it") as failure:
        dmcpfx.analyze(_ReservedName(name), (X, torch.randn(1, 4)))
    assert "\n" not in str(failure.value)
    graph = dmcpfx.analyze(_ReservedName("metadata"), (X, torch.randn(1, 4)))  # any other name is analyzed
    assert graph.groups["conv"].width == 8


def test_wrong_input_shape_names_the_node():
    with pytest.raises(dmcpfx.AnalysisError, match="conv1"):
        dmcpfx.analyze(torchvision.models.resnet18(), torch.randn(1, 5, 32, 32))


@pytest.fixture(scope="module")
def resnext():
    return torchvision.models.resnext50_32x4d().eval()


@pytest.fixture(scope="module")
def resnext_graph(resnext):
    """One analysis for the module: materialize(..., graph=) reuses it (6 s a call otherwise)."""
    return dmcpfx.analyze(resnext, X)


@pytest.mark.parametrize(
    "widths,match",
    [
        ({"layer9.conv": 3}, r"unknown group 'layer9\.conv'"),
        ({"layer1.0.conv3": 512}, r"group 'layer1\.0\.conv3': width 512 is outside \[1, 256\]"),
        ({"layer1.0.conv1": 40}, r"group 'layer1\.0\.conv1': width 40 is not a multiple of its divisor 32"),
        ({"fc": 10}, r"group 'fc' is frozen \(model output\)"),
        ({"conv1": 3.5}, r"group 'conv1': width must be an integer"),
    ],
)
def test_bad_arch_names_the_group(resnext, resnext_graph, widths, match):
    with pytest.raises(dmcpfx.ArchError, match=match):
        dmcpfx.materialize(resnext, widths, X, graph=resnext_graph)


def test_arch_yaml_round_trip_and_format_errors(tmp_path, resnext, resnext_graph):
    graph = resnext_graph
    path = save_arch(tmp_path / "a.yaml", {"conv1": 32}, graph, model="torchvision:resnext50_32x4d")
    arch = load_arch(path)
    assert arch.widths["conv1"] == 32 and arch.flops["pruned"] < arch.flops["full"]
    compact = dmcpfx.materialize(resnext, path, X, graph=graph)
    assert compact.conv1.out_channels == 32
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("dmcpfx-arch/1", "dmcpfx-arch/9"))
    with pytest.raises(dmcpfx.ArchError, match="unsupported format 'dmcpfx-arch/9'"):
        load_arch(bad)
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text().replace("of: 64", "of: 48", 1))
    with pytest.raises(dmcpfx.ArchError, match="another model"):
        dmcpfx.materialize(resnext, other, X, graph=graph)
    for block in ("flops", "params"):  # a pruned count that the widths do not give: edited by hand
        doc = yaml.safe_load(path.read_text())
        doc[block]["pruned"] = int(doc[block]["pruned"] * 1.05)
        edited = tmp_path / f"edited_{block}.yaml"
        edited.write_text(yaml.safe_dump(doc, sort_keys=False))
        with pytest.raises(dmcpfx.ArchError, match=rf"edited_{block}.yaml: {block}.pruned is .* but the model"):
            resolve_arch(edited, graph)  # what materialize calls on an arch file (the analysis is reused)
    (tmp_path / "notyaml.yaml").write_text("groups: [1, 2")
    with pytest.raises(dmcpfx.ArchError, match="not valid YAML"):
        load_arch(tmp_path / "notyaml.yaml")
    for name, edit in (("wide", ("channels: 32", "channels: 999")), ("stranger", ("conv1:", "conv9:"))):
        broken = tmp_path / f"{name}.yaml"  # a width out of range, an unknown group: the file is named too
        broken.write_text(path.read_text().replace(*edit, 1))
        with pytest.raises(dmcpfx.ArchError, match=rf"{name}.yaml: (group 'conv1': width 999|unknown group 'conv9')"):
            resolve_arch(broken, graph)


ARCH = {"format": "dmcpfx-arch/1", "model": "m:f", "input_shape": [1, 3, 8, 8],
        "flops": {"full": 100, "pruned": 50, "target": 50.0}, "params": {"full": 10, "pruned": 5},
        "latency": {"full": 2.0, "pruned": 1.0, "target": 1.0, "backend": "ort-cpu", "batch": 16, "threads": 1},
        "groups": {"conv1": {"channels": 4, "of": 8}}}


@pytest.mark.parametrize("block,key,value,match", [
    ("flops", "pruned", float("nan"), r"flops\.pruned must be a finite number >= 0 or null, got nan"),
    ("flops", "full", float("inf"), r"flops\.full must be a finite number"),
    ("params", "pruned", -5, r"params\.pruned must be a finite number >= 0"),
    ("flops", "target", "half", r"flops\.target must be a finite number"),
    ("flops", "pruned", True, r"flops\.pruned must be a finite number"),
    ("flops", "macs", 3, r"'flops' has unknown key\(s\) \['macs'\]"),
    ("latency", "batch", 0, r"latency\.batch must be an integer >= 1"),
    ("latency", "backend", 7, r"latency\.backend must be a string"),
    (None, "input_shape", [1, "3", 8, 8], r"key 'input_shape' must be a list of positive integers"),
    (None, "input_shape", 224, r"key 'input_shape' must be a list"),
    (None, "model", 12, r"key 'model' must be a string"),
    (None, "params", [1, 2], r"key 'params' must be a mapping \(full, pruned\)"),
])
def test_arch_metadata_is_checked_on_load(tmp_path, block, key, value, match):
    """The informative keys of an arch file: a NaN or a string where a count belongs is an error
    that names the file and the key (before: accepted, and a NaN compares as 'within 1%')."""
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(ARCH))
    assert load_arch(good).flops["pruned"] == 50
    doc = yaml.safe_load(good.read_text())
    (doc[block] if block else doc)[key] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(dmcpfx.ArchError, match=rf"bad\.yaml: {match}"):
        load_arch(bad)


def test_failed_save_writes_nothing(tmp_path, resnext):
    graph = dmcpfx.analyze(resnext, X)
    target = tmp_path / "arch.yaml"
    with pytest.raises(dmcpfx.ArchError):
        save_arch(target, {"nope": 1}, graph)
    assert list(tmp_path.iterdir()) == []


def test_failed_onnx_check_leaves_no_file(tmp_path, monkeypatch):
    import dmcpfx.product.onnx_export as ox

    def broken(*a, **k):
        raise ox.OnnxExportError("forced mismatch")

    monkeypatch.setattr(ox, "run_and_compare", broken)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ox.OnnxExportError):
        dmcpfx.export_onnx(model, X, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dmcpfx.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_analyze_resnet50():
    proc = run_cli("analyze", "torchvision:resnet50", "--input-shape", "1,3,64,64")
    assert proc.returncode == 0, proc.stderr
    assert "37 prunable" in proc.stdout and "layer1.0.conv3" in proc.stdout


@pytest.mark.parametrize(
    "args,match",
    [
        (("analyze", "torchvision:resnet5000"), "unknown torchvision model 'resnet5000'"),
        (("analyze", "nosuchpkg.mod:f"), "cannot import module 'nosuchpkg.mod'"),
        (("analyze", "torchvision:resnet18", "--input-shape", "1,3,a"), "input shape"),
        (("materialize", "torchvision:resnet18", "missing.yaml", "--input-shape", "1,3,32,32"), "arch file not found"),
    ],
)
def test_cli_bad_input_is_one_line(args, match):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert match in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --- issue 10: every bad input is a one-line error (exit 2) before anything is written

def _main(capsys, *args):
    from dmcpfx.cli import main

    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def _demo(tmp_path, *sets):
    return ("demo", "--run-dir", str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)])


@pytest.mark.parametrize("override,match", [
    ("run.device=tpu", "run.device"),
    ("search.num_random=-1", "search.num_random"),
    ("search.divisor=0", "search.divisor"),
    ("run.threads=0", "run.threads"),
    ("derive.tolerance=-1", "derive.tolerance"),
    ("search.epochs=0", "search.epochs"),
    ("search.amp=fp8", "search.amp"),
    ("retrain.amp=yes", "retrain.amp"),
    ("search.warmup_epochs=9", "search.warmup_epochs"),
    ("retrain.warmup_epochs=8", "retrain.warmup_epochs"),
    ("retrain.lr=-1", "retrain.lr"),
    ("search.lr=.nan", "search.lr"),
    ("model.input_shape=[1, 3, 100000, 100000]", "model.input_shape"),
    ("model.kwargs.nope=1", "does not accept|cannot be called"),
    ("model.kwargs.width=0", "raised ValueError"),
    ("search.target=1%", "below the smallest sub-net"),
])
def test_bad_config_values_fail_before_the_run_directory(tmp_path, capsys, override, match, one_thread):
    import re

    line = _main(capsys, *_demo(tmp_path, "data.train_subset=64", "data.image_size=8", override))
    assert re.search(match, line), line
    assert not (tmp_path / "run").exists()


def test_cuda_device_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert "CUDA is not available" in _main(capsys, *_demo(tmp_path, "run.device=cuda"))


def test_duplicate_yaml_keys_name_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("search:\n  epochs: 2\nsearch:\n  lr: 0.1\n")
    assert "duplicate key 'search'" in _main(capsys, "search", "--config", str(cfg), "--run-dir", str(tmp_path / "r"))
    arch = tmp_path / "a.yaml"
    arch.write_text("format: dmcpfx-arch/1\ngroups:\n  conv1: {channels: 8, of: 64}\n  conv1: 4\n")
    with pytest.raises(dmcpfx.ArchError, match="duplicate key 'conv1'"):
        load_arch(arch)
    arch.write_text("format: dmcpfx-arch/1\ngroups: {}\nwidths: {}\n")
    with pytest.raises(dmcpfx.ArchError, match=r"unknown top-level key\(s\) \['widths'\]"):
        load_arch(arch)
    assert not (tmp_path / "r").exists()


def test_factory_needing_an_argument_from_a_file(tmp_path, capsys):
    (tmp_path / "net.py").write_text("import torch\n\ndef make(depth):\n    return torch.nn.Conv2d(3, depth, 3)\n")
    line = _main(capsys, "analyze", f"{tmp_path / 'net.py'}:make", "--input-shape", "1,3,8,8")
    assert "make" in line and "depth" in line


def test_spec_is_not_imported_from_the_working_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "evil.py").write_text("raise SystemExit('imported from the cwd')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert "cannot import module 'evil'" in _main(capsys, "analyze", "evil:make", "--input-shape", "1,3,8,8")


def test_one_class_image_folder(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / "data" / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / split / "cat" / "0.png")
    line = _main(capsys, *_demo(tmp_path, "data.kind=imagefolder", f"data.root={tmp_path / 'data'}", "data.workers=0"))
    assert "1 class folder" in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name,command", [("checkpoint.pt", "demo"), ("retrain_checkpoint.pt", "retrain")])
@pytest.mark.parametrize("content", [b"", b"\x80\x02 truncated"])
def test_corrupt_checkpoint_on_resume_deletes_nothing(tmp_path, capsys, name, command, content, one_thread):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text("# finished\n")
    (run / name).write_bytes(content)
    args = [command, "--run-dir", str(run), "--set", "run.resume=true", "--set", "data.image_size=8"]
    if command == "retrain":
        args[1:1] = ["--config", str(tmp_path / "c.yaml")]
        (tmp_path / "c.yaml").write_text("search: {epochs: 2}\n")
    # the run directory is dmcpfx's: its marker names this config (else it is refused as foreign)
    from dmcpfx.config import config_to_dict, load_config
    from dmcpfx.product.run_owner import make_marker, write_marker

    cfg = load_config(tmp_path / "c.yaml" if command == "retrain" else None, ["run.resume=true", "data.image_size=8"])
    write_marker(run, make_marker(config_to_dict(cfg), cfg.model.spec, [1, 3, 8, 8]))
    before = sorted(p.name for p in run.iterdir())
    line = _main(capsys, *args)
    assert name in line and ("empty" in line or "corrupt" in line) and "delete" in line
    assert sorted(p.name for p in run.iterdir()) == before  # report.md is still there


@pytest.mark.parametrize("suffix", [".onnxx", ".pkl", ""])
def test_materialize_rejects_unknown_output_suffixes(tmp_path, capsys, suffix):
    arch = tmp_path / "arch.yaml"
    arch.write_text("format: dmcpfx-arch/1\ngroups: {conv1: {channels: 8, of: 16}}\n")
    out = tmp_path / f"c{suffix}"
    assert "suffix" in _main(capsys, "materialize", "dmcpfx.demo_models:small_resnet", str(arch),
                             "--input-shape", "1,3,8,8", "--output", str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.yaml"]


@pytest.mark.parametrize("suffix", [".pth", ".onnx"])
def test_materialize_writes_pth_and_onnx(tmp_path, capsys, suffix):
    from dmcpfx.cli import main

    arch = tmp_path / "arch.yaml"
    arch.write_text("format: dmcpfx-arch/1\ngroups: {conv1: {channels: 8, of: 16}}\n")
    out = tmp_path / f"c{suffix}"
    assert main(["materialize", "dmcpfx.demo_models:small_resnet", str(arch), "--input-shape", "1,3,8,8",
                 "--output", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    if suffix == ".pth":
        model = dmcpfx.load("dmcpfx.demo_models:small_resnet", arch, out, input_shape=[1, 3, 8, 8])
        assert model.conv1.out_channels == 8


def test_version_and_help(capsys):
    from dmcpfx.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert dmcpfx.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = capsys.readouterr().out
    assert "50% MACs" in text and "%%" not in text
