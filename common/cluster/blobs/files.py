"""Blobs as files: ``<root>/<job id>/<name>``, one folder per job.

The root must be the same folder for the API and every worker: one host, or a
shared filesystem (NFS, a ReadWriteMany volume). A write goes to a temporary
file in the job's folder and is renamed over the name (``os.replace``, atomic on
POSIX and NFS), so a reader sees the old bytes or the new ones, never part of a
write. Windows are read with ``pread``: a task reads its own bytes of a strip,
not the strip.

A job's folder changes (mtime) whenever a blob in it is written or deleted, so
the sweep removes folders untouched for longer than the result TTL: a job's
blobs outlive neither its record nor its result by much. Files are not fsynced:
a host that loses power may lose the blobs of its last seconds, as Redis's
``everysec`` AOF may lose its last second; a tile whose output is lost then
fails its job (``lost_tile``) at the stitch.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from common.cluster.blobs import MODELS, RESULT, Blobs, BlobUnavailable

JOB_FOLDER = re.compile(r"^[0-9a-f]{32}$")
"""A job's folder name (``uuid4().hex``); the sweep touches nothing else in the root (so
the cluster's models, in the folder ``models``, stay)."""

WRITE_ATTEMPTS = 5
"""Tries of one write whose temporary file vanished (the job's folder was dropped meanwhile);
then :class:`BlobUnavailable`: the task is redelivered, and finds its job ended."""


class FileBlobs(Blobs):
    """Blobs in a folder shared by every process of the cluster."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = self.root.as_uri()
        self.kind = "file"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BlobUnavailable(f"blob folder {self.root}: {error}") from error

    def folder(self, job_id: str) -> Path:
        if not JOB_FOLDER.match(job_id) and job_id != MODELS:
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def put(self, job_id: str, name: str, data: bytes) -> None:
        folder = self.folder(job_id)
        for attempt in range(WRITE_ATTEMPTS):
            temporary = folder / f".{name}.{uuid.uuid4().hex}.tmp"
            try:
                folder.mkdir(exist_ok=True)
                with open(temporary, "wb") as out:
                    out.write(data)
                os.replace(temporary, folder / name)
                return
            except (FileNotFoundError, FileExistsError) as error:
                # the folder was removed under the write (the job ended, its blobs dropped;
                # mkdir sees it exist, then not): write again; the caller's script then
                # says the job ended and deletes it
                if attempt == WRITE_ATTEMPTS - 1:
                    raise BlobUnavailable(f"writing {folder / name}: {error}") from error
            except OSError as error:
                with contextlib.suppress(OSError):
                    temporary.unlink()
                raise BlobUnavailable(f"writing {folder / name}: {error}") from error

    def get(self, job_id: str, name: str) -> bytes | None:
        try:
            return (self.folder(job_id) / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise BlobUnavailable(f"reading {name} of job {job_id}: {error}") from error

    def read_range(self, job_id: str, name: str, first: int, last: int) -> bytes:
        try:
            fd = os.open(self.folder(job_id) / name, os.O_RDONLY)
        except FileNotFoundError:
            return b""
        except OSError as error:
            raise BlobUnavailable(f"reading {name} of job {job_id}: {error}") from error
        try:
            chunks = []
            at, left = first, last - first + 1
            while left > 0:
                chunk = os.pread(fd, left, at)
                if not chunk:
                    break  # shorter than asked: what there is
                chunks.append(chunk)
                at += len(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def stream(self, job_id: str, name: str, chunk: int) -> tuple[int, Iterator[bytes]] | None:
        try:
            handle = open(self.folder(job_id) / name, "rb")  # noqa: SIM115  (closed by the iterator)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise BlobUnavailable(f"reading {name} of job {job_id}: {error}") from error
        size = os.fstat(handle.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            # the open file keeps its bytes even if the job is deleted meanwhile
            with handle:
                while data := handle.read(chunk):
                    yield data

        return size, chunks()

    def names(self, job_id: str) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.folder(job_id)) if not e.name.startswith(".")]
        except FileNotFoundError:
            return []

    def delete(self, job_id: str, names: Iterable[str]) -> None:
        folder = self.folder(job_id)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        with contextlib.suppress(OSError):  # not empty (a result is kept), or gone already
            folder.rmdir()

    def drop(self, job_id: str, keep: Iterable[str] = (RESULT,)) -> None:
        kept = set(keep)
        folder = self.folder(job_id)
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        # temporary files too: a write racing the drop writes again, then deletes its blob
        self.delete(job_id, [e.name for e in entries if e.name not in kept])

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def sweep(self, max_age: float) -> int:
        cutoff = time.time() - max_age
        removed = 0
        try:
            entries = list(os.scandir(self.root))
        except OSError as error:
            raise BlobUnavailable(f"listing {self.root}: {error}") from error
        for entry in entries:
            if not JOB_FOLDER.match(entry.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
        return removed
