"""Users' ONNX models as the pure core sees them: the checks before one is accepted, the
cluster's record of one, and its local copy by content hash.

The contract:

* A model is accepted (:func:`check_model`) only if it is at most the size limit, ONNX
  Runtime loads it, it has one float32 NCHW input with 3 channels and dynamic height and
  width and one output, and two small random runs give the same whole scale 1..8 on both
  axes. Anything else is refused with the reason, before anything is stored.
* A cluster model (:class:`ClusterEntry`) is named once for the whole cluster and stored
  once by the sha256 of its bytes. Where the bytes live is a :class:`ModelSource`'s business
  (:mod:`common.cluster.models` keeps them in Redis or the blob store); this module never
  does network I/O.
* Each host caches a cluster model as ``<model_cache>/cluster-<sha256>.onnx``
  (:func:`cached_copy`): fetched on first use, its hash checked before it is written, the
  file written whole under a temporary name and renamed, so a reader never sees part of
  one and a replaced model (new bytes, new hash) never reuses the old file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from common.errors import (
    BadParameter,
    InvalidModel,
    ModelError,
    ModelNameTaken,
    ModelTooLarge,
    ModelUnavailable,
)

MAX_PROBED_SCALE = 8
"""Largest scale a user's model may have."""

MODEL_CHANNELS = 3
"""Input channels every model takes (RGB)."""

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
"""What a user's model may be called: 1-64 lowercase letters, digits, ``-``, ``.``, ``_``."""

_PROBE_SIZES = ((16, 16), (24, 20))


@dataclass(frozen=True)
class ClusterEntry:
    """What the cluster records of one shared model. ``size`` is in bytes, ``added_at`` Unix
    seconds, ``added_by`` the admin token's name (never the token) or ``cli:user@host``."""

    name: str
    sha256: str
    scale: int
    channels: int
    size: int
    added_by: str
    added_at: float
    description: str = ""
    store: str = "redis"
    """Where the bytes are: ``redis``, or the blob store's kind (``file``, the ``s3://`` URL)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterEntry:
        """The entry ``data`` describes.

        Raises:
            ModelError: a field is missing or malformed.
        """
        try:
            return cls(
                name=str(data["name"]),
                sha256=str(data["sha256"]),
                scale=int(data["scale"]),
                channels=int(data["channels"]),
                size=int(data["size"]),
                added_by=str(data["added_by"]),
                added_at=float(data["added_at"]),
                description=str(data.get("description", "")),
                store=str(data.get("store", "redis")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"a cluster model entry is malformed: {exc}") from None


class ModelSource(Protocol):
    """The cluster's shared models (:class:`common.cluster.models.ClusterModels` on Redis)."""

    def entries(self) -> dict[str, ClusterEntry]:
        """Every cluster model, by name."""
        ...

    def entry(self, name: str) -> ClusterEntry | None:
        """The cluster model ``name``, or ``None``."""
        ...

    def fetch(self, entry: ClusterEntry) -> bytes | None:
        """The stored bytes of ``entry`` (not checked against its hash), or ``None`` if missing."""
        ...


def check_name(name: str, builtins: tuple[str, ...] | frozenset[str]) -> None:
    """Raise unless ``name`` may name a new user model.

    Raises:
        BadParameter: it is malformed (``detail["parameter"] == "name"``).
        ModelNameTaken: it is a built-in model's name (or alias).
    """
    if not NAME_RE.match(name):
        raise BadParameter(
            f"model name {name!r} must be 1-64 of lowercase letters, digits, '-', '.', '_'"
            " and start with a letter or digit",
            parameter="name",
            value=name,
        )
    if name in builtins:
        raise ModelNameTaken(f"{name!r} is a built-in model name", parameter="name", value=name)


def check_model(data: bytes | Path, label: str, max_bytes: int | None = None) -> int:
    """Check that ``data`` (the bytes, or a file) is a usable SR model and return its scale.

    Raises:
        ModelTooLarge: more than ``max_bytes`` bytes.
        InvalidModel: it does not load, has the wrong inputs or outputs, or its output size
            is not the same whole multiple (1..8) of its input size; the message says which.
    """
    size = len(data) if isinstance(data, bytes) else data.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ModelTooLarge(
            f"{label} is {size} bytes; models may be at most {max_bytes} bytes "
            "(SRCLUSTER_MODEL_MAX_BYTES)",
            size=size,
            limit=max_bytes,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    model = data if isinstance(data, bytes) else str(data)
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own non-exported exception types
        raise _invalid(f"{label} is not a model ONNX Runtime can load: {exc}", "load") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise _invalid(
            f"{label} must have one input and one output, has {len(inputs)} and {len(outputs)}",
            "inputs",
        )
    arg = inputs[0]
    shape = list(arg.shape)
    if arg.type != "tensor(float)":
        raise _invalid(f"{label}: input must be float32, is {arg.type}", "dtype")
    if len(shape) != 4:
        raise _invalid(f"{label}: input must be NCHW (rank 4), has shape {shape}", "layout")
    if shape[3] == MODEL_CHANNELS and not isinstance(shape[1], int):
        raise _invalid(
            f"{label}: input {shape} looks channels-last (NHWC); NCHW (1x3xHxW) is needed",
            "layout",
        )
    if isinstance(shape[1], int) and shape[1] != MODEL_CHANNELS:
        raise _invalid(
            f"{label}: input must have 3 (RGB) channels, has {shape[1]} (NCHW expected)", "layout"
        )
    if isinstance(shape[2], int) or isinstance(shape[3], int):
        raise _invalid(
            f"{label}: input height and width must be dynamic, are {shape}", "fixed_size"
        )
    return _probe_scale(session, arg.name, label)


def _probe_scale(session: ort.InferenceSession, input_name: str, label: str) -> int:
    rng = np.random.default_rng(0)
    scales: set[int] = set()
    for h, w in _PROBE_SIZES:
        batch = rng.random((1, MODEL_CHANNELS, h, w), dtype=np.float32)
        try:
            (out,) = session.run(None, {input_name: batch})
        except Exception as exc:  # ORT raises its own non-exported exception types
            raise _invalid(f"{label} fails on a 1x3x{h}x{w} input: {exc}", "probe") from None
        out_shape = tuple(np.shape(out))
        if len(out_shape) != 4 or out_shape[:2] != (1, MODEL_CHANNELS):
            raise _invalid(
                f"{label}: output for 1x3x{h}x{w} is {out_shape}, expected 1x3xH'xW'", "output"
            )
        for size, out_size in ((h, out_shape[2]), (w, out_shape[3])):
            if out_size % size:
                raise _invalid(
                    f"{label}: output size {out_size} is not a whole multiple of {size}", "scale"
                )
            scales.add(out_size // size)
    if len(scales) != 1:
        raise _invalid(f"{label}: scale differs between probes: {sorted(scales)}", "scale")
    scale = scales.pop()
    if not 1 <= scale <= MAX_PROBED_SCALE:
        raise _invalid(f"{label}: scale {scale} is outside 1..{MAX_PROBED_SCALE}", "scale")
    return scale


def _invalid(message: str, check: str) -> InvalidModel:
    return InvalidModel(message, parameter="file", check=check)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_path(cache_dir: Path, entry: ClusterEntry) -> Path:
    """Where this host keeps its copy of ``entry`` (named by content, not by name)."""
    return cache_dir / f"cluster-{entry.sha256}.onnx"


def cached_copy(entry: ClusterEntry, source: ModelSource, cache_dir: Path) -> Path:
    """This host's file of cluster model ``entry``, fetched from ``source`` on first use.

    Raises:
        ModelUnavailable: the bytes are missing from the cluster's store, or their sha256
            is not the entry's (nothing is written then).
    """
    target = cache_path(cache_dir, entry)
    if target.is_file():
        return target
    data = source.fetch(entry)
    if data is None:
        raise ModelUnavailable(
            f"the bytes of cluster model {entry.name!r} (sha256 {entry.sha256[:12]}...) are "
            "missing from the cluster's store; add the model again",
            model=entry.name,
            sha256=entry.sha256,
        )
    found = sha256_hex(data)
    if found != entry.sha256:
        raise ModelUnavailable(
            f"the stored bytes of cluster model {entry.name!r} are corrupt: sha256 "
            f"{found[:12]}... where {entry.sha256[:12]}... was recorded; add the model again",
            model=entry.name,
            sha256=entry.sha256,
            found=found,
        )
    write_atomic(target, data)
    return target


def temp_path(target: Path) -> Path:
    """A new empty file beside ``target``, readable by all (for :func:`write_atomic`)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp makes the file owner-only; workers under other users must read the cache.
    os.chmod(name, 0o644)
    return Path(name)


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so readers see the old file or the whole new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
