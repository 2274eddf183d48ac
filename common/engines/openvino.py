"""OpenVINO on CPU: :class:`OpenVinoEngine` runs our ONNX files directly, no conversion step.

Why it is here: OpenVINO fuses the PReLU layers ONNX Runtime leaves unfused
(22 % of ORT's time on the compact model), so it runs closer to the CPU's fp32
peak. Measured against ORT fp32 on the same windows and threads: 1.10-1.13x on
this project's 2-core AMD EPYC (Zen 2) and 1.18-1.26x on a 2-core Xeon for the
compact model (``bench/engines.py``); about par for the RRDBNet models.

How it runs:

* One compiled model per window shape (and mode), compiled on first use and
  kept in a small LRU: a job's windows share one shape, so compiling (~0.1 s
  compact, ~1-2 s x4plus) is paid once per shape, and static shapes run
  faster than OpenVINO's dynamic ones.
* ``INFERENCE_NUM_THREADS`` is the threads setting, and ``ENABLE_CPU_PINNING``
  is off: with pinning, several worker processes pin their threads to the
  same cores (measured 1.7-1.9x slower).
* A batch of one window compiles with the ``LATENCY`` hint (all threads on one
  request). A batch of several runs one request per window under the
  ``THROUGHPUT`` hint (several streams): 1.42-1.48x ORT on the Xeon for the
  2-window job, against 1.2x one at a time; on Zen 2 both measured 1.1x. One
  window under ``THROUGHPUT`` measured 0.6x, hence the two modes.
* ``INFERENCE_PRECISION_HINT`` is always set, to ``f32`` for fp32 too: on CPUs
  with native bf16 OpenVINO would otherwise pick bf16 by itself. bf16 and fp16
  are accepted only where the CPU lists them natively; emulated bf16 measured
  0.32x.

Thread safety: compiled models are shared under a lock; each call takes its own
infer requests from a per-shape pool, so calls from several threads run at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import openvino as ov

from common.engines.host import detect_host
from common.errors import BadParameter, ConfigError, ModelError

PROVIDER = "openvino-cpu"

MAX_COMPILED = 4
"""Compiled shapes kept per engine: two window shapes in both modes. Each holds
its own activation buffers (hundreds of MB for x4plus at 256 px)."""

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_NATIVE = {"bf16": "BF16", "fp16": "FP16"}

_core: ov.Core | None = None
_core_lock = threading.Lock()


def shared_core() -> ov.Core:
    """The process's one OpenVINO ``Core`` (it owns the plugins; one is enough)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def precision_hint(precision: str) -> str:
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` for ``precision``, if this CPU runs it natively.

    Raises:
        ConfigError: ``precision`` is int8 (not offered: NNCF int8 measured
            35-45 dB, under the quality gate), unknown, or not native here.
    """
    if precision == "int8":
        raise ConfigError(
            "precision int8 is not offered: OpenVINO int8 measured 35-45 dB, under the 50 dB gate",
            value=precision,
        )
    hint = _HINTS.get(precision)
    if hint is None:
        raise ConfigError(f"OpenVINO has no precision {precision!r}", value=precision)
    needed = _NATIVE.get(precision)
    host = detect_host()
    if needed is not None and needed not in host.cpu_capabilities:
        raise ConfigError(
            f"precision {precision} is not native on this CPU ({host.cpu_name}: OpenVINO lists "
            f"{', '.join(host.cpu_capabilities) or 'nothing'}); emulated it runs ~3x slower",
            value=precision,
        )
    return hint


class _Compiled:
    """One compiled shape and its pool of idle infer requests."""

    def __init__(self, compiled: ov.CompiledModel) -> None:
        self.compiled = compiled
        self._idle: list[ov.InferRequest] = []
        self._lock = threading.Lock()

    def take(self, count: int) -> list[ov.InferRequest]:
        with self._lock:
            requests = [self._idle.pop() for _ in range(min(count, len(self._idle)))]
        while len(requests) < count:
            requests.append(self.compiled.create_infer_request())
        return requests

    def give(self, requests: list[ov.InferRequest]) -> None:
        with self._lock:
            self._idle.extend(requests)


class OpenVinoEngine:
    """An OpenVINO CPU engine around one ONNX model file (see :class:`~common.engines.Engine`)."""

    def __init__(
        self,
        model_path: Path,
        scale: int,
        threads: int = 0,
        precision: str = "fp32",
        *,
        name: str | None = None,
    ) -> None:
        """Read ``model_path``; compiling waits for the first window shape.

        ``threads`` > 0 sets ``INFERENCE_NUM_THREADS`` (0: OpenVINO's default, all cores).

        Raises:
            ConfigError: ``precision`` is not native on this CPU, or int8.
            ModelError: OpenVINO cannot read the file.
        """
        self.name = name or Path(model_path).stem
        self.scale = scale
        self.provider = PROVIDER
        self.precision = precision
        self.threads = threads
        self._hint = precision_hint(precision)
        try:
            self._model = shared_core().read_model(str(model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise ModelError(
                f"OpenVINO cannot read model {self.name!r} ({model_path}): {exc}"
            ) from None
        self._compiled: OrderedDict[tuple[int, int, str], _Compiled] = OrderedDict()
        self._lock = threading.Lock()

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``openvino fp32 on CPU (AMD EPYC), 2 threads``."""
        threads = f"{self.threads} threads" if self.threads > 0 else "all cores"
        return f"openvino {self.precision} on CPU ({detect_host().cpu_name}), {threads}"

    def _mode(self, count: int) -> str:
        # one thread means one stream either way: don't compile the shape twice
        return "THROUGHPUT" if count > 1 and self.threads != 1 else "LATENCY"

    def compiled_for(self, height: int, width: int, mode: str) -> ov.CompiledModel:
        """The model compiled for ``[1, 3, height, width]`` under hint ``mode`` (compiled once)."""
        return self._entry(height, width, mode).compiled

    def _entry(self, height: int, width: int, mode: str) -> _Compiled:
        key = (height, width, mode)
        # Compiling under the lock: two threads meeting a new shape compile it once.
        with self._lock:
            entry = self._compiled.get(key)
            if entry is not None:
                self._compiled.move_to_end(key)
                return entry
            model = self._model.clone()
            model.reshape([1, 3, height, width])
            config: dict[str, Any] = {
                "PERFORMANCE_HINT": mode,
                "ENABLE_CPU_PINNING": False,
                "INFERENCE_PRECISION_HINT": self._hint,
            }
            if self.threads > 0:
                config["INFERENCE_NUM_THREADS"] = self.threads
            try:
                compiled = shared_core().compile_model(model, "CPU", config)
            except Exception as exc:
                raise ModelError(
                    f"OpenVINO cannot compile model {self.name!r} for {height}x{width}: {exc}"
                ) from None
            entry = _Compiled(compiled)
            self._compiled[key] = entry
            while len(self._compiled) > MAX_COMPILED:
                self._compiled.popitem(last=False)
            return entry

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """See :meth:`Engine.run`; a batch of N runs as N requests at once.

        Raises:
            BadParameter: ``batch`` is not ``[N, 3, h, w]``.
            ModelError: OpenVINO fails on this shape.
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise BadParameter(
                f"engine input must be [N, 3, h, w], got {list(batch.shape)}",
                parameter="batch",
            )
        count, _, height, width = batch.shape
        s = self.scale
        out = np.empty((count, 3, height * s, width * s), dtype=np.float32)
        if count == 0:
            return out
        x = np.ascontiguousarray(batch, dtype=np.float32)
        entry = self._entry(height, width, self._mode(count))
        requests = entry.take(count)
        try:
            for i, request in enumerate(requests):
                # share_inputs: the request reads x in place; x outlives the wait below
                request.start_async({0: x[i : i + 1]}, share_inputs=True)
            for i, request in enumerate(requests):
                request.wait()
                out[i] = request.get_output_tensor(0).data[0]
        except Exception as exc:
            # a request still running must not go back to the pool
            for request in requests:
                with contextlib.suppress(Exception):
                    request.wait()
            raise ModelError(f"OpenVINO failed on model {self.name!r}: {exc}") from None
        finally:
            entry.give(requests)
        return out

    def __repr__(self) -> str:
        return (
            f"OpenVinoEngine(name={self.name!r}, scale={self.scale}, precision={self.precision!r}, "
            f"threads={self.threads})"
        )
