"""The exceptions dmcpfx raises; each message names the culprit (node, module, group, key)."""


class DmcpfxError(Exception):
    """Base class of every error dmcpfx raises on bad input."""


class TraceError(DmcpfxError):
    """The model could not be exported with torch.export (e.g. data-dependent control flow)."""


class AnalysisError(DmcpfxError):
    """Channel analysis could not run on the traced graph."""


class ArchError(DmcpfxError):
    """An architecture (widths dict or arch YAML) does not fit the model."""


class ConfigError(DmcpfxError):
    """A configuration file or value is invalid."""


class NonFiniteError(DmcpfxError):
    """A loss, gradient or parameter became NaN or infinite during search or retraining."""


class OutputError(DmcpfxError, OSError):
    """An output file could not be written (disk full, read-only directory); names the path given."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` in one line. An error re-raised by a DataLoader worker carries the
    worker's traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."): its
    own message is the traceback's last line."""
    text = str(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in text:
        last = lines[-1]
        name = type(exc).__name__
        for prefix in (f"{type(exc).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                return last[len(prefix):]
        return last
    return lines[0] if lines else type(exc).__name__


class InputError(DmcpfxError, ValueError):
    """An argument of a public function has a bad value (NaN example input, empty batch, meta tensors)."""
