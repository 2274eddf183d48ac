"""Tiles put back on the queue when nobody will finish them: dead hosts and stalled jobs.

Celery alone gives a dead worker's task back only after the broker's visibility
timeout (1200 s by default), long after the job's own timeout (600 s). The job
store knows better: ``P:running`` says which process started each part, and
every worker's heartbeat (:mod:`common.cluster.workers`) says who is alive.

- **A dead host.** When a worker's heartbeat expires, the janitor that forgets
  it (exactly one: :meth:`~common.cluster.workers.WorkerRegistry.forget_dead_workers`
  is atomic) takes over every unfinished part a dead worker started
  (:meth:`~common.cluster.store.JobStore.take_orphans`) and sends its group
  again, as the API did: the same task, arguments and id.
- **A stalled job.** A job whose progress (a part started or landed) has not
  moved for :func:`stall_threshold` seconds has its missing parts taken over
  when no live worker holds them and no broker list carries their group (a
  message lost, or never sent). A job is re-queued so at most
  ``max_deliveries`` times, then fails ``stalled``.

Both are idempotent with what Celery does meanwhile: the dead worker's own
message still comes back after the visibility timeout, and a group whose parts
are all done by then is skipped without counting a delivery
(:data:`common.cluster.lua.BEGIN_GROUP`); a part run twice rewrites the same
output. Taking parts over moves the job's deadline to at least
:func:`stall_threshold` seconds ahead, so a job is never failed ``timeout``
while its tiles are being redelivered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.cluster.protocol import tile_task_id
from common.cluster.store import JobStore
from common.settings import Settings

STALL_FACTOR = 3.0
"""A job is stalled after this many times its expected group time without progress."""


@dataclass(frozen=True)
class Resend:
    """Groups of a job to send again, and why (``dead worker`` or ``stalled``)."""

    job_id: str
    groups: tuple[int, ...]
    why: str


def group_seconds(estimate: float | None, groups: int, slots: int) -> float:
    """Expected seconds of one group: the job's estimated time on ``slots`` processes,
    times those processes, shared among its groups (0 when there is no estimate)."""
    if not estimate or groups <= 0:
        return 0.0
    return estimate * max(1, slots) / groups


def stall_threshold(settings: Settings, estimate: float | None, groups: int, slots: int) -> float:
    """Seconds without progress after which a job counts as stalled."""
    return max(float(settings.stall_after), STALL_FACTOR * group_seconds(estimate, groups, slots))


def _groups(store: JobStore, job_id: str, parts: Iterable[int]) -> tuple[int, ...]:
    plan = store.plan_of(job_id)
    size = max(1, int((plan or {}).get("group", 1)))
    return tuple(sorted({part // size for part in parts}))


def requeue_dead(store: JobStore, settings: Settings) -> list[Resend]:
    """Take over the parts that dead workers started, in every unfinished job; returns
    the groups to send again. Call it after forgetting dead workers."""
    slots = store.worker_slots()
    ids = store.unfinished()
    found = []
    for job_id, (_, estimate, groups) in zip(ids, store.progress_marks(ids), strict=True):
        grace = stall_threshold(settings, estimate, groups, slots)
        parts = store.take_orphans(job_id, every=False, fresh=grace, grace=grace)
        if parts:
            found.append(Resend(job_id, _groups(store, job_id, parts), "dead worker"))
    return found


def requeue_stalled(store: JobStore, settings: Settings, now: float) -> list[Resend]:
    """Find the jobs stalled at ``now`` and take over their missing parts that no live
    worker holds and no queue carries; returns the groups to send again. A job stalled
    more than ``max_deliveries`` times ends ``failed`` (``stalled``) instead.

    One janitor in the cluster looks per ``janitor_interval`` (a claim in Redis), and
    only reads the broker's lists when some job has stalled.
    """
    ids = store.unfinished()
    slots = store.worker_slots()
    stalled = []
    for job_id, (last, estimate, groups) in zip(ids, store.progress_marks(ids), strict=True):
        threshold = stall_threshold(settings, estimate, groups, slots)
        if now - last > threshold:
            stalled.append((job_id, threshold))
    if not stalled or not store.claim("stall-check", settings.janitor_interval):
        return []
    queued = store.queued_tasks(settings.tile_queue)
    found = []
    for job_id, threshold in stalled:
        record = store.get(job_id)
        if record is None or record.status.finished:
            continue
        size = max(1, int(record.plan.get("group", 1)))
        leave = [
            part
            for group in range(record.groups)
            if tile_task_id(job_id, group) in queued
            for part in range(group * size, (group + 1) * size)
        ]
        parts = store.take_orphans(
            job_id, every=True, fresh=threshold, grace=threshold, leave=leave
        )
        if not parts:
            continue
        if store.count_stall(job_id) > settings.max_deliveries:
            store.fail(
                job_id,
                "stalled",
                f"the job made no progress for {threshold:.0f} s, {settings.max_deliveries} "
                "times, with tiles that no worker ran",
            )
            continue
        found.append(Resend(job_id, _groups(store, job_id, parts), "stalled"))
    return found
