"""The cluster's shared models in Redis: added once, used by every API process and worker.

Keys, none with a TTL (a model stays until it is deleted)::

    srcluster:models                hash name -> JSON of a ClusterEntry (sha256, scale, channels,
                                    size, added_by, added_at, description, store)
    srcluster:model-data:<sha>:<i>  chunk i of the ONNX bytes, MODEL_CHUNK bytes each (the last
                                    shorter), when they live in Redis

With a blob store (``SRCLUSTER_BLOB_URL``) the bytes are one blob ``<sha256>`` in the
blob scope :data:`~common.cluster.blobs.MODELS` instead, which the sweep never touches.
Bytes are stored once per content: two names of one file share them, and they go when
the last name that uses them does.

Order: the bytes are written before the entry that names them, so an entry seen by a
worker always had its bytes; a replaced or deleted entry's bytes are deleted after it.
One race is left, and said: deleting a name while another is added with the same bytes
can drop the bytes the new name needs; its jobs then fail ``model_unavailable`` and
adding the model again mends it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from common.catalog import ClusterEntry, check_model, check_name, sha256_hex
from common.cluster.blobs import MODELS, Blobs
from common.cluster.store import JobStore
from common.errors import ModelError, ModelNameTaken, ModelUnavailable
from common.models import BUILTIN_AND_ALIASES, Registry
from common.settings import Settings

log = logging.getLogger(__name__)

ENTRIES = "srcluster:models"
DATA = "srcluster:model-data:"

MODEL_CHUNK = 32 * 1024 * 1024
"""Bytes of one Redis value of a model: far below Redis' 512 MiB limit on one value, and
small enough that no single write or read holds Redis up for long."""


class ClusterModels:
    """The cluster's model entries and their bytes (a :class:`~common.catalog.ModelSource`).

    Every method raises ``redis.RedisError`` (or the blob store's ``BlobUnavailable``) when
    the store does not answer; a failed :meth:`add` leaves at most unnamed bytes behind,
    which the next add of the same file reuses.
    """

    def __init__(self, client: redis.Redis, blobs: Blobs | None = None) -> None:
        self.redis: Any = client
        self.blobs = blobs

    @classmethod
    def from_store(cls, store: JobStore) -> ClusterModels:
        """The models of ``store``'s cluster (its Redis, its blob store)."""
        return cls(store.redis, store.blobs)

    @property
    def where(self) -> str:
        """Where this process keeps model bytes: ``redis`` or the blob store's kind."""
        return "redis" if self.blobs is None else self.blobs.kind

    # --- reading ------------------------------------------------------------------

    def entries(self) -> dict[str, ClusterEntry]:
        found = {}
        for raw_name, raw in self.redis.hgetall(ENTRIES).items():
            name = raw_name.decode()
            try:
                found[name] = ClusterEntry.from_dict(json.loads(raw))
            except (ValueError, ModelError) as error:  # one bad entry must not hide the rest
                log.warning("cluster model %s has a malformed entry: %s", name, error)
        return found

    def entry(self, name: str) -> ClusterEntry | None:
        raw = self.redis.hget(ENTRIES, name)
        if raw is None:
            return None
        try:
            return ClusterEntry.from_dict(json.loads(raw))
        except ValueError as error:
            raise ModelError(f"cluster model {name!r} has a malformed entry: {error}") from None

    def fetch(self, entry: ClusterEntry) -> bytes | None:
        """The stored bytes of ``entry``, or ``None`` if they are missing.

        Raises:
            ModelUnavailable: the bytes were stored where this process does not look
                (another ``SRCLUSTER_BLOB_URL``).
        """
        if entry.store != self.where:
            raise ModelUnavailable(
                f"cluster model {entry.name!r} is stored in {entry.store} but this worker "
                f"looks in {self.where}: every process needs the same SRCLUSTER_BLOB_URL",
                model=entry.name,
            )
        if self.blobs is not None:
            return self.blobs.get(MODELS, entry.sha256)
        chunks = self.redis.mget(_chunk_keys(entry.sha256, entry.size))
        if any(chunk is None for chunk in chunks):
            return None
        return b"".join(chunks)

    # --- changing -----------------------------------------------------------------

    def add(
        self,
        name: str,
        data: bytes,
        *,
        added_by: str,
        max_bytes: int,
        label: str = "the model",
        description: str = "",
        replace: bool = False,
    ) -> tuple[ClusterEntry, ClusterEntry | None]:
        """Check ``data`` and record it as cluster model ``name``; returns the new entry and
        the one it replaced (``None``: the name is new). ``label`` names the file in messages.

        Raises:
            BadParameter: a malformed name.
            ModelNameTaken: a built-in's name, or another cluster model's (unless ``replace``).
            ModelTooLarge: more than ``max_bytes``.
            InvalidModel: not a usable SR model (see :func:`common.catalog.check_model`).
        """
        check_name(name, BUILTIN_AND_ALIASES)
        previous = self.entry(name)
        if previous is not None and not replace:
            raise _taken(previous)
        scale = check_model(data, label, max_bytes)
        entry = ClusterEntry(
            name=name,
            sha256=sha256_hex(data),
            scale=scale,
            channels=3,
            size=len(data),
            added_by=added_by,
            added_at=time.time(),
            description=description,
            store=self.where,
        )
        self._put_bytes(entry.sha256, data)
        payload = json.dumps(entry.to_dict())
        if replace:
            with self.redis.pipeline(transaction=True) as pipe:  # the old entry, atomically
                raw, _ = pipe.hget(ENTRIES, name).hset(ENTRIES, name, payload).execute()
            replaced = ClusterEntry.from_dict(json.loads(raw)) if raw is not None else None
        elif not self.redis.hsetnx(ENTRIES, name, payload):
            raced = self.entry(name)  # added by another caller since the check above
            raise _taken(raced if raced is not None else entry)
        else:
            replaced = None
        if replaced is not None and replaced.sha256 != entry.sha256:
            self._drop_unused(replaced)
        return entry, replaced

    def remove(self, name: str) -> ClusterEntry | None:
        """Delete cluster model ``name`` (and its bytes, unless another name uses them);
        returns its entry, or ``None`` if there was none."""
        entry = self.entry(name)
        if entry is None or not self.redis.hdel(ENTRIES, name):
            return None
        self._drop_unused(entry)
        return entry

    def _put_bytes(self, sha256: str, data: bytes) -> None:
        if self.blobs is not None:
            self.blobs.put(MODELS, sha256, data)
            return
        keys = _chunk_keys(sha256, len(data))
        with self.redis.pipeline(transaction=False) as pipe:
            for i, key in enumerate(keys):
                pipe.set(key, data[i * MODEL_CHUNK : (i + 1) * MODEL_CHUNK])
            pipe.execute()

    def _drop_unused(self, entry: ClusterEntry) -> None:
        """Delete ``entry``'s bytes unless another entry names the same content."""
        if any(other.sha256 == entry.sha256 for other in self.entries().values()):
            return
        if entry.store != self.where:
            log.warning(
                "cluster model %s: its bytes are in %s, left there", entry.name, entry.store
            )
        elif self.blobs is not None:
            self.blobs.delete(MODELS, [entry.sha256])
        else:
            self.redis.delete(*_chunk_keys(entry.sha256, entry.size))


def _chunk_keys(sha256: str, size: int) -> list[str]:
    count = max(1, -(-size // MODEL_CHUNK))
    return [f"{DATA}{sha256}:{i}" for i in range(count)]


def _taken(entry: ClusterEntry) -> ModelNameTaken:
    return ModelNameTaken(
        f"a cluster model named {entry.name!r} already exists (added by {entry.added_by}); "
        "delete it first, or ask to replace it",
        parameter="name",
        value=entry.name,
        sha256=entry.sha256,
    )


def cluster_registry(settings: Settings, store: JobStore) -> Registry:
    """The registry of a cluster process: built-ins, the cluster's models, this host's."""
    return Registry(settings, cluster=ClusterModels.from_store(store))
