"""Inference engines: a family of interchangeable backends behind one contract.

The contract (:class:`Engine`): ``run`` takes float32 NCHW ``[N, 3, h, w]`` RGB
in [0, 1] and returns float32 ``[N, 3, h * scale, w * scale]``, not clipped (the
caller clips, scales and rounds). An engine is safe to call from several
threads at once.

One module per backend or concern, as httpx keeps ``_transports/``:

- :mod:`common.engines.ort`: ONNX Runtime, CUDA (fp32 or fp16) when present and allowed, else CPU.
- :mod:`common.engines.openvino`: OpenVINO on the CPU, reading the same ONNX files.
- :mod:`common.engines.host`: what this host has (OpenVINO's CPU capabilities, ORT's providers).
- :mod:`common.engines.select`: which engine and precision ``auto`` means here, and why.
- :mod:`common.engines.variants`: the fp16 ONNX variant, cached beside the fp32 file.
- :mod:`common.engines.quality`: the quality gate (>= 50 dB against ORT fp32, no NaN/black).
- :mod:`common.engines.guard`: reruns a NaN/Inf/black output tile in ORT fp32.

:func:`get_engine` keeps one engine per (model, engine, precision, provider,
threads) per process, since building a session costs far more than running a
tile, and wraps it in the guard.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from common.engines.guard import GuardedEngine
from common.engines.host import detect_host
from common.engines.select import Choice, choose, verdict_key, verify
from common.models import Registry
from common.settings import Settings

log = logging.getLogger(__name__)


class Engine(Protocol):
    """Something that upscales batches of tiles by a fixed integer ``scale``.

    ``name`` is the model's; ``provider`` what runs it (``"cpu"`` and
    ``"cuda"`` for ORT, ``"openvino-cpu"``); ``precision`` ``"fp32"``,
    ``"fp16"`` or ``"bf16"``.
    """

    name: str
    scale: int
    provider: str
    precision: str

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Upscale ``[N, 3, h, w]`` float32 in [0, 1] to ``[N, 3, h*scale, w*scale]`` float32."""
        ...

    def describe(self) -> str:
        """One line saying what runs, e.g. ``openvino fp32 on CPU (AMD EPYC), 2 threads``."""
        ...


def build_engine(
    model_path: Path, scale: int, choice: Choice, threads: int, *, name: str | None = None
) -> Engine:
    """A bare (unguarded, uncached) engine for ``choice``; :func:`get_engine` is what serves.

    Raises:
        ConfigError: the precision is not available on that engine here.
        ModelError: the model cannot be loaded or converted.
    """
    if choice.engine == "openvino":
        from common.engines.openvino import OpenVinoEngine

        return OpenVinoEngine(model_path, scale, threads, choice.precision, name=name)
    from common.engines.ort import OrtEngine

    return OrtEngine(
        model_path, scale, choice.provider, threads, name=name, precision=choice.precision
    )


_engines: dict[tuple[str, str, str, str, str, int], GuardedEngine] = {}
_engines_lock = threading.Lock()


def get_engine(name: str, settings: Settings, registry: Registry | None = None) -> GuardedEngine:
    """The process-wide engine for model ``name`` under ``settings``, built on first use;
    ``registry`` finds the model (default: this host's, ``Registry(settings)``).

    Engine and precision follow :func:`common.engines.select.choose`; an
    automatic pick that fails the quality probe (:func:`select.verify`) is
    replaced by ORT fp32 with a warning. The result is guarded
    (:class:`~common.engines.guard.GuardedEngine`).

    Raises:
        UnknownModel: no such model.
        ConfigError: the engine or precision asked for is not offered here (int8 never is).
        ModelError / ConversionError: the model cannot be prepared or loaded
            (ModelUnavailable: a cluster model's bytes are missing or corrupt).
    """
    registry = registry or Registry(settings)
    spec = registry.get(name)
    threads = settings.session_threads()
    # A single lock: two threads asking for the same new model must not both convert it.
    with _engines_lock:
        path = registry.onnx_path(name)
        key = (name, str(path), settings.engine, settings.precision, settings.provider, threads)
        engine = _engines.get(key)
        if engine is None:
            engine = _build_guarded(path, spec.scale, name, settings, threads)
            _engines[key] = engine
        return engine


def _build_guarded(
    path: Path, scale: int, name: str, settings: Settings, threads: int
) -> GuardedEngine:
    from common.engines.ort import OrtEngine

    host = detect_host()
    choice = choose(settings, host)
    primary = build_engine(path, scale, choice, threads, name=name)
    if choice.automatic and primary.provider == "cpu" and choice.provider != "cpu":
        # onnxruntime-gpu offered CUDA but no GPU answered: take the CPU's pick instead
        choice = choose(dataclasses.replace(settings, provider="cpu"), host)
        primary = build_engine(path, scale, choice, threads, name=name)

    reference: OrtEngine | None = None

    def cpu_fp32() -> OrtEngine:
        nonlocal reference
        if reference is None:
            reference = OrtEngine(path, scale, "cpu", threads, name=name)
        return reference

    if choice.automatic and not choice.is_reference:
        result = verify(primary, cpu_fp32, path, verdict_key(choice, primary.provider, host))
        if not result.passed:
            log.warning(
                "%s fails the quality gate for %s (%s); serving with ORT fp32 instead",
                primary.describe(),
                name,
                result,
            )
            if choice.provider == "cpu":
                primary = cpu_fp32()
            else:
                choice = Choice("ort", "fp32", choice.provider, automatic=True)
                primary = build_engine(path, scale, choice, threads, name=name)
    if primary.provider == "cpu" and primary.precision == "fp32":
        return GuardedEngine(primary, None)  # it is the reference: nothing to fall back to
    return GuardedEngine(primary, cpu_fp32)


def clear_engines() -> None:
    """Drop every cached engine (tests; reloading models after a change)."""
    with _engines_lock:
        _engines.clear()
