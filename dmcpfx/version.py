"""The version of dmcpfx (recorded in run markers and reports)."""
__version__ = "0.1.0"
