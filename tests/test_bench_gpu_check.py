"""Smoke tests of benchmarks/gpu_check.py (issue 17 item 5): its CPU mode runs the same plumbing
as the GPU checks with tiny models. On CI there is no GPU; the GPU mode refuses to run without one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench_scripts import load_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 13 s; tests/test_strict_numerics.py checks the strict mode in the default run
def test_strict_check_passes_on_the_cpu(capsys, one_thread):
    gpu_check = load_benchmark("gpu_check.py")
    assert gpu_check.check_strict(gpu_check.CPU_SMOKE)
    assert "PASS strict checks: resnet18: materialize verified, slimmable available" in capsys.readouterr().out


@pytest.mark.slow  # 20 s; tests/test_device_analysis.py covers the same property in the default run
def test_analysis_check_passes_on_the_cpu(capsys, one_thread):
    gpu_check = load_benchmark("gpu_check.py")
    assert gpu_check.check_analysis(gpu_check.CPU_SMOKE)
    assert "PASS cpu analysis: resnet18 b1 same, resnet18 b2 same, resnet18 untouched" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_mode_without_a_gpu_is_one_fail_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout.strip().startswith("FAIL gpu: no CUDA device"), proc.stdout


@pytest.mark.slow  # about 2 min: two recipes under torchrun, the step-cost table, the latency budget
def test_cpu_smoke_runs_every_check(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.stdout.count("PASS ") == 6 and "6 of 6 checks passed" in proc.stdout
    for recipe in ("imagenet_resnet50", "imagenet_mobilenet_v2"):
        assert (tmp_path / recipe / "report.md").is_file() and (tmp_path / recipe / "compact.onnx").is_file()


def test_the_gpu_settings_are_arguments_their_scripts_accept():
    """The GPU run's arguments of search_overhead.py, latency.py and latency_budget.py parse there
    (a CPU machine parses them with the device swapped: those scripts refuse cuda without CUDA)."""
    gpu_check = load_benchmark("gpu_check.py")
    gpu = gpu_check.GPU

    def on_cpu(args):
        return ["cpu" if a == "cuda" else a for a in args]

    overhead = load_benchmark("search_overhead.py").parse_args(["--model", "resnet50", *on_cpu(gpu.overhead)])
    assert overhead.batch == 64 and overhead.size == 224
    latency = load_benchmark("latency.py").parse_args(on_cpu(gpu.latency))
    assert latency.arms == ["dmcp-d8", "uniform-d8"] and latency.batches == [256] and latency.targets == [0.5]
    budget = load_benchmark("latency_budget.py").parse_args([*on_cpu(gpu.budget)[:1], "ort-cpu", *gpu.budget[2:]])
    assert budget.batch == 256
    assert gpu_check.DEFAULT_CHECKS == {"strict", "analysis", "recipes", "steps", "latency"}
    with pytest.raises(SystemExit):
        gpu_check.main(["--cpu-smoke", "--only", "strict,bogus"])
