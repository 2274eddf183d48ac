"""Where a job's big bytes live when not in Redis: input strips, output cores, the result.

By default (``SRCLUSTER_BLOB_URL`` empty) the store keeps them in its Redis and
the Lua scripts move them (:mod:`common.cluster.lua`). With AOF on, every byte
written through Lua is also appended to the AOF: measured ~6 ms of Redis CPU per
MB, so one Redis carried only ~40-70 real-size (3 MiB) tiles a second. A blob
store takes the bytes off Redis, which then holds only the job records, the
queues and the counters (a few hundred bytes per tile):

- ``file:///path`` (:mod:`.files`): a folder every API and worker process can
  read and write: one host, or a shared filesystem (NFS, a ReadWriteMany volume);
- ``s3://bucket/prefix`` (:mod:`.s3`): any S3 API (AWS, MinIO), through boto3.

Each job's blobs are named under the job's id (one folder or key prefix per
job), so a job's tiles are dropped, or the whole job deleted, by its id. The
names a job uses are :func:`strip_name`, :func:`output_name` and :data:`RESULT`.

The ordering that keeps the Lua scripts' guarantees (the store does it): a blob
is written *before* the script that makes it visible (a part marked done, a job
ended ``success``); when the script answers that the job has ended, the caller
deletes what it just wrote; a job that ends drops its blobs after its status is
final. Rewriting a blob under the same name (a redelivered tile) is harmless:
a write replaces the whole blob atomically, and readers see the old or the new
bytes, never a mix. Blobs left by a process that died between its write and its
script (or a job whose record expired) are removed by the janitors' sweep
(:meth:`Blobs.sweep`) once older than the result TTL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from urllib.parse import unquote, urlsplit

from common.settings import Settings, check_blob_url

RESULT = "result"
"""The name of a job's encoded final image."""

MODELS = "models"
"""The scope (in place of a job id) of the cluster's model bytes, one blob per sha256
(:mod:`common.cluster.models`): never a job's, never swept."""

SWEEP_INTERVAL = 600
"""Seconds between two sweeps of old blobs (one janitor in the cluster does each)."""


class BlobUnavailable(Exception):
    """The blob store does not answer (network, server down): a retry may succeed.

    Like a Redis connection error, it is no fault of the job: a task that meets
    it gives its message back instead of failing the job.
    """


def strip_name(plane: int, column: int) -> str:
    """The blob of column strip ``column`` of plane ``plane``'s extended input."""
    return f"in-{plane}-{column}"


def output_name(part: int) -> str:
    """The blob of a part's output core."""
    return f"out-{part}"


class Blobs(ABC):
    """A job-scoped byte store: ``(job id, name) -> bytes``.

    Reads of a missing blob return ``None`` (or ``b""`` for a range), never
    raise; a missing job is a job without blobs. Every method may raise
    :class:`BlobUnavailable` when the store cannot be reached.
    """

    url: str
    """Where the blobs are, as configured (no secrets: credentials come from elsewhere)."""

    kind: str
    """What every process of a cluster must agree on (recorded in each job): ``file``
    (hosts may mount the shared folder at different paths) or the ``s3://`` URL."""

    @abstractmethod
    def put(self, job_id: str, name: str, data: bytes) -> None:
        """Store ``data`` as the job's blob ``name``, replacing it whole if it exists."""

    @abstractmethod
    def get(self, job_id: str, name: str) -> bytes | None:
        """The whole blob, or ``None`` if there is none."""

    @abstractmethod
    def read_range(self, job_id: str, name: str, first: int, last: int) -> bytes:
        """Bytes ``first..last`` (inclusive) of a blob; ``b""`` if it does not exist."""

    @abstractmethod
    def stream(self, job_id: str, name: str, chunk: int) -> tuple[int, Iterator[bytes]] | None:
        """``(size, chunks of at most chunk bytes)`` of a blob, or ``None`` if it does not
        exist. The blob is opened before this returns; closing the iterator releases it."""

    @abstractmethod
    def names(self, job_id: str) -> list[str]:
        """The names of the job's blobs."""

    @abstractmethod
    def delete(self, job_id: str, names: Iterable[str]) -> None:
        """Delete some of a job's blobs (missing ones are no error)."""

    @abstractmethod
    def remove_job(self, job_id: str) -> None:
        """Delete every blob of the job."""

    @abstractmethod
    def sweep(self, max_age: float) -> int:
        """Delete blobs (whole jobs, where the backend can tell) untouched for over
        ``max_age`` seconds; returns how many jobs or blobs went."""

    def close(self) -> None:  # noqa: B027  (nothing to release, unless a backend says so)
        """Release connections."""

    # --- several at once: one after another here; a remote backend overlaps them ---

    def put_many(self, job_id: str, items: Sequence[tuple[str, bytes]]) -> None:
        """:meth:`put` each ``(name, data)``."""
        for name, data in items:
            self.put(job_id, name, data)

    def get_many(self, job_id: str, names: Sequence[str]) -> list[bytes | None]:
        """:meth:`get` of each name, in order."""
        return [self.get(job_id, name) for name in names]

    def read_ranges(self, job_id: str, reads: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """:meth:`read_range` of each ``(name, first, last)``, in order."""
        return [self.read_range(job_id, name, first, last) for name, first, last in reads]

    def drop(self, job_id: str, keep: Iterable[str] = (RESULT,)) -> None:
        """Delete the job's blobs but those named in ``keep``."""
        kept = set(keep)
        self.delete(job_id, [name for name in self.names(job_id) if name not in kept])


def open_blobs(url: str, s3_endpoint_url: str = "") -> Blobs | None:
    """The blob store at ``url`` (``None`` for an empty one: bytes stay in Redis).

    Raises:
        ConfigError: a malformed URL, or ``s3://`` without boto3 installed.
    """
    if not url:
        return None
    check_blob_url(url)
    parts = urlsplit(url)
    if parts.scheme == "file":
        from common.cluster.blobs.files import FileBlobs

        return FileBlobs(unquote(parts.path))
    from common.cluster.blobs.s3 import S3Blobs

    return S3Blobs(parts.netloc, parts.path.strip("/"), endpoint_url=s3_endpoint_url or None)


def from_settings(settings: Settings) -> Blobs | None:
    """The blob store ``settings`` name (``SRCLUSTER_BLOB_URL``), or ``None`` for Redis."""
    return open_blobs(settings.blob_url, settings.s3_endpoint_url)
