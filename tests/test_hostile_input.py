"""Every failure one line (issue 19): user code that exits or prints, Ctrl-C, a full disk, wrong
argument types, NaN inputs and outputs, labels out of range, all-or-nothing outputs."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from torch import nn

import dmcpfx
import dmcpfx.arch as dmcpfx_arch
from dmcpfx.cli import main
from dmcpfx.errors import ConfigError, InputError, NonFiniteError, OutputError

X = torch.randn(1, 3, 8, 8)


def _line(capsys, *args, code=2):
    got = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code and len(err) == 1 and err[0].startswith("error: "), (got, err)
    return err[0]


def _factory(tmp_path, body: str) -> str:
    path = tmp_path / "user_model.py"
    path.write_text("from dmcpfx.demo_models import small_resnet\n\n"
                    "def net(num_classes=4, width=4):\n" + "".join(f"    {line}\n" for line in body.splitlines()))
    return f"{path}:net"


@pytest.mark.parametrize("body,said", [
    ("raise SystemExit(0)", "raised SystemExit(0)"),
    ("raise SystemExit(3)", "raised SystemExit(3)"),
    ("import sys; sys.exit('bye')", "raised SystemExit('bye')"),
    ("raise RuntimeError('boom')", "raised RuntimeError: boom"),
    ("return 42", "returned int, not an nn.Module"),
])
def test_factory_failures_are_named_as_the_factorys(tmp_path, capsys, body, said):
    spec = _factory(tmp_path, body)
    line = _line(capsys, "analyze", spec, "--input-shape", "1,3,8,8")
    assert f"model factory '{spec}' {said}" in line


def test_ctrl_c_is_one_line_exit_130(tmp_path, capsys):
    spec = _factory(tmp_path, "raise KeyboardInterrupt")
    line = _line(capsys, "analyze", spec, "--input-shape", "1,3,8,8", code=130)
    assert "interrupted" in line


@pytest.mark.parametrize("spec,kind", [("sys:exit", "builtin_function_or_method 'exit'"),
                                       ("os:abort", "builtin_function_or_method 'abort'"),
                                       ("collections:OrderedDict", "class OrderedDict, which is not an nn.Module")])
def test_spec_must_name_a_module_class_or_a_function(spec, kind):
    # in a subprocess: if the check failed, os:abort would take the test run down
    proc = subprocess.run([sys.executable, "-m", "dmcpfx.cli", "analyze", spec, "--input-shape", "1,3,8,8"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and kind in lines[0], proc.stderr


def test_factory_print_does_not_break_json(tmp_path, capsys):
    spec = _factory(tmp_path, "print('hello from the factory')\nreturn small_resnet(num_classes, width)")
    assert main(["analyze", spec, "--input-shape", "1,3,8,8", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["input_shape"] == [1, 3, 8, 8] and "hello from the factory" in out.err


@pytest.fixture(scope="module")
def tiny():
    from dmcpfx.demo_models import small_resnet

    return small_resnet(num_classes=4, width=4).eval()


@pytest.mark.parametrize("call,match", [
    (lambda m: dmcpfx.analyze(None, X), r"analyze\(\): model must be a torch.nn.Module, got None"),
    (lambda m: dmcpfx.analyze(42, X), r"analyze\(\): model must be a torch.nn.Module, got int"),
    (lambda m: dmcpfx.analyze(m, None), r"analyze\(\): example_inputs must be a tensor"),
    (lambda m: dmcpfx.export_onnx(None, X, "m.onnx"), r"export_onnx\(\): model must be a torch.nn.Module, got None"),
    (lambda m: dmcpfx.export_onnx(m, X, None), r"export_onnx\(\): path must be a path"),
    (lambda m: dmcpfx.load(None), r"load\(\): run_dir_or_spec must be a path"),
    (lambda m: dmcpfx.derive(42, target=0.5), r"derive\(\): space must be a SearchSpace"),
    (lambda m: dmcpfx_arch.load_arch({"conv1": 4}), r"load_arch\(\): path must be a path"),
    (lambda m: dmcpfx.materialize("resnet", {}, X), r"materialize\(\): model must be a torch.nn.Module"),
    (lambda m: dmcpfx.instrument(m, X, divisor=2.5), r"instrument\(\): divisor must be an integer"),
    (lambda m: dmcpfx.search(m, [], target=0.5, epochs=1), r"search\(\): space must be a SearchSpace"),
    (lambda m: dmcpfx.retrain(None, [], epochs=1), r"retrain\(\): model must be a torch.nn.Module"),
])
def test_wrong_argument_types_name_the_argument(tiny, call, match):
    with pytest.raises(TypeError, match=match):
        call(tiny)


@pytest.mark.parametrize("call,match", [
    (lambda m: dmcpfx.instrument(m, X, divisor=-4), r"instrument\(\): divisor must be >= 1, got -4"),
    (lambda m: dmcpfx.instrument(m, X, min_ratio=2), r"instrument\(\): min_ratio must be <= 1.0, got 2$"),
    (lambda m: dmcpfx.instrument(m, X, step=1.5), r"instrument\(\): step must be <= 1.0, got 1.5$"),
    (lambda m: dmcpfx.export_onnx(m, X, "m.onnx", rtol=-1), r"export_onnx\(\): rtol must be >= 0.0, got -1"),
    (lambda m: dmcpfx.materialize(m, {}, torch.full((1, 3, 8, 8), float("nan"))),
     r"materialize\(\): example_inputs holds NaN or inf"),
    (lambda m: dmcpfx.analyze(m, torch.full((1, 3, 8, 8), float("inf"))), r"analyze\(\): example_inputs holds NaN"),
    (lambda m: dmcpfx.materialize(m, {}, torch.randn(0, 3, 8, 8)), r"materialize\(\): example_inputs is an empty batch"),
    (lambda m: dmcpfx.materialize(m, {}, torch.randn(1, 3, 8, 8, device="meta")), r"is on the meta device"),
])
def test_bad_argument_values_name_the_argument(tiny, call, match):
    with pytest.raises(InputError, match=match):
        call(tiny)


def test_materialize_of_a_meta_model_is_one_line():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(InputError, match=r"materialize\(\): model has tensors on the meta device \(e.g. '0.weight'\)"):
        dmcpfx.materialize(model, {}, X)


class _Loader(list):
    """A list of ``(images, labels)`` batches (a loader with a length)."""


def _batches(labels):
    g = torch.Generator().manual_seed(0)
    return _Loader([(torch.randn(len(labels), 3, 8, 8, generator=g), torch.tensor(labels))])


def test_labels_out_of_range_name_num_classes(tiny):
    import copy

    with pytest.raises(ConfigError, match=r"label 9 is out of range for the model's 4 outputs \(num_classes=4\)"):
        dmcpfx.retrain(copy.deepcopy(tiny), _batches([1, 9]), epochs=1, progress=False)
    space = dmcpfx.instrument(copy.deepcopy(tiny).train(), X)
    with pytest.raises(ConfigError, match=r"search: label 9 is out of range .*num_classes=4"):
        dmcpfx.search(space, _batches([1, 9]), target=0.7, epochs=1, device="cpu", calib_batches=0,
                      progress=False)


def test_labels_off_the_cpu_are_checked_before_the_loss_runs():
    """The CUDA path (a device-side assert would kill the CUDA context) on the CPU: labels on a
    non-CPU device (meta here) are checked on their host copy before the loss kernel is launched,
    and ignore_index (-100) stays allowed."""
    from dmcpfx.labels import checked_loss, host_labels

    def never(*args, **kwargs):
        raise AssertionError("the loss ran on out-of-range labels")

    logits = torch.empty(3, 4, device="meta")
    on_device = torch.empty(3, dtype=torch.int64, device="meta")
    batch = (torch.zeros(3, 2), torch.tensor([0, 7, 1]))
    assert host_labels(batch) is batch[1] and host_labels((torch.zeros(1),)) is None
    with pytest.raises(ConfigError, match=r"search: label 7 is out of range for the model's 4 outputs"):
        checked_loss(never, logits, on_device, "search", host=host_labels(batch))
    fine = torch.tensor([0, -100, 3])
    assert checked_loss(lambda lo, la: "ran", logits, on_device, "search", host=fine) == "ran"
    with pytest.raises(ConfigError, match=r"evaluate: label -3 is out of range"):  # CPU: torch's IndexError, named
        checked_loss(torch.nn.functional.cross_entropy, torch.zeros(2, 4), torch.tensor([1, -3]), "evaluate")


def test_set_widths_says_what_is_wrong_with_a_width(tiny):
    space = dmcpfx.instrument(tiny, X)
    gid = next(iter(space.groups))
    with pytest.raises(dmcpfx.ArchError, match=rf"^group '{gid}': width must be an integer, got 3.3$"):
        space.set_widths({gid: 3.3})
    with pytest.raises(dmcpfx.ArchError, match=rf"^group '{gid}': width 99 is outside \[1, 4\]$"):
        space.set_widths({gid: 99})
    space.set_widths({gid: torch.tensor(2)})
    assert space.current_widths()[gid] == 2


@pytest.mark.parametrize("labels,said", [
    (torch.tensor([0.0, 1.0]), r"labels must be integer class indices of shape \(2,\) .* got float32 of shape \(2,\)$"),
    (torch.tensor([[1, 0], [2, 3]]), r"got int64 of shape \(2, 2\)$"),
    (torch.eye(4)[[1, 2]],
     r"got float32 of shape \(2, 4\) \(one-hot labels: pass labels.argmax\(1\); soft or multi-label .*\)$"),
    (torch.tensor([True, False]), r"got bool of shape \(2,\)$"),
])
def test_labels_that_are_not_class_indices_are_one_line(labels, said):
    """Float, one-hot, bool or mis-shaped labels: the loss names the shapes, not torch's loss."""
    from dmcpfx.labels import checked_loss

    with pytest.raises(ConfigError, match=r"^evaluate: .*" + said):
        checked_loss(torch.nn.functional.cross_entropy, torch.randn(2, 4), labels, "evaluate")


def test_float_labels_stop_search_and_retrain_in_one_line(tiny):
    """End to end: both stages go through that check before their first step."""
    import copy

    batches = _Loader([(torch.randn(2, 3, 8, 8), torch.tensor([0.0, 1.0]))])
    said = r"labels must be integer class indices of shape \(2,\) for logits of shape \(2, 4\), got float32"
    with pytest.raises(ConfigError, match=r"^retrain .*: " + said):
        dmcpfx.retrain(copy.deepcopy(tiny), batches, epochs=1, progress=False)
    space = dmcpfx.instrument(copy.deepcopy(tiny).train(), X)
    with pytest.raises(ConfigError, match=r"^search: " + said):
        dmcpfx.search(space, batches, target=0.7, epochs=1, device="cpu", calib_batches=0, progress=False)


def test_integer_labels_of_any_width_are_cast_and_one_output_is_refused():
    """int32 / uint8 class indices give int64's loss; a model with one output (cross-entropy
    over one class is always 0: nothing would learn) is refused by name."""
    from dmcpfx.labels import checked_loss, logits_tensor

    logits = torch.randn(3, 4)
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3, 1]))
    for dtype in (torch.int32, torch.uint8, torch.int16):
        got = checked_loss(torch.nn.functional.cross_entropy, logits, torch.tensor([0, 3, 1], dtype=dtype), "evaluate")
        assert torch.equal(got, ref)
    with pytest.raises(ConfigError, match=r"^search trains .* returns 1 output per example \(shape \(3, 1\)\)"):
        logits_tensor(torch.zeros(3, 1), "search")
    assert logits_tensor(logits, "search") is logits


class NanInEval(nn.Module):
    """Finite while training, NaN in eval mode (like BatchNorm statistics gone bad)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y if self.training else y * float("nan")


def test_retrain_stops_on_a_non_finite_validation_loss(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"retrain epoch 1/2: the validation loss is nan"):
        dmcpfx.retrain(NanInEval(), _batches([0, 1]), epochs=2, val_loader=_batches([0, 1]), run_dir=run,
                       progress=False)
    assert not (run / "retrain_checkpoint.pt").exists()


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return {"logits": y.mean((2, 3)), "features": y}


def test_onnx_check_compares_dict_outputs_value_by_value(tmp_path):
    diff = dmcpfx.export_onnx(DictOut().eval(), X, tmp_path / "d.onnx")
    assert diff < 1e-4 and (tmp_path / "d.onnx").is_file()


def test_onnx_check_names_the_non_finite_side(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with torch.no_grad():
        model[0].bias[0] = float("inf")
    with pytest.raises(dmcpfx.OnnxExportError, match="PyTorch itself outputs NaN or inf"):
        dmcpfx.export_onnx(model, X, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_write_errors_name_the_path_given(tmp_path, tiny):
    from dmcpfx.product.run_dir import save_weights

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 'file' / 'x.pt'}"):
        save_weights(tiny, tmp_path / "file" / "x.pt")


@pytest.fixture()
def arch(tmp_path):
    from dmcpfx.demo_models import small_resnet

    graph = dmcpfx.analyze(small_resnet().eval(), X)  # the model the CLI builds from the spec
    return dmcpfx_arch.save_arch(tmp_path / "arch.yaml", {g: max(1, graph.groups[g].width // 2) for g in graph.prunable},
                            graph, model="dmcpfx.demo_models:small_resnet")


def test_materialize_outputs_are_all_or_nothing(tmp_path, capsys, monkeypatch, arch):
    from dmcpfx.product import onnx_export

    def broken(model, inputs, path, **kw):
        raise onnx_export.OnnxExportError(f"onnxruntime cannot run {os.path.basename(path)}")

    monkeypatch.setattr(onnx_export, "export_onnx", broken)
    out, onnx = tmp_path / "x.pt", tmp_path / "x.onnx"
    line = _line(capsys, "materialize", "dmcpfx.demo_models:small_resnet", str(arch), "--input-shape", "1,3,8,8",
                 "--output", str(out), "--onnx", str(onnx))
    assert "cannot run x.onnx" in line  # the path given, not the hidden temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.yaml"]  # no x.pt, no temporary file
    (tmp_path / "ro").write_text("a file, not a directory")
    line = _line(capsys, "materialize", "dmcpfx.demo_models:small_resnet", str(arch), "--input-shape", "1,3,8,8",
                 "--output", str(out), "--onnx", str(tmp_path / "ro" / "x.onnx"))
    assert f"cannot write {tmp_path / 'ro' / 'x.onnx'}" in line and not out.exists()


def test_disk_full_is_one_line_naming_the_path_and_leaves_no_temp_file(tmp_path, arch):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "out" / "x.pt"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, "-m", "dmcpfx.cli", "materialize", "dmcpfx.demo_models:small_resnet",
                           str(arch), "--input-shape", "1,3,8,8", "--output", str(out)], preexec_fn=limit,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and f"cannot write {out}" in lines[0], proc.stderr
    assert list(out.parent.iterdir()) == []


def test_corrupt_and_empty_images_are_named(tmp_path):
    from PIL import Image

    from dmcpfx.data import imagefolder_loaders
    from dmcpfx.image_files import load_rgb

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "0.png")
    empty, corrupt = tmp_path / "train" / "a" / "1.png", tmp_path / "train" / "b" / "1.png"
    empty.write_bytes(b"")
    corrupt.write_bytes((tmp_path / "val" / "a" / "0.png").read_bytes()[:40])
    with pytest.raises(ConfigError, match=rf"image {empty} is empty"):
        load_rgb(str(empty))
    with pytest.raises(ConfigError, match=rf"image {corrupt} is corrupt or not an image"):
        load_rgb(str(corrupt))
    with pytest.raises(ConfigError, match=rf"image {empty} is empty"):  # up front: before any run starts
        imagefolder_loaders(tmp_path, image_size=8, batch_size=4, workers=1)
    empty.write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=rf"image {empty} is corrupt or not an image"):
        imagefolder_loaders(tmp_path, image_size=8, batch_size=4, workers=1)
    Image.new("RGB", (8, 8)).save(empty, format="PNG")  # a good image again
    with pytest.raises(ConfigError, match=rf"image {corrupt} is corrupt or not an image"):  # 40 bytes: no header
        imagefolder_loaders(tmp_path, image_size=8, batch_size=4, workers=1)
    noisy = tmp_path / "noisy.png"  # a truncated file with a whole header: named when it is decoded
    Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3)).save(noisy)
    corrupt.write_bytes(noisy.read_bytes()[: noisy.stat().st_size // 2])
    bundle = imagefolder_loaders(tmp_path, image_size=8, batch_size=4, workers=1)
    with pytest.raises(ConfigError) as failure:
        list(bundle.train)
    from dmcpfx.errors import one_line

    assert "\n" not in one_line(failure.value) and "1.png" in one_line(failure.value)
    assert one_line(failure.value).startswith("image ")


def test_activations_that_cannot_fit_are_refused_before_the_run(tmp_path, monkeypatch):
    """Activations larger than the memory (data.image_size at its documented maximum, 8192, needs
    51 GiB for the tiny demo ResNet at batch 2): one line naming the keys, no run directory (it used
    to get the process killed by the kernel while the analysis ran the model). Here the memory is
    made small instead of the images large, to keep the test fast."""
    import dmcpfx.config_checks as checks
    from dmcpfx.config import load_config
    from dmcpfx.config_checks import activation_bytes
    from dmcpfx.demo_models import small_resnet
    from dmcpfx.pipeline import run_pipeline

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 64, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert activation_bytes(net, (2, 3, 8, 8)) == 4 * (2 * 4 * 64 + 2 * 4 * 64 + 2 * 2)  # ReLU in place: once
    assert all(torch.equal(v, before[k]) and v.device.type == "cpu" for k, v in net.state_dict().items())
    need = activation_bytes(small_resnet(num_classes=4, width=4), (2, 3, 64, 64))
    monkeypatch.setattr(checks, "available_memory", lambda: need // 2)
    cfg = load_config(None, ["data.kind=synthetic", "data.num_classes=4", "data.image_size=64", "data.batch_size=2",
                             "data.steps=2", "model.kwargs.width=4", "run.progress=false"])
    cfg.run.dir, cfg.run.name = str(tmp_path), "run"
    with pytest.raises(ConfigError, match=r"data\.image_size=64 with data\.batch_size=2: .* GiB of activations, more "
                                          r"than the .* available on cpu; lower data\.image_size or data\.batch_size"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()
