"""ONNX Runtime: :class:`OrtEngine` runs an ONNX file on CUDA or the CPU.

CUDA when the provider setting allows it and ``onnxruntime-gpu`` offers it,
else CPU. ORT's default session options (all graph optimizations, arena on,
sequential execution) measured best on CPU; only intra-op threads are set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from common.errors import BadParameter, ModelError

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


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
