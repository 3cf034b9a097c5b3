"""Smoke test of benchmarks/latency.py: every arm is built at the MACs target and timed.

No timing assertions (CI machines are noisy); only that the script runs end to end,
that every arm lands within 2% of the MACs target (counted independently here from
the rows the script returns) and that every latency ratio and quotient is finite.
"""
from __future__ import annotations

import math

import pytest

from bench_scripts import load_benchmark

pytest.importorskip("torch_pruning")
pytest.importorskip("onnxruntime")

import dmcpfx  # noqa: E402
from dmcpfx.arch import load_arch  # noqa: E402

@pytest.mark.slow  # about 55 s on 2 cores: the default run keeps under its 10-minute budget
def test_latency_smoke(tmp_path):
    bench = load_benchmark("latency.py")
    arch_dir, md = tmp_path / "archs", tmp_path / "latency.md"
    rows = bench.main(["--smoke", "--arch-dir", str(arch_dir), "--markdown", str(md)])

    expected_arms = {bench.ARM_LABELS[k] for k in ("full", *bench.ALL_ARMS)}
    assert {r["arm"] for r in rows} == expected_arms
    assert {r["model"] for r in rows} == {"mobilenet_v2"}
    full = next(r for r in rows if r["key"] == "full")
    assert full["target"] is None
    for r in rows:
        if r["target"] is not None:
            target_macs = r["target"] * full["macs"]
            assert abs(r["macs"] - target_macs) <= 0.02 * target_macs, (r["arm"], r["macs"], target_macs)
            assert r["macs_ok"]
        assert r["macs_ratio"] == pytest.approx(full["macs"] / r["macs"])
        assert set(r["columns"]) == {"ort b1", "ort b2", "eager b1", "eager b2"}
        for name, c in r["columns"].items():
            for key in ("ms", "lat_ratio", "quotient"):
                assert math.isfinite(c[key]) and c[key] > 0, (r["arm"], name, key, c[key])
            assert c["quotient"] == pytest.approx(c["lat_ratio"] / r["macs_ratio"])

    # the searched archs were cached as valid arch YAML at the benchmark size
    cached = sorted(arch_dir.glob("mobilenet_v2_64px_d*_t0.5_*.yaml"))
    assert len(cached) == 2
    for path in cached:
        arch = load_arch(path)
        assert arch.input_shape == [1, 3, 64, 64]

    text = md.read_text()
    for label in expected_arms:
        assert f"| {label} |" in text
