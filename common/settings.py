"""srcluster's settings: one frozen dataclass, read from ``SRCLUSTER_*`` variables.

Each field's environment variable is ``SRCLUSTER_`` + the field name in upper
case (``max_pixels`` -> ``SRCLUSTER_MAX_PIXELS``). A malformed value fails at
start-up with a :class:`~common.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import ConfigError

ENV_PREFIX = "SRCLUSTER_"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "srcluster"


DEFAULT_MAX_BYTES = 50 * 1024 * 1024
"""Largest upload or input file accepted, in bytes."""

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest input image accepted, in pixels (guards against decompression bombs)."""

DEFAULT_MAX_OUTPUT_PIXELS = 16384 * 16384
"""Largest output image produced, in pixels (the canvas is held in memory)."""

DEFAULT_JPEG_QUALITY = 95
"""Quality of JPEG output (1-100)."""

DEFAULT_WEBP_QUALITY = 95
"""Quality of lossy WebP output (1-100); 101 asks for lossless."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults a single machine needs."""

    data_dir: Path = field(default_factory=_default_data_dir)
    """Folder for converted models, the registry of user models and local state."""

    models_dir: Path | None = None
    """Folder of cached ONNX models; defaults to ``data_dir / "models"``."""

    provider: str = "auto"
    """Inference provider: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""

    threads: int = 0
    """ONNX Runtime intra-op threads per session; 0 means the machine's cores."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    webp_quality: int = DEFAULT_WEBP_QUALITY

    @property
    def model_cache(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def inference_threads(self) -> int:
        return self.threads if self.threads > 0 else (os.cpu_count() or 1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then ``overrides``.

        Raises:
            ConfigError: a variable is malformed (the message names it).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, f.type)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of its range."""
        if self.provider not in ("auto", "cpu", "cuda"):
            raise ConfigError("SRCLUSTER_PROVIDER must be auto, cpu or cuda", value=self.provider)
        for name in ("max_bytes", "max_pixels", "max_output_pixels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive")
        if self.threads < 0:
            raise ConfigError("SRCLUSTER_THREADS must be 0 (all cores) or positive")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("SRCLUSTER_JPEG_QUALITY must be within 1..100")
        if not 1 <= self.webp_quality <= 101:
            raise ConfigError("SRCLUSTER_WEBP_QUALITY must be within 1..101")


def _parse(name: str, raw: str, annotation: Any) -> Any:
    kind = str(annotation)
    try:
        if "int" in kind:
            return int(raw)
        if "Path" in kind:
            return Path(raw).expanduser()
        if "bool" in kind:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(f"{name} is malformed", value=raw) from None
    return raw
