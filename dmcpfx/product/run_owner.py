"""Whose run directory is it: the marker that says what made it, and the lock of the process using it.

A run directory holds ``dmcpfx-run.json``, written when dmcpfx creates the directory::

    {"format": "dmcpfx-run/1", "model": "pkg:fn", "input_shape": [1, 3, 32, 32],
     "config_hash": {"model": "<sha256>", "data": ..., "search": ..., "derive": ...}, "version": "0.1.0"}

The pipeline writes only into a new or empty directory, or into one whose marker names the
same model spec, input shape and config sections (:data:`HASHED`; the ``retrain`` and ``run``
sections may change between ``search`` and ``retrain``). Anything else is refused before a byte
is written: a directory with the user's own files, another model's run. ``dmcpfx-run.lock``
holds the pid of the process writing the directory; a second process is refused, the lock of
a dead process is taken over. Temporary files of :func:`~dmcpfx.fileio.atomic_path` left by a
killed process are removed when the lock is taken.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import ConfigError
from ..fileio import is_temp_name, write_json_atomic
from ..version import __version__

__all__ = ["MARKER_NAME", "LOCK_NAME", "HASHED", "make_marker", "check_run_dir", "check_unlocked", "run_lock",
           "write_marker"]

MARKER_NAME = "dmcpfx-run.json"
LOCK_NAME = "dmcpfx-run.lock"
FORMAT = "dmcpfx-run/1"
HASHED = ("model", "data", "search", "derive")  # what the searched files depend on


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_marker(config: Mapping[str, Any], spec: str, input_shape) -> dict:
    """The marker of a run: ``config`` is the plain dict of the whole config (sections)."""
    return {"format": FORMAT, "model": spec, "input_shape": [int(v) for v in input_shape],
            "config_hash": {k: _hash(config.get(k)) for k in HASHED}, "version": __version__}


def _foreign(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:4]) + (", ..." if len(names) > 4 else "")
    return shown


def check_run_dir(run_dir: str | os.PathLike, marker: Mapping[str, Any]) -> None:
    """Refuse (ConfigError) a run directory that is not new, empty, or a run of the same marker."""
    path = Path(run_dir)
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"run directory {path} exists and is not a directory; choose another --run-dir or run.name")
    names = [p.name for p in path.iterdir() if p.name != LOCK_NAME and not is_temp_name(p.name)]
    if not names:
        return
    if MARKER_NAME not in names:
        raise ConfigError(f"run directory {path} holds files dmcpfx did not make ({_foreign(names)}; no {MARKER_NAME}); "
                          f"choose an empty or new directory with --run-dir or run.name")
    try:
        found = json.loads((path / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path / MARKER_NAME} is unreadable or not JSON ({exc}); start over in a new run "
                          f"directory") from exc
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise ConfigError(f"{path / MARKER_NAME} is not a dmcpfx run marker (format {FORMAT}); start over in a new "
                          f"run directory")
    _compare(path, found, marker)


def _compare(path: Path, found: Mapping[str, Any], marker: Mapping[str, Any]) -> None:
    where = f"run directory {path} holds another run"
    fix = "choose another --run-dir or run.name (or run with the config that made it)"
    if found.get("model") != marker["model"]:
        raise ConfigError(f"{where}: model.spec {found.get('model')!r} there, {marker['model']!r} now; {fix}")
    if found.get("input_shape") != marker["input_shape"]:
        raise ConfigError(f"{where}: input shape {found.get('input_shape')} there, {marker['input_shape']} now; {fix}")
    hashes = found.get("config_hash") if isinstance(found.get("config_hash"), dict) else {}
    changed = [k for k in HASHED if hashes.get(k) != marker["config_hash"][k]]
    if changed:
        raise ConfigError(f"{where}: config section(s) {', '.join(changed)} differ from the config that made it; {fix}")


def write_marker(run_dir: str | os.PathLike, marker: Mapping[str, Any]) -> None:
    """Write the marker (atomically) unless the directory already has one."""
    path = Path(run_dir) / MARKER_NAME
    if not path.exists():
        write_json_atomic(path, dict(marker))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _holder(lock: Path) -> tuple[int | None, str | None]:
    """(pid, host) of the lock's owner, or (None, None) when it cannot be read."""
    try:
        info = json.loads(lock.read_text(encoding="utf-8"))
        return int(info["pid"]), str(info.get("host"))
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _held_by_other(lock: Path) -> int | None:
    """The pid of a live other process holding ``lock`` (None: free, stale or ours)."""
    if not lock.exists():
        return None
    pid, host = _holder(lock)
    if pid is None or pid == os.getpid():
        return None
    if host != socket.gethostname():
        return pid  # another machine's process: cannot tell if it is alive
    return pid if _alive(pid) else None


def check_unlocked(run_dir: str | os.PathLike) -> None:
    """ConfigError when another live process holds the run directory's lock."""
    lock = Path(run_dir) / LOCK_NAME
    pid = _held_by_other(lock)
    if pid is not None:
        raise ConfigError(f"run directory {Path(run_dir)} is in use by process {pid} ({lock}); wait for it to end, "
                          f"or delete {lock.name} if no such process runs")


def _sweep(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        if is_temp_name(p.name, stale_only=True) and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``<run_dir>/dmcpfx-run.lock`` (creating the directory); refuse a live other owner.

    A stale lock (a dead pid on this host) is taken over; stale temporary files are removed."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            check_unlocked(path)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale (or our own): take it over
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        break
    else:
        check_unlocked(path)
        raise ConfigError(f"cannot take the lock {lock}; another process is starting in {path}")
    try:
        _sweep(path)
        yield
    finally:
        if _holder(lock)[0] == os.getpid():
            with contextlib.suppress(OSError):
                lock.unlink()
