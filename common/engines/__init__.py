"""Inference engines: a family of interchangeable backends behind one contract.

The contract (:class:`Engine`): ``run`` takes float32 NCHW ``[N, 3, h, w]`` RGB
in [0, 1] and returns float32 ``[N, 3, h * scale, w * scale]``, not clipped (the
caller clips, scales and rounds). An engine is safe to call from several
threads at once.

One module per backend, as httpx keeps ``_transports/``:

- :mod:`common.engines.ort`: ONNX Runtime, CUDA when present and allowed, else CPU.

:func:`get_engine` keeps one engine per (model, backend, threads) per process,
since building a session costs far more than running a tile.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np
import numpy.typing as npt

from common.models import Registry
from common.settings import Settings


class Engine(Protocol):
    """Something that upscales batches of tiles by a fixed integer ``scale``.

    ``provider`` is ``"cpu"``, ``"cuda"`` or another short backend name.
    """

    name: str
    scale: int
    provider: str

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Upscale ``[N, 3, h, w]`` float32 in [0, 1] to ``[N, 3, h*scale, w*scale]`` float32."""
        ...


_engines: dict[tuple[str, str, str, int], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(name: str, settings: Settings) -> Engine:
    """The process-wide engine for model ``name`` under ``settings``, built on first use.

    Raises:
        UnknownModel: no such model.
        ModelError / ConversionError: the model cannot be prepared or loaded.
    """
    from common.engines.ort import OrtEngine

    registry = Registry(settings)
    spec = registry.get(name)
    threads = settings.session_threads()
    # A single lock: two threads asking for the same new model must not both convert it.
    with _engines_lock:
        path = registry.onnx_path(name)
        key = (name, str(path), settings.provider, threads)
        engine = _engines.get(key)
        if engine is None:
            engine = OrtEngine(path, spec.scale, settings.provider, threads, name=name)
            _engines[key] = engine
        return engine


def clear_engines() -> None:
    """Drop every cached engine (tests; reloading models after a change)."""
    with _engines_lock:
        _engines.clear()
