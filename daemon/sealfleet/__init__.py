"""sealfleet: one place that knows which cluster holds which sealing key, and fixes it."""

__version__ = "0.1.0"
