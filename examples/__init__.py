"""Runnable dmcpfx recipes; ``examples.models`` holds the small demo models."""
