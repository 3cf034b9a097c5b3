"""The run directory is ours or refused: marker, lock, stale temporary files (issue 19)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dmcpfx.config import load_config
from dmcpfx.errors import ConfigError
from dmcpfx.pipeline import run_pipeline
from dmcpfx.product.run_owner import LOCK_NAME, MARKER_NAME

TINY = ["data.kind=synthetic", "data.num_classes=4", "data.image_size=8", "data.batch_size=2", "data.steps=2",
        "model.kwargs.width=4", "run.progress=false"]


def _cfg(run_dir, *extra: str):
    cfg = load_config(None, TINY + list(extra))
    cfg.run.dir, cfg.run.name = str(run_dir.parent), run_dir.name
    return cfg


def _snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_new_directory_gets_a_marker_and_no_lock(tmp_path):
    run = tmp_path / "run"
    run_pipeline(_cfg(run), ("analyze",))
    marker = json.loads((run / MARKER_NAME).read_text())
    assert marker["format"] == "dmcpfx-run/1" and marker["model"] == "dmcpfx.demo_models:small_resnet"
    assert marker["input_shape"] == [1, 3, 8, 8] and set(marker["config_hash"]) >= {"model", "search"}
    assert not (run / LOCK_NAME).exists()
    run_pipeline(_cfg(run, "retrain.epochs=3"), ("analyze",))  # same run (retrain section may change): accepted


def test_users_own_files_are_refused_untouched(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "config.yaml").write_text("my: own\n")
    (run / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = _snapshot(run)
    with pytest.raises(ConfigError, match=r"holds files dmcpfx did not make \(config\.yaml, metrics\.jsonl"):
        run_pipeline(_cfg(run), ("analyze",))
    assert _snapshot(run) == before


def test_empty_directory_is_accepted(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    run_pipeline(_cfg(run), ("analyze",))
    assert (run / MARKER_NAME).is_file() and (run / "analysis.txt").is_file()


@pytest.mark.parametrize("change,match", [
    ("model.kwargs.width=6", r"config section\(s\) model differ"),
    ("data.image_size=12", r"input shape \[1, 3, 8, 8\] there, \[1, 3, 12, 12\] now"),
    ("model.spec={file}:net", r"model.spec 'dmcpfx.demo_models:small_resnet' there"),
])
def test_resume_of_another_run_is_refused_before_a_byte_is_written(tmp_path, change, match):
    factory = tmp_path / "other_model.py"
    factory.write_text("from dmcpfx.demo_models import small_resnet\n"
                       "def net(num_classes=10, width=4):\n    return small_resnet(num_classes, width)\n")
    change = change.format(file=factory)
    run = tmp_path / "run"
    run_pipeline(_cfg(run), ("analyze",))
    before = _snapshot(run)
    with pytest.raises(ConfigError, match=match):
        run_pipeline(_cfg(run, change, "run.resume=true"), ("analyze",))
    assert _snapshot(run) == before  # config.yaml and analysis.txt untouched


def test_a_live_lock_refuses_a_second_process(tmp_path):
    run = tmp_path / "run"
    run_pipeline(_cfg(run), ("analyze",))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run / LOCK_NAME).write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        before = _snapshot(run)
        with pytest.raises(ConfigError, match=rf"in use by process {other.pid}"):
            run_pipeline(_cfg(run, "run.resume=true"), ("analyze",))
        assert _snapshot(run) == before
    finally:
        other.kill()
        other.wait()
    # the owner is dead now: its lock is stale and taken over
    run_pipeline(_cfg(run, "run.resume=true"), ("analyze",))
    assert not (run / LOCK_NAME).exists()


def test_stale_temporary_files_are_swept(tmp_path):
    run = tmp_path / "run"
    run_pipeline(_cfg(run), ("analyze",))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = run / f".checkpoint.pt.{int(dead.stdout)}.abcd1234.tmp"
    old_style = run / ".metrics.jsonl.k8lv5hwd.tmp"
    stale.write_bytes(b"")
    old_style.write_bytes(b"")
    run_pipeline(_cfg(run, "run.resume=true"), ("analyze",))
    assert not stale.exists() and not old_style.exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_a_file_as_run_dir_is_refused(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a directory")
    with pytest.raises(ConfigError, match="is not a directory"):
        run_pipeline(_cfg(path), ("analyze",))
    assert path.read_text() == "not a directory"


def test_cli_refuses_foreign_dir_in_one_line(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    sets = [a for item in TINY for a in ("--set", item)]
    (tmp_path / "cfg.yaml").write_text("{}\n")
    proc = subprocess.run([sys.executable, "-m", "dmcpfx.cli", "search", "--config", str(tmp_path / "cfg.yaml"), "--run-dir",
                           str(run), *sets], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "notes.txt" in proc.stderr, proc.stderr
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
