"""Inference engines: run a super-resolution model on a batch of tiles.

The contract (:class:`Engine`): ``run`` takes float32 NCHW ``[N, 3, h, w]`` RGB
in [0, 1] and returns float32 ``[N, 3, h * scale, w * scale]``, not clipped (the
caller clips, scales and rounds). An engine is safe to call from several
threads at once.

:class:`OrtEngine` runs an ONNX file with ONNX Runtime: CUDA when the provider
setting allows it and ``onnxruntime-gpu`` offers it, else CPU.
:func:`get_engine` keeps one engine per (model, provider, threads) per process,
since building a session costs far more than running a tile.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from common.errors import BadParameter, ModelError
from common.models import Registry
from common.settings import Settings

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


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


def choose_providers(provider_pref: str) -> list[str]:
    """ONNX Runtime providers, in order, for ``auto``, ``cpu`` or ``cuda``.

    Raises:
        ModelError: ``cuda`` is asked for but this ONNX Runtime has no CUDA provider.
        BadParameter: ``provider_pref`` is none of the three.
    """
    if provider_pref == "cpu":
        return [_CPU]
    if provider_pref not in ("auto", "cuda"):
        raise BadParameter(
            f"provider must be auto, cpu or cuda, not {provider_pref!r}",
            parameter="provider",
            value=provider_pref,
        )
    if _CUDA in ort.get_available_providers():
        return [_CUDA, _CPU]
    if provider_pref == "cuda":
        raise ModelError(
            "provider 'cuda' needs onnxruntime-gpu with a working CUDA install "
            f"(this ONNX Runtime offers {', '.join(ort.get_available_providers())})"
        )
    return [_CPU]


class OrtEngine:
    """An ONNX Runtime session around one model file (see :class:`Engine`)."""

    def __init__(
        self,
        model_path: Path,
        scale: int,
        provider_pref: str = "auto",
        threads: int = 0,
        *,
        name: str | None = None,
    ) -> None:
        """Load ``model_path``; ``threads`` > 0 sets intra-op threads (0: ORT's default).

        Raises:
            ModelError: the file cannot be loaded, or CUDA is asked for and absent.
        """
        self.name = name or Path(model_path).stem
        self.scale = scale
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        providers = choose_providers(provider_pref)
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own non-exported exception types
            raise ModelError(f"cannot load model {self.name!r} from {model_path}: {exc}") from None
        # ORT falls back to CPU when CUDA fails to initialise; report what really runs.
        active = self._session.get_providers()
        self.provider = "cuda" if active and active[0] == _CUDA else "cpu"
        if provider_pref == "cuda" and self.provider != "cuda":
            raise ModelError(f"CUDA was asked for but could not start for model {self.name!r}")
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """See :meth:`Engine.run`.

        Raises:
            BadParameter: ``batch`` is not ``[N, 3, h, w]``.
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise BadParameter(
                f"engine input must be [N, 3, h, w], got {list(batch.shape)}",
                parameter="batch",
            )
        x = np.ascontiguousarray(batch, dtype=np.float32)
        (out,) = self._session.run(None, {self._input: x})
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"OrtEngine(name={self.name!r}, scale={self.scale}, provider={self.provider!r})"


_engines: dict[tuple[str, str, str, int], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(name: str, settings: Settings) -> Engine:
    """The process-wide engine for model ``name`` under ``settings``, built on first use.

    Raises:
        UnknownModel: no such model.
        ModelError / ConversionError: the model cannot be prepared or loaded.
    """
    registry = Registry(settings)
    spec = registry.get(name)
    # A single lock: two threads asking for the same new model must not both convert it.
    with _engines_lock:
        path = registry.onnx_path(name)
        key = (name, str(path), settings.provider, settings.inference_threads)
        engine = _engines.get(key)
        if engine is None:
            engine = OrtEngine(
                path, spec.scale, settings.provider, settings.inference_threads, name=name
            )
            _engines[key] = engine
        return engine


def clear_engines() -> None:
    """Drop every cached engine (tests; reloading models after a change)."""
    with _engines_lock:
        _engines.clear()
