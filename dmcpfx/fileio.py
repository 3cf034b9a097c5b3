"""Atomic file writing: a reader never sees a half-written file.

Every writer goes through :func:`atomic_path`: it yields a temporary path in the
target's own directory and renames it over the target only when the block exits
without an exception (``os.replace`` is atomic on POSIX and Windows).
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputError

# ".<name>.<pid>.<random>.tmp" (older versions: ".<name>.<random>.tmp")
_TEMP = re.compile(r"^\..+?(?:\.(?P<pid>\d+))?\.[A-Za-z0-9_]{6,}\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def is_temp_name(name: str, *, stale_only: bool = False) -> bool:
    """Whether ``name`` is a temporary file of :func:`atomic_path`; with ``stale_only``, one
    whose process is gone (a name without a pid counts as stale)."""
    m = _TEMP.match(name)
    if m is None:
        return False
    if not stale_only:
        return True
    pid = m.group("pid")
    return pid is None or (int(pid) != os.getpid() and not _pid_alive(int(pid)))


def _cannot(target: Path, exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return f"cannot write {target}: {reason}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it onto ``path`` on success.

    The temporary file is removed on any exception (Ctrl-C included); an ``OSError`` (disk
    full, read-only directory) becomes an :class:`~dmcpfx.errors.OutputError` naming ``path``,
    never the temporary file."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(_cannot(target, exc)) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp_path, target)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(_cannot(target, exc)) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


@contextlib.contextmanager
def staged(paths) -> Iterator[dict[str, Path]]:
    """All or nothing: yield ``{path: temporary sibling}`` for every path; when the block ends
    without an exception every temporary file is moved onto its path, else all are removed (no
    output at all). A dmcpfx error whose message names a temporary file names its path instead."""
    from .errors import DmcpfxError

    with contextlib.ExitStack() as stack:
        tmps = {str(p): stack.enter_context(atomic_path(p)) for p in paths}
        try:
            yield tmps
        except DmcpfxError as exc:
            message = str(exc)
            for path, tmp in tmps.items():
                message = message.replace(str(tmp), path).replace(tmp.name, Path(path).name)
            if message == str(exc):
                raise
            try:
                renamed = type(exc)(message)
            except Exception:  # noqa: BLE001 - an exception class with another signature
                raise exc from None
            raise renamed from exc


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def torch_save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's writer reports a full disk as RuntimeError
            raise OutputError(_cannot(Path(path), exc)) from exc


def _finite_or_none(value):
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as strict JSON (NaN/inf become ``null``, never a bare ``NaN``) atomically."""
    import json

    write_text_atomic(path, json.dumps(_finite_or_none(obj), indent=2, allow_nan=False) + "\n")
