"""Which engine and precision serve a model on this host (``SRCLUSTER_ENGINE`` / ``SRCLUSTER_PRECISION``).

The ``auto`` rule, from measurements (``bench/engines.py``; DESIGN.md section 7):

* A GPU (provider ``cuda``, or ``auto`` with ``onnxruntime-gpu`` offering
  CUDA): ORT on CUDA, precision ``fp16`` (the fp16 variant; 75-93 dB on CPU).
* A CPU: OpenVINO when it imports, else ORT. OpenVINO fp32 measured 1.10-1.13x
  ORT fp32 on the compact model on this project's 2-core AMD EPYC (Zen 2,
  AVX2, no BF16), 1.18-1.48x on a 2-core Xeon (AVX-512), and about par on the
  RRDBNet models on both: never slower beyond noise, so no per-model rule.
* Precision on a CPU: ``bf16`` only where OpenVINO lists BF16 among the CPU's
  optimization capabilities (native: 2.2-2.7x ORT fp32 at 54-56 dB on Zen 5),
  else ``fp32``; an emulated or ignored bf16 hint measured 0.32x or 1.0x.
  The fp16 variant on ORT's CPU provider is 0.8x: only on request.
* ``int8`` is never picked, and asking for it is a :class:`ConfigError`: NNCF
  int8 measured 3.4-5.2x but 35-45 dB, under the 50 dB gate.

The rule is table lookups on :func:`~common.engines.host.detect_host` (no
benchmark at start-up). An automatic pick other than ORT fp32 is then checked
once against ORT fp32 on a small probe image (:func:`verify`); the verdict is
cached on disk beside the model, keyed by engine, precision, library version
and CPU, so a host pays for it once per model, and a pick that fails falls back
to ORT fp32.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from common.engines import quality
from common.engines.host import Host
from common.errors import ConfigError
from common.settings import Settings

if TYPE_CHECKING:
    from common.engines import Engine

log = logging.getLogger(__name__)

INT8_REFUSED = (
    "precision int8 is not offered: int8 (OpenVINO NNCF) measured 35-45 dB against fp32, "
    "under the 50 dB quality gate"
)


@dataclass(frozen=True)
class Choice:
    """An engine (``ort`` or ``openvino``), a precision and the ORT provider setting to build.

    ``automatic`` is true when ``auto`` decided the engine or the precision,
    so the pick is :func:`verify`-ed before it serves.
    """

    engine: str
    precision: str
    provider: str
    automatic: bool

    @property
    def memory_key(self) -> str:
        """The :mod:`common.memory` key of what this choice runs on (its windows' memory facts)."""
        if self.engine == "openvino":
            return "openvino-cpu"
        if self.provider == "cpu":
            return "ort-cpu"
        return "ort-cuda-fp16" if self.precision == "fp16" else "ort-cuda-fp32"

    @property
    def is_reference(self) -> bool:
        """Whether this is ORT fp32, the reference the gate compares against."""
        return self.engine == "ort" and self.precision == "fp32"


def choose(settings: Settings, host: Host) -> Choice:
    """The engine and precision ``settings`` ask for on ``host`` (see the module docstring).

    Raises:
        ConfigError: int8; OpenVINO asked for on CUDA or absent; a precision
            the chosen engine cannot run natively here.
    """
    engine, precision, provider = settings.engine, settings.precision, settings.provider
    if precision == "int8":
        raise ConfigError(INT8_REFUSED, value=precision)
    automatic = engine == "auto" or precision == "auto"
    if engine == "openvino":
        if provider == "cuda":
            raise ConfigError(
                "SRCLUSTER_ENGINE=openvino runs on the CPU; it cannot serve provider cuda",
                value=engine,
            )
        if not host.has_openvino:
            raise ConfigError("SRCLUSTER_ENGINE=openvino but OpenVINO cannot be loaded here")
    gpu = engine != "openvino" and (provider == "cuda" or (provider == "auto" and host.has_cuda))
    if gpu:
        if precision == "bf16":
            raise ConfigError("precision bf16 is offered on CPUs with native BF16, not on CUDA")
        return Choice("ort", "fp16" if precision == "auto" else precision, provider, automatic)

    if engine == "auto":
        if precision == "fp16" and not host.native_fp16:
            engine = "ort"  # the fp16 variant on ORT's CPU provider: GPU numerics, asked for
        elif precision == "bf16" and not host.native_bf16:
            raise ConfigError(_not_native("bf16", host), value=precision)
        else:
            engine = "openvino" if host.has_openvino else "ort"
    if precision == "auto":
        precision = "bf16" if engine == "openvino" and host.native_bf16 else "fp32"
    if engine == "ort" and precision == "bf16":
        raise ConfigError("ONNX Runtime runs fp32 or fp16 here; bf16 needs OpenVINO on a BF16 CPU")
    if engine == "openvino" and precision != "fp32":
        native = host.native_bf16 if precision == "bf16" else host.native_fp16
        if not native:
            raise ConfigError(_not_native(precision, host), value=precision)
    return Choice(engine, precision, "cpu", automatic)


def _not_native(precision: str, host: Host) -> str:
    listed = ", ".join(host.cpu_capabilities) or "nothing (no OpenVINO)"
    return (
        f"precision {precision} is not native on this CPU ({host.cpu_name}; OpenVINO lists "
        f"{listed}): emulated it measured ~3x slower than fp32"
    )


# -- the probe ---------------------------------------------------------------

PROBE_SIZE = 32
"""Side of the probe image: enough for every model's receptive field to see edges and texture."""


def probe_image(size: int = PROBE_SIZE) -> npt.NDArray[np.float32]:
    """A deterministic photo-like ``[1, 3, size, size]`` batch in [0, 1]: gradients, a disc, an edge, noise."""
    rng = np.random.default_rng(1234)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = 0.5 + 0.4 * np.sin(x * 3.1 + y * 1.7)
    g = (x + y) / 2
    b = 0.2 + 0.6 * (((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.1)
    img = np.stack([r, g, b])
    img[:, size // 4 : size // 4 + 2, :] = [[[0.05]], [[0.9]], [[0.4]]]
    img = img + rng.normal(0.0, 0.03, img.shape)
    batch: npt.NDArray[np.float32] = np.clip(img, 0.0, 1.0).astype(np.float32)[None]
    return batch


def verdict_key(choice: Choice, provider: str, host: Host) -> str:
    """What a cached :func:`verify` verdict is valid for: engine, precision, provider, library version, CPU."""
    version = host.openvino_version if choice.engine == "openvino" else host.ort_version
    return f"{choice.engine}-{choice.precision}-{provider}|{version}|{host.cpu_name}"


def verify(
    candidate: Engine,
    reference: Callable[[], Engine],
    model_path: Path,
    key: str,
) -> quality.GateResult:
    """Gate ``candidate`` against ``reference()`` (ORT fp32) on :func:`probe_image`, once per host.

    ``key`` names the candidate (engine, precision, library version, CPU); the
    verdict is cached in ``<model>.gates.json`` beside ``model_path``. A cache
    that cannot be read or written only costs a rerun.
    """
    cache = model_path.with_name(model_path.stem + ".gates.json")
    verdicts = _read_json(cache)
    seen = verdicts.get(key)
    if isinstance(seen, dict) and isinstance(seen.get("passed"), bool):
        return quality.GateResult(bool(seen["passed"]), float(seen.get("psnr_db", 0.0)), "cached")
    batch = probe_image()
    result = quality.gate(candidate.run(batch), reference().run(batch), batch)
    verdicts[key] = {"passed": result.passed, "psnr_db": round(result.psnr_db, 2)}
    _write_json(cache, verdicts)
    return result


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # another process may write at once: the last whole file wins, a lost verdict is re-probed
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot cache the engine gate verdict in %s: %s", path, exc)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
