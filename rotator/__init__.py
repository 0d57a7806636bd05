"""rotator: keeps container-registry pull credentials fresh, proven to pull."""

__version__ = "0.1.0"
