"""The ``srcluster`` command: local upscaling, model management and (later) the cluster."""

__version__ = "0.1.0"
