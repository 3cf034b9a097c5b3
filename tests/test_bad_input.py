"""Bad input: clear errors that name the culprit, and no partial files."""
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import dmcpfx

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


def test_untraceable_model_names_the_module():
    with pytest.raises(dmcpfx.TraceError, match=r"module 'body'"):
        dmcpfx.analyze(DataDependent(), X)


def test_wrong_input_shape_names_the_node():
    with pytest.raises(dmcpfx.AnalysisError, match="conv1"):
        dmcpfx.analyze(torchvision.models.resnet18(), torch.randn(1, 5, 32, 32))


@pytest.fixture(scope="module")
def resnext():
    return torchvision.models.resnext50_32x4d().eval()


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
def test_bad_arch_names_the_group(resnext, widths, match):
    with pytest.raises(dmcpfx.ArchError, match=match):
        dmcpfx.materialize(resnext, widths, X)


def test_arch_yaml_round_trip_and_format_errors(tmp_path, resnext):
    graph = dmcpfx.analyze(resnext, X)
    path = dmcpfx.save_arch(tmp_path / "a.yaml", {"conv1": 32}, graph, model="torchvision:resnext50_32x4d")
    arch = dmcpfx.load_arch(path)
    assert arch.widths["conv1"] == 32 and arch.flops["pruned"] < arch.flops["full"]
    compact = dmcpfx.materialize(resnext, path, X)
    assert compact.conv1.out_channels == 32
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("dmcpfx-arch/1", "dmcpfx-arch/9"))
    with pytest.raises(dmcpfx.ArchError, match="unsupported format 'dmcpfx-arch/9'"):
        dmcpfx.load_arch(bad)
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text().replace("of: 64", "of: 48", 1))
    with pytest.raises(dmcpfx.ArchError, match="another model"):
        dmcpfx.materialize(resnext, other, X)
    (tmp_path / "notyaml.yaml").write_text("groups: [1, 2")
    with pytest.raises(dmcpfx.ArchError, match="not valid YAML"):
        dmcpfx.load_arch(tmp_path / "notyaml.yaml")


def test_failed_save_writes_nothing(tmp_path, resnext):
    graph = dmcpfx.analyze(resnext, X)
    target = tmp_path / "arch.yaml"
    with pytest.raises(dmcpfx.ArchError):
        dmcpfx.save_arch(target, {"nope": 1}, graph)
    assert list(tmp_path.iterdir()) == []


def test_failed_onnx_check_leaves_no_file(tmp_path, monkeypatch):
    import dmcpfx.onnx_export as ox

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
