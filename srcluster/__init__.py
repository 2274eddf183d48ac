"""The ``srcluster`` command: local upscaling, model management, and the whole cluster on one machine (``up``)."""

__version__ = "0.1.0"
