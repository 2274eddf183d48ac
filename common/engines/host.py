"""What this host really has: the facts engine selection is made from.

Read once per process (:func:`detect_host`), from the libraries themselves
rather than from CPU flags: OpenVINO's ``OPTIMIZATION_CAPABILITIES`` for the
CPU lists ``BF16`` / ``FP16`` only where its kernels run them natively (AVX512-
BF16 or AMX; ARM fp16), and ONNX Runtime lists the execution providers this
build can offer. Both queries take milliseconds, no benchmark.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

import onnxruntime as ort


@dataclass(frozen=True)
class Host:
    """One host's inference capabilities.

    ``openvino_version`` is empty when the ``openvino`` package cannot be
    imported or has no CPU device; ``cpu_capabilities`` are OpenVINO's names
    (``FP32``, ``BF16``, ``FP16``, ``INT8``, ...).
    """

    cpu_name: str
    cpu_capabilities: tuple[str, ...]
    openvino_version: str
    ort_providers: tuple[str, ...]
    ort_version: str = ort.__version__

    @property
    def has_openvino(self) -> bool:
        return bool(self.openvino_version)

    @property
    def native_bf16(self) -> bool:
        """Whether OpenVINO runs bf16 natively on this CPU (else a bf16 hint is emulated or ignored)."""
        return "BF16" in self.cpu_capabilities

    @property
    def native_fp16(self) -> bool:
        """Whether OpenVINO runs fp16 natively on this CPU."""
        return "FP16" in self.cpu_capabilities

    @property
    def has_cuda(self) -> bool:
        """Whether this ONNX Runtime build offers CUDA (whether a GPU answers is known only on load)."""
        return "CUDAExecutionProvider" in self.ort_providers

    @property
    def has_tensorrt(self) -> bool:
        return "TensorrtExecutionProvider" in self.ort_providers


@functools.cache
def detect_host() -> Host:
    """This process's :class:`Host`, queried once and then cached."""
    cpu_name = platform.processor() or platform.machine()
    capabilities: tuple[str, ...] = ()
    version = ""
    try:
        import openvino as ov

        core = ov.Core()
        if "CPU" in core.available_devices:
            cpu_name = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
            capabilities = tuple(
                str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            )
            version = str(ov.get_version())
    except Exception:  # no package, a broken install or no plugin: serve with ORT
        capabilities, version = (), ""
    return Host(
        cpu_name=cpu_name,
        cpu_capabilities=capabilities,
        openvino_version=version,
        ort_providers=tuple(ort.get_available_providers()),
    )
