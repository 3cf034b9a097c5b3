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
