"""ONNX Runtime: :class:`OrtEngine` runs an ONNX file on CUDA (optionally TensorRT) or the CPU.

CUDA when the provider setting allows it and ``onnxruntime-gpu`` offers it,
else CPU. ORT's default session options (all graph optimizations, arena on,
sequential execution) measured best on CPU; only intra-op threads are set.

Precision ``fp32`` runs the model file as converted; ``fp16`` runs its fp16
variant (:func:`common.engines.variants.fp16_path`, float32 input and output),
which is the GPU's fast path and also runs, slowly (0.8x), on the CPU provider,
so its numerics are tested without a GPU.

GPU-only choices are made by plain functions the CPU tests call directly
(:func:`choose_providers`, :func:`provider_config`), and the I/O-binding path
the CUDA engine uses runs on the CPU provider too (``io_binding=True``):

* ``cudnn_conv_algo_search``: ``EXHAUSTIVE`` (ORT's default) by default, since
  a job's windows share one shape and the search is paid once per shape;
  ``HEURISTIC`` is the choice when shapes vary a lot. To be settled by
  ``bench/gpu.py`` on a GPU (not yet measured).
* I/O binding on CUDA: the output is allocated on the device and copied back
  once, instead of ORT's synchronous per-run copy path.
* TensorRT only when asked (``tensorrt=True``) and present: it builds an engine
  per new shape (seconds to minutes), cached beside the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from common.engines.variants import fp16_path
from common.errors import BadParameter, ConfigError, ModelError

_CUDA = "CUDAExecutionProvider"
_TRT = "TensorrtExecutionProvider"
_CPU = "CPUExecutionProvider"

PRECISIONS = ("fp32", "fp16")
"""What ORT offers here: fp32, and fp16 through the fp16 variant."""

DEFAULT_CUDNN_CONV_ALGO_SEARCH = "EXHAUSTIVE"
"""cuDNN convolution algorithm search on CUDA (EXHAUSTIVE, HEURISTIC or DEFAULT)."""

_SHORT = {_CUDA: "cuda", _TRT: "tensorrt", _CPU: "cpu"}


def choose_providers(
    provider_pref: str, available: list[str] | None = None, *, tensorrt: bool = False
) -> list[str]:
    """ONNX Runtime providers, in order, for ``auto``, ``cpu`` or ``cuda``.

    ``available`` defaults to what this ONNX Runtime offers. TensorRT goes
    first only when ``tensorrt`` and it is available alongside CUDA.

    Raises:
        ModelError: ``cuda`` is asked for but this ONNX Runtime has no CUDA provider.
        BadParameter: ``provider_pref`` is none of the three.
    """
    offered = ort.get_available_providers() if available is None else available
    if provider_pref == "cpu":
        return [_CPU]
    if provider_pref not in ("auto", "cuda"):
        raise BadParameter(
            f"provider must be auto, cpu or cuda, not {provider_pref!r}",
            parameter="provider",
            value=provider_pref,
        )
    if _CUDA in offered:
        return ([_TRT] if tensorrt and _TRT in offered else []) + [_CUDA, _CPU]
    if provider_pref == "cuda":
        raise ModelError(
            "provider 'cuda' needs onnxruntime-gpu with a working CUDA install "
            f"(this ONNX Runtime offers {', '.join(offered)})"
        )
    return [_CPU]


def provider_config(
    providers: list[str],
    *,
    precision: str = "fp32",
    cache_dir: Path | None = None,
    cudnn_conv_algo_search: str = DEFAULT_CUDNN_CONV_ALGO_SEARCH,
) -> list[str | tuple[str, dict[str, Any]]]:
    """``providers`` with the options each needs, as ``InferenceSession(providers=...)`` takes them."""
    config: list[str | tuple[str, dict[str, Any]]] = []
    for name in providers:
        if name == _CUDA:
            config.append((name, {"cudnn_conv_algo_search": cudnn_conv_algo_search}))
        elif name == _TRT:
            options: dict[str, Any] = {"trt_fp16_enable": precision == "fp16"}
            if cache_dir is not None:
                options |= {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir),
                }
            config.append((name, options))
        else:
            config.append(name)
    return config


class OrtEngine:
    """An ONNX Runtime session around one model file (see :class:`~common.engines.Engine`)."""

    def __init__(
        self,
        model_path: Path,
        scale: int,
        provider_pref: str = "auto",
        threads: int = 0,
        *,
        name: str | None = None,
        precision: str = "fp32",
        tensorrt: bool = False,
        io_binding: bool | None = None,
        cudnn_conv_algo_search: str = DEFAULT_CUDNN_CONV_ALGO_SEARCH,
    ) -> None:
        """Load ``model_path`` (the fp32 file; ``precision="fp16"`` loads its fp16 variant).

        ``threads`` > 0 sets intra-op threads (0: ORT's default). ``io_binding``
        defaults to on for CUDA, off on CPU (where it gains nothing).

        Raises:
            ConfigError: ``precision`` is not fp32 or fp16.
            ModelError: the file cannot be loaded or converted, or CUDA is asked for and absent.
        """
        if precision not in PRECISIONS:
            raise ConfigError(
                f"ONNX Runtime runs precision fp32 or fp16 here, not {precision!r}"
                + (
                    " (int8 measured 35-45 dB, under the 50 dB gate)" if precision == "int8" else ""
                ),
                value=precision,
            )
        self.name = name or Path(model_path).stem
        self.scale = scale
        self.precision = precision
        self.threads = threads
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        providers = choose_providers(provider_pref, tensorrt=tensorrt)
        # TensorRT makes its own fp16 engine from the fp32 graph (trt_fp16_enable).
        path = (
            fp16_path(model_path) if precision == "fp16" and _TRT not in providers else model_path
        )
        config = provider_config(
            providers,
            precision=precision,
            cache_dir=Path(model_path).parent / "tensorrt",
            cudnn_conv_algo_search=cudnn_conv_algo_search,
        )
        try:
            self._session = ort.InferenceSession(str(path), options, providers=config)
        except Exception as exc:  # ORT raises its own non-exported exception types
            raise ModelError(f"cannot load model {self.name!r} from {path}: {exc}") from None
        # ORT falls back to CPU when CUDA fails to initialise; report what really runs.
        active = self._session.get_providers()
        self.provider = _SHORT.get(active[0], active[0]) if active else "cpu"
        if provider_pref == "cuda" and self.provider == "cpu":
            raise ModelError(f"CUDA was asked for but could not start for model {self.name!r}")
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        self._device = "cpu" if self.provider == "cpu" else "cuda"
        self.io_binding = self._device == "cuda" if io_binding is None else io_binding

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``ort fp32 on cpu, 2 threads``."""
        threads = f", {self.threads} threads" if self.provider == "cpu" and self.threads > 0 else ""
        return f"ort {self.precision} on {self.provider}{threads}"

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
        if self.io_binding:
            return self._run_bound(x)
        (out,) = self._session.run(None, {self._input: x})
        return np.asarray(out, dtype=np.float32)

    def _run_bound(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        # one binding per call: bindings are not shared, so threads may run at once
        binding = self._session.io_binding()
        binding.bind_cpu_input(self._input, x)
        binding.bind_output(self._output, self._device)
        self._session.run_with_iobinding(binding)
        (out,) = binding.copy_outputs_to_cpu()
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return (
            f"OrtEngine(name={self.name!r}, scale={self.scale}, provider={self.provider!r}, "
            f"precision={self.precision!r})"
        )
