"""srcluster's settings: one frozen dataclass, read from ``SRCLUSTER_*`` variables.

Each field's environment variable is ``SRCLUSTER_`` + the field name in upper
case (``max_pixels`` -> ``SRCLUSTER_MAX_PIXELS``), parsed by the field's type.
A malformed value fails at start-up with a :class:`~common.errors.ConfigError`
naming the variable.

Inference threads follow one rule, :meth:`Settings.session_threads`: a host's
cores are shared out among its inference processes, one thread per core in
total (more threads than cores measured 12-26 % slower), unless ``threads``
fixes the count per session. The local pipeline is one process; a worker of N
pool processes resolves the rule once, before it forks (``worker.runtime``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from common.errors import ConfigError

ENV_PREFIX = "SRCLUSTER_"

ENGINES = ("auto", "ort", "openvino")
API_COMPATS = ("", "krau")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def available_cores() -> int:
    """CPU cores this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "srcluster"


DEFAULT_MAX_BYTES = 50 * 1024 * 1024
"""Largest upload or input file accepted, in bytes."""

DEFAULT_MAX_PIXELS = 4096 * 4096
"""Largest input image accepted, in pixels (guards against decompression bombs)."""

DEFAULT_MAX_OUTPUT_PIXELS = 16384 * 16384
"""Largest output image produced, in pixels (the canvas is held in memory)."""

DEFAULT_MAX_RESULT_BYTES = 511 * 1024 * 1024
"""Largest result a job may be estimated to encode to, in bytes: under Redis's 512 MiB limit on
one value (``proto-max-bulk-len``), where the result lives without a blob store."""

DEFAULT_MAX_PARTS = 4096
"""Most tiles (of every plane) one job may be cut into: each is stored, queued and run on
its own, so tiny tiles on a small upload would cost far more than the image."""

DEFAULT_JPEG_QUALITY = 95
"""Quality of JPEG output (1-100)."""

DEFAULT_WEBP_QUALITY = 95
"""Quality of lossy WebP output (1-100); 101 asks for lossless."""

DEFAULT_TIMEOUT = 600
"""Seconds a job may run before it ends ``failed`` (``timeout``), unless the request asks for less."""

DEFAULT_MAX_TIMEOUT = 3600
"""The longest ``timeout`` a request may ask for."""

DEFAULT_RESULT_TTL = 24 * 3600
"""Seconds a job's record, tiles and result are kept in Redis."""

DEFAULT_TILE_TIME_LIMIT = 600
"""Hard limit in seconds for one tile's task (the soft limit is 90 % of it)."""

DEFAULT_VISIBILITY_TIMEOUT = 2 * DEFAULT_TILE_TIME_LIMIT
"""Seconds before an unacknowledged task is redelivered; above the longest tile."""

DEFAULT_STOP_GRACE = 120.0
"""Seconds a stopping worker of ``srcluster up`` may take to finish its tiles (a group of
``realesrgan-x4plus`` tiles on a few CPU cores takes a minute or two)."""

DEFAULT_MAX_DELIVERIES = 3
"""Deliveries of one tile before its job fails (a tile that kills its worker every time)."""

DEFAULT_HEARTBEAT_TTL = 15
"""Seconds a worker's heartbeat lasts (it repeats it every third of that): a host that
stops for longer is dead, and a live worker re-queues the tiles it was running."""

DEFAULT_STALL_AFTER = 60
"""Seconds without progress (no tile started or landed) after which a job whose missing
tiles no live worker holds and no queue carries has them re-queued (at least this; more
for a job whose tiles are slow: see ``common.cluster.recovery``)."""

DEFAULT_TOKEN_MAX_JOBS = 1000
"""Jobs one token may have unfinished at once; more are refused (429) until some end."""

DEFAULT_TOKEN_PIXELS_PER_HOUR = 10_000_000_000
"""Input pixels one token may submit in any hour (about 600 images of the largest size);
more are refused (429) until the hour's oldest ones age out. 0: no limit."""

DEFAULT_WEBHOOK_ATTEMPTS = 7
"""Attempts to deliver a job's callback before giving up (the first and six retries)."""

DEFAULT_WEBHOOK_RETRY_DELAY = 5.0
"""Seconds before a failed callback's first retry; each later one waits 4x longer
(5 s, 20 s, 80 s, 5 min, 21 min, 85 min: about 1.9 h in all by default)."""

DEFAULT_WAIT_SLOTS = 4
"""Requests per API process that may hold for ``Prefer: wait`` at once (the rest are
answered at once): below gunicorn's threads per process, so waits never take them all."""

DEFAULT_MODEL_MAX_BYTES = 256 * 1024 * 1024
"""Largest ONNX model the cluster registry accepts, in bytes (the largest Real-ESRGAN
models are about 67 MB as fp32 ONNX; a model is stored in Redis in 32 MiB chunks, so Redis'
512 MiB value limit is not the bound)."""

WEBHOOK_SECRET_PREFIX = "whsec_"
"""How Standard Webhooks secrets begin; the rest is the key, base64-encoded."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults a single machine needs."""

    data_dir: Path = field(default_factory=_default_data_dir)
    """Folder for converted models, the registry of user models and local state."""

    models_dir: Path | None = None
    """Folder of cached ONNX models; defaults to ``data_dir / "models"``."""

    provider: str = "auto"
    """Inference provider: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""

    engine: str = "auto"
    """Inference engine: ``auto`` (the fastest this host really has), ``ort`` or ``openvino``."""

    precision: str = "auto"
    """Inference precision: ``auto`` (fastest within the quality gate), ``fp32``, ``bf16``, ``fp16`` or ``int8`` (never automatic)."""

    threads: int = 0
    """Inference threads per session; 0: this host's cores shared out among its processes."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    """Largest estimated encoded result (:func:`common.estimate.result_bytes`); raise it with a blob store."""
    max_parts: int = DEFAULT_MAX_PARTS
    """Most tiles one job may have (every plane counted)."""
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    webp_quality: int = DEFAULT_WEBP_QUALITY

    redis_url: str = ""
    """Broker, result backend and job store; empty: ``srcluster up`` and the tests start an embedded Redis."""

    blob_url: str = ""
    """Where input strips, output tiles and results live: empty (in Redis), ``file:///path`` (a folder every process shares) or ``s3://bucket/prefix``."""

    s3_endpoint_url: str = ""
    """The S3 API's address for ``s3://`` blobs (MinIO: ``http://minio:9000``); empty: AWS. Credentials: the standard ``AWS_*`` variables."""

    tokens: str = ""
    """API tokens as ``name:token`` pairs separated by commas (a bare token is named ``default``)."""

    admin_tokens: str = ""
    """Tokens of the admin routes (adding and deleting cluster models), ``name:token`` pairs
    as ``tokens``; empty: no admin routes (403)."""

    model_max_bytes: int = DEFAULT_MODEL_MAX_BYTES
    """Largest ONNX model the cluster registry accepts (413 beyond)."""

    timeout: int = DEFAULT_TIMEOUT
    max_timeout: int = DEFAULT_MAX_TIMEOUT
    result_ttl: int = DEFAULT_RESULT_TTL
    tile_time_limit: int = DEFAULT_TILE_TIME_LIMIT
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    max_deliveries: int = DEFAULT_MAX_DELIVERIES

    estimate_check: bool = True
    """Refuse (422 ``job_too_long``) a job whose estimated inference time exceeds its timeout
    (see ``common.estimate``); off: accept it and let the timeout end it."""

    cors_origins: str = ""
    """Web origins (``https://host[:port]``, comma-separated; ``*`` for any) whose pages may
    call the API from a browser; empty: none (no CORS headers, preflights refused)."""

    api_compat: str = ""
    """``krau``: answer as krau/super-resolution-api does (its default model, 200 on submit,
    ``path``, PNG, its ``resize_to`` and status codes, CORS for any origin; see ``api.compat``);
    empty: srcluster's own API."""

    parts_per_group: int = 0
    """Parts (tiles of a plane) one cluster task carries; 0: sized per job (see ``common.groups``)."""

    janitor_interval: int = 10
    """Seconds between a worker's checks for overdue, stalled or unstitched jobs."""

    heartbeat_ttl: int = DEFAULT_HEARTBEAT_TTL
    stall_after: int = DEFAULT_STALL_AFTER
    token_max_jobs: int = DEFAULT_TOKEN_MAX_JOBS
    token_pixels_per_hour: int = DEFAULT_TOKEN_PIXELS_PER_HOUR

    fair_share: bool = True
    """Send a token's tiles at a priority that falls with its backlog, so tokens interleave;
    off: one FIFO queue (a large job delays every later one)."""

    tile_queue: str = "tiles"
    """Celery queue of tile tasks (GPU hosts may consume only this one)."""

    stitch_queue: str = "stitch"
    """Celery queue of stitch tasks."""

    webhook_secret: str = ""
    """Key signing callbacks (Standard Webhooks: ``whsec_`` + base64 of 16+ random bytes);
    empty: ``callback_url`` is refused. Workers sign, the API checks it is set."""

    webhook_attempts: int = DEFAULT_WEBHOOK_ATTEMPTS
    webhook_retry_delay: float = DEFAULT_WEBHOOK_RETRY_DELAY

    webhook_allow_private: bool = False
    """Tests only: let ``callback_url`` name loopback and private addresses. Never in production."""

    wait_slots: int = DEFAULT_WAIT_SLOTS

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    flower_user: str = "admin"
    flower_password: str = ""
    """Basic-auth password for Flower; ``srcluster up`` generates one when empty."""

    stop_grace: float = DEFAULT_STOP_GRACE
    """Seconds ``srcluster up``'s worker has, once asked to stop, to finish its running tiles;
    then it hands them back to the queue (a cold shutdown) and stops."""

    @property
    def model_cache(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    def session_threads(self, processes: int = 1) -> int:
        """Threads for each engine session when ``processes`` inference processes share this host.

        ``threads`` when set; else the cores this process may use divided among
        the processes (at least one each).
        """
        if self.threads > 0:
            return self.threads
        return max(1, available_cores() // max(1, processes))

    def token_names(self) -> dict[str, str]:
        """Map each configured token to its name.

        Raises:
            ConfigError: a pair is malformed or a token is too short to be a secret.
        """
        return _token_table(self.tokens, "SRCLUSTER_TOKENS")

    def admin_token_names(self) -> dict[str, str]:
        """Map each admin token (``admin_tokens``) to its name.

        Raises:
            ConfigError: a pair is malformed or a token is too short to be a secret.
        """
        return _token_table(self.admin_tokens, "SRCLUSTER_ADMIN_TOKENS")

    def cors_origin_list(self) -> tuple[str, ...]:
        """The allowed origins of :attr:`cors_origins`, each ``scheme://host[:port]`` or ``*``;
        with none set and :attr:`api_compat` ``krau``, ``("*",)`` (krau allows every origin).

        Raises:
            ConfigError: one is not an origin (a path, no scheme, not http(s)).
        """
        origins = tuple(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())
        for origin in origins:
            scheme, sep, rest = origin.partition("://")
            if origin != "*" and (
                scheme not in ("http", "https") or not sep or not rest or "/" in rest
            ):
                raise ConfigError(
                    "SRCLUSTER_CORS_ORIGINS must be origins such as https://app.example.com "
                    "(scheme, host and port only) or *",
                    value=origin,
                )
        if not origins and self.api_compat == "krau":
            return ("*",)
        return origins

    def webhook_key(self) -> bytes | None:
        """The HMAC key that signs callbacks (``webhook_secret`` decoded), or ``None`` if unset.

        Raises:
            ConfigError: the secret is not ``whsec_`` + base64 of 16+ bytes.
        """
        if not self.webhook_secret:
            return None
        encoded = self.webhook_secret.removeprefix(WEBHOOK_SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) < 16:
            raise ConfigError(
                "SRCLUSTER_WEBHOOK_SECRET must be whsec_ followed by the base64 of 16+ random "
                'bytes (e.g. python3 -c "import base64, os; '
                "print('whsec_' + base64.b64encode(os.urandom(32)).decode())\")"
            )
        return key

    def to_env(self) -> dict[str, str]:
        """These settings as ``SRCLUSTER_*`` variables, for a child process (a worker, the API)."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                env[ENV_PREFIX + f.name.upper()] = str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then ``overrides``.

        Raises:
            ConfigError: a variable is malformed (the message names it).
        """
        env = os.environ if environ is None else environ
        types = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, types[f.name])
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value out of its range."""
        if self.provider not in ("auto", "cpu", "cuda"):
            raise ConfigError("SRCLUSTER_PROVIDER must be auto, cpu or cuda", value=self.provider)
        if self.engine not in ENGINES:
            raise ConfigError(
                f"SRCLUSTER_ENGINE must be one of {', '.join(ENGINES)}", value=self.engine
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"SRCLUSTER_PRECISION must be one of {', '.join(PRECISIONS)}", value=self.precision
            )
        for name in (
            "max_bytes",
            "max_pixels",
            "max_output_pixels",
            "max_result_bytes",
            "max_parts",
            "model_max_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive")
        if self.threads < 0:
            raise ConfigError("SRCLUSTER_THREADS must be 0 (all cores) or positive")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError("SRCLUSTER_JPEG_QUALITY must be within 1..100")
        if not 1 <= self.webp_quality <= 101:
            raise ConfigError("SRCLUSTER_WEBP_QUALITY must be within 1..101")
        for name in (
            "timeout",
            "max_timeout",
            "result_ttl",
            "tile_time_limit",
            "visibility_timeout",
            "heartbeat_ttl",
            "stall_after",
            "token_max_jobs",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive")
        if self.timeout > self.max_timeout:
            raise ConfigError("SRCLUSTER_TIMEOUT must not exceed SRCLUSTER_MAX_TIMEOUT")
        if self.parts_per_group < 0:
            raise ConfigError("SRCLUSTER_PARTS_PER_GROUP must be 0 (automatic) or positive")
        if self.heartbeat_ttl < 3:
            raise ConfigError("SRCLUSTER_HEARTBEAT_TTL must be at least 3 (seconds)")
        if self.token_pixels_per_hour < 0:
            raise ConfigError("SRCLUSTER_TOKEN_PIXELS_PER_HOUR must be 0 (no limit) or positive")
        if self.max_deliveries < 1:
            raise ConfigError("SRCLUSTER_MAX_DELIVERIES must be at least 1")
        if self.blob_url:
            check_blob_url(self.blob_url)
        if self.webhook_attempts < 1:
            raise ConfigError("SRCLUSTER_WEBHOOK_ATTEMPTS must be at least 1")
        if not self.webhook_retry_delay > 0:
            raise ConfigError("SRCLUSTER_WEBHOOK_RETRY_DELAY must be positive")
        if self.wait_slots < 0:
            raise ConfigError("SRCLUSTER_WAIT_SLOTS must be 0 (never wait) or positive")
        if not self.stop_grace >= 0:
            raise ConfigError("SRCLUSTER_STOP_GRACE must be 0 (hand tiles back at once) or more")
        self.webhook_key()
        if self.api_compat not in API_COMPATS:
            raise ConfigError(
                "SRCLUSTER_API_COMPAT must be empty (srcluster's API) or krau",
                value=self.api_compat,
            )
        self.token_names()
        self.admin_token_names()
        self.cors_origin_list()


def _token_table(raw: str, variable: str) -> dict[str, str]:
    """``name:token`` pairs (commas between) as token -> name; a bare token is ``default``.

    Raises:
        ConfigError: a pair is malformed or a token is too short to be a secret.
    """
    table: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, token = item.partition(":")
        if not sep:
            name, token = "default", item
        if not name or len(token) < 16:
            raise ConfigError(
                f"{variable} must be name:token pairs with tokens of 16+ characters", name=name
            )
        table[token] = name
    return table


def check_blob_url(url: str) -> None:
    """Raise :class:`ConfigError` unless ``url`` is ``file:///absolute/path`` or
    ``s3://bucket[/prefix]`` (see :mod:`common.cluster.blobs`)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/") or not parts.path.strip("/"):
            raise ConfigError(
                "SRCLUSTER_BLOB_URL: a folder is file:///absolute/path (three slashes)", value=url
            )
    elif parts.scheme == "s3":
        if not parts.netloc or parts.query or parts.fragment:
            raise ConfigError("SRCLUSTER_BLOB_URL: S3 is s3://bucket/prefix", value=url)
    else:
        raise ConfigError(
            "SRCLUSTER_BLOB_URL must be empty (Redis), file:///path or s3://bucket/prefix",
            value=url,
        )


def _parse(name: str, raw: str, kind: Any) -> Any:
    """``raw`` as a value of the field type ``kind`` (``X | None`` parses as ``X``)."""
    options = [t for t in getattr(kind, "__args__", (kind,)) if t is not type(None)]
    target = options[0] if len(options) == 1 else kind
    try:
        if target is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if target in (int, float):
            return target(raw)
        if target is Path:
            return Path(raw).expanduser()
        if target is str:
            return raw
    except ValueError:
        raise ConfigError(f"{name} is malformed", value=raw) from None
    raise TypeError(f"no parser for {name} of type {kind!r}")
