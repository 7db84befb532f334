"""tokenctl: the spend control plane for AI coding tools."""

__version__ = "0.1.0"
