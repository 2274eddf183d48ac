"""A job as the store records it, and the small values the store's calls return.

Plain data, no Redis: :mod:`common.cluster.store` reads and writes these (and
re-exports them, so ``from common.cluster.store import JobStatus`` keeps working).
Arrays travel as ``.npy`` bytes (dtype, shape, data; never pickles).
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from common import estimate


class JobStatus(StrEnum):
    """A job's state; the value is what the API reports."""

    PENDING = "pending"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job has ended (``success``, ``failed`` or ``cancelled``); that is final."""
        return self in (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class WindowRead:
    """Where a part's input window lies: bytes ``[first, last]`` of a plane's column strip."""

    part: int
    plane: int
    column: int
    first: int
    last: int


@dataclass(frozen=True)
class GroupStart:
    """What :meth:`JobStore.begin_group` found: the job's state and the group's windows.

    ``windows`` is ``None`` unless the job is unfinished, in time and no part of
    the group is over its deliveries; an empty ``bytes`` stands for a window
    whose strip is gone (the job ended meanwhile).
    """

    status: JobStatus | None
    deadline: float
    deliveries: int
    """The most deliveries of any part of the group, this one included."""
    worst_part: int
    windows: list[bytes] | None
    started_parts: int = 0
    """Parts of the job started at least once so far, this group's included (0 when the job
    had ended or was past its deadline)."""
    already_done: bool = False
    """Every part of the group was done before: a duplicate message, skipped (nothing counted)."""
    landed: bool = False
    """With ``already_done``: every part of the job has landed, so it only lacks its stitch."""


def token_hash(token: str) -> str:
    """What a job records of its owner: the token's sha256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def pack_array(array: npt.NDArray[Any]) -> bytes:
    """Serialize an array as ``.npy`` bytes (dtype, shape, data)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def unpack_array(data: bytes) -> npt.NDArray[Any]:
    """Inverse of :func:`pack_array`; refuses pickled objects."""
    array: npt.NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
    return array


@dataclass
class JobRecord:
    """A job as stored; ``params`` and ``plan`` are the JSON dicts the API recorded."""

    id: str
    status: JobStatus
    owner: str
    owner_name: str
    params: dict[str, Any]
    plan: dict[str, Any]
    parts: int
    groups: int
    """Tasks the job was sent as (each carries a group of parts)."""
    created: float
    deadline: float
    done: int = 0
    started: float | None = None
    finished: float | None = None
    landed: float | None = None
    """When the last part's output landed (the stitch should follow)."""
    stitch_requested: float | None = None
    """When the janitor last re-sent a stitch (see :func:`common.cluster.jobs.unstitched`)."""
    stitches: int = 0
    """Stitches that ended the job ``success``: 1 once it has, never more."""
    error: str | None = None
    error_code: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    estimate: float | None = None
    """Seconds of inference estimated at submit (:func:`common.estimate.estimate`)."""
    callback_url: str | None = None
    callback: dict[str, Any] | None = None
    """``{"status", "attempts", "error"?}`` of the job's callback, if it asked for one."""
    committed: bool = True
    """False until the API has queued all the job's tasks (see ``JobStore.commit``)."""

    def public(self, now: float | None = None) -> dict[str, Any]:
        """The ``result`` object of ``GET /result/<id>`` at time ``now`` (default: now)."""
        body: dict[str, Any] = {
            "task_id": self.id,
            "status": self.status.value,
            "progress": {"done": self.done, "total": self.parts},
            "model": self.params.get("model"),
            "created": self.created,
        }
        if self.started is not None:
            body["started"] = self.started
        if self.finished is not None:
            body["finished"] = self.finished
        if self.estimate is not None:
            body["estimated_seconds"] = round(self.estimate, 1)
        if not self.status.finished:
            now = time.time() if now is None else now
            eta = estimate.remaining(
                self.done, self.parts, self.started, self.created, self.estimate, now
            )
            body["eta_seconds"] = None if eta is None else round(eta, 1)
        body["notes"] = list(self.plan.get("notes", []))
        body.update(self.output)
        if self.error is not None:
            body["error"] = {"code": self.error_code or "failed", "message": self.error}
        if self.callback is not None:
            body["callback"] = self.callback
        return body
