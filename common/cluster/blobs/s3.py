"""Blobs in S3 (AWS, MinIO or any S3 API): ``s3://bucket/prefix/<job id>/<name>``.

Through boto3, the AWS SDK: it reads credentials the standard way
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, an instance or pod role), retries throttled and failed
requests itself, and talks to MinIO with ``SRCLUSTER_S3_ENDPOINT_URL``. It is
an optional dependency (``pip install 'srcluster[s3]'``), imported only when a
``s3://`` URL is configured.

A PUT replaces an object whole (readers see the old or the new one), a window
is one ranged GET (``Range: bytes=first-last``), and a result is streamed out
of the GET's body in chunks. A group's reads and writes overlap in a few
threads (one boto3 client is thread-safe). The bucket must exist; srcluster
never creates one. The sweep lists the prefix and deletes objects older than
the result TTL, but for the cluster's models (``prefix/models/``); an S3
lifecycle rule on the prefix (expire after a day or two, excluding ``models/``)
does the same without the listing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from common.cluster.blobs import MODELS, Blobs, BlobUnavailable
from common.errors import ConfigError

THREADS = 8
"""Requests of one call (a group's windows or outputs) in flight at once."""

DELETE_BATCH = 1000
"""Keys per ``DeleteObjects`` request (the S3 API's limit)."""

MISSING = {"NoSuchKey", "404", "NotFound", "InvalidRange"}
"""Error codes that mean "no such blob" (an empty object asked for a range: InvalidRange)."""

T = TypeVar("T")
R = TypeVar("R")


class S3Blobs(Blobs):
    """Blobs under ``prefix/`` in ``bucket``."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError as error:
            raise ConfigError(
                "SRCLUSTER_BLOB_URL is s3://...: install boto3 (pip install 'srcluster[s3]')"
            ) from error
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = self.kind = f"s3://{bucket}/{self.prefix}"
        config = botocore.config.Config(
            max_pool_connections=THREADS * 2,
            retries={"max_attempts": 5, "mode": "standard"},
            # S3-compatible servers (MinIO, older versions) do not all take the newer
            # default checksums: send them only where the API requires one
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # a session of its own: boto3's default session is not thread-safe
        session = boto3.session.Session()
        self.client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._client_error: type[Exception] = botocore.exceptions.ClientError
        self._unreachable: tuple[type[Exception], ...] = (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ResponseStreamingError,
        )

    def key(self, job_id: str, name: str = "") -> str:
        return f"{self.prefix}{job_id}/{name}"

    def _call(self, what: str, call: Callable[[], T], missing: T) -> T:
        """``call()``, with ``missing`` for a missing object and :class:`BlobUnavailable`
        for an unreachable server (other errors, e.g. access denied, pass as they are)."""
        try:
            return call()
        except self._client_error as error:
            code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
            if code in MISSING:
                return missing
            if code.startswith("5") or code in ("SlowDown", "ServiceUnavailable"):
                raise BlobUnavailable(f"S3 {what}: {error}") from error
            raise
        except self._unreachable as error:
            raise BlobUnavailable(f"S3 {what}: {error}") from error

    def put(self, job_id: str, name: str, data: bytes) -> None:
        key = self.key(job_id, name)
        self._call(
            f"PUT {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data), 0
        )

    def get(self, job_id: str, name: str) -> bytes | None:
        key = self.key(job_id, name)

        def read() -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with body:
                return bytes(body.read())

        return self._call(f"GET {key}", read, None)

    def read_range(self, job_id: str, name: str, first: int, last: int) -> bytes:
        key = self.key(job_id, name)

        def read() -> bytes:
            reply = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last}"
            )
            with reply["Body"] as body:
                return bytes(body.read())

        return self._call(f"GET {key} range", read, b"")

    def stream(self, job_id: str, name: str, chunk: int) -> tuple[int, Iterator[bytes]] | None:
        key = self.key(job_id, name)
        reply = self._call(
            f"GET {key}", lambda: self.client.get_object(Bucket=self.bucket, Key=key), None
        )
        if reply is None:
            return None
        body = reply["Body"]

        def chunks() -> Iterator[bytes]:
            with body:
                yield from body.iter_chunks(chunk)

        return int(reply["ContentLength"]), chunks()

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under ``prefix`` (``Key``, ``LastModified``, ...), page by page."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        try:
            for page in pages:
                yield from page.get("Contents", [])
        except self._unreachable as error:
            raise BlobUnavailable(f"S3 LIST {prefix}: {error}") from error

    def names(self, job_id: str) -> list[str]:
        start = len(self.key(job_id))
        return [o["Key"][start:] for o in self._objects(self.key(job_id))]

    def _delete_keys(self, keys: list[str]) -> None:
        for at in range(0, len(keys), DELETE_BATCH):
            batch = {"Objects": [{"Key": k} for k in keys[at : at + DELETE_BATCH]], "Quiet": True}
            self._call(
                "DELETE",
                partial(self.client.delete_objects, Bucket=self.bucket, Delete=batch),
                None,
            )

    def delete(self, job_id: str, names: Iterable[str]) -> None:
        self._delete_keys([self.key(job_id, name) for name in names])

    def remove_job(self, job_id: str) -> None:
        self._delete_keys([o["Key"] for o in self._objects(self.key(job_id))])

    def sweep(self, max_age: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=max_age)
        models = self.key(MODELS)  # the cluster's models are kept until deleted
        old = [
            o["Key"]
            for o in self._objects(self.prefix)
            if o["LastModified"] < cutoff and not o["Key"].startswith(models)
        ]
        self._delete_keys(old)
        return len(old)

    def close(self) -> None:
        self.client.close()

    # --- a group's requests overlap ---------------------------------------------------

    def _each(self, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
            return list(pool.map(function, items))

    def put_many(self, job_id: str, items: Sequence[tuple[str, bytes]]) -> None:
        self._each(lambda item: self.put(job_id, *item), items)

    def get_many(self, job_id: str, names: Sequence[str]) -> list[bytes | None]:
        return self._each(lambda name: self.get(job_id, name), names)

    def read_ranges(self, job_id: str, reads: Sequence[tuple[str, int, int]]) -> list[bytes]:
        return self._each(lambda read: self.read_range(job_id, *read), reads)
