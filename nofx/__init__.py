"""NOFX: a control plane for multi-step AI work."""

__version__ = "0.1.0"
