"""The cluster's steps, framework-free: prepare and submit (API), run a group and stitch (worker).

They call the same functions as :func:`common.pipeline.run_plan`, in the same
order, so a job run across hosts gives the local pipeline's pixels exactly.
The Celery tasks and Flask routes only move arguments to and from here, and
every Redis or blob read or write goes through :class:`~common.cluster.store.JobStore`.

The input is stored once, as column strips of each plane's reflection-extended
image (:func:`window_read` finds a window's bytes in them), so the API cuts no
windows and a task reads exactly the bytes of its own. A task carries a group of
parts (:mod:`common.groups`) and costs two store round trips, whatever its size.
The task that lands a job's last part asks for the stitch; the janitor asks again
for a job whose stitch never came.

Every step is safe to repeat (Celery redelivers after a worker dies): a part
rewrites the same output key and re-adds the same number to the done set; a
stitch stores a result and ends the job only once (the status transition is
atomic and ``success`` is final).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import redis

from common import estimate, tiling
from common.cluster.models import ClusterModels
from common.cluster.prefetch import CorePrefetch
from common.cluster.store import (
    JobStatus,
    JobStore,
    ResultTooLarge,
    WindowRead,
    pack_array,
    refused_for_now,
    unpack_array,
)
from common.engines import Engine, get_engine
from common.errors import ImageTooLarge, ModelError, QuotaExceeded, UnknownModel
from common.groups import MAX_GROUP
from common.imageio import Image, content_type, decode
from common.memory import ENGINE_KEYS
from common.models import Registry
from common.params import UpscaleParams
from common.pipeline import (
    JobPlan,
    assemble,
    check_bytes,
    encode_result,
    infer_windows,
    make_plan,
    plane_inputs,
    uninferred_alpha,
)
from common.settings import Settings

log = logging.getLogger(__name__)

STITCH_BYTES = 64 * 1024 * 1024
"""Output cores fetched from Redis at a time while stitching, in bytes (at least one core),
and at most read ahead while the last group infers: bounds the stitch's memory above its
canvas (twice this, plus its own group's cores), whether cores are 50 KB or 25 MB."""


COMMIT_SECONDS = 60.0
"""Seconds a submitted job may stay uncommitted (its tasks being queued) before the janitor
ends it: an API killed mid-submit leaves its job's input in the store this long at most."""


@dataclass
class Prepared:
    """A validated, planned job ready to be recorded: its plan and its input windows."""

    job_id: str
    plan: JobPlan
    image: Image

    def strips(self) -> Iterator[tuple[int, int, bytes]]:
        """``(plane, column, raw bytes)``: each plane's extended input cut into column strips."""
        tiles = self.plan.tiles
        width = tiles.window_width
        for p, extended in enumerate(plane_inputs(self.image.pixels, self.plan)):
            for c, origin in enumerate(self.plan.column_origins):
                # tobytes() copies a strided view in C order: one copy, not two
                yield p, c, extended[:, origin : origin + width].tobytes()

    def extras(self) -> dict[str, bytes]:
        extras: dict[str, bytes] = {}
        alpha = uninferred_alpha(self.image.pixels, self.plan)
        if alpha is not None:
            extras["alpha"] = pack_array(alpha)
        if self.image.icc:
            extras["icc"] = self.image.icc
        if self.image.exif:
            extras["exif"] = self.image.exif
        return extras


_UNKNOWN_LIMITS: tuple[tuple[str, int | None], ...] = (("ort-cpu", None),)
"""No worker said its limits: plan ONNX Runtime windows within this host's memory."""


def prepare(
    data: bytes,
    params: UpscaleParams,
    settings: Settings,
    registry: Registry,
    workers: int = 1,
    limits: Sequence[tuple[str, int]] = (),
) -> Prepared:
    """Validate and plan one upload for ``workers`` tile processes; nothing is stored yet.

    ``limits`` are the workers' ``(memory key, window budget in bytes)`` pairs
    (:meth:`~common.cluster.store.JobStore.capacity`): the windows are the
    smallest any of them needs, so every worker up can run every window. With
    none known, windows are planned for ONNX Runtime on this host's memory (the
    CPU engine whose windows take the most memory).

    Raises:
        ImageTooLarge, UnsupportedImage: the bytes are too many or not a usable image.
        UnknownModel, BadParameter: see :func:`common.pipeline.make_plan`.
    """
    check_bytes(data, settings)
    spec = registry.get(params.model)
    image = decode(data, settings.max_pixels)
    plans = [
        make_plan(
            image,
            params,
            spec,
            settings,
            workers=max(1, workers),
            engine=key if key in ENGINE_KEYS else "ort-cpu",
            window_budget=budget,
        )
        for key, budget in (limits or _UNKNOWN_LIMITS)
    ]
    plan = min(plans, key=lambda p: p.tiles.window_width * p.tiles.window_height)
    return Prepared(job_id=uuid.uuid4().hex, plan=plan, image=image)


def submit(
    store: JobStore,
    prepared: Prepared,
    params: UpscaleParams,
    *,
    owner: str,
    owner_name: str,
    timeout: float,
    estimate: float | None = None,
    callback_url: str | None = None,
) -> int:
    """Record a prepared job (``pending``) with its input in the store (one transaction);
    ``estimate`` is its estimated seconds of inference (:mod:`common.estimate`);
    ``callback_url`` (already checked) is posted the job's status when it ends. Returns
    the owner's backlog before it: groups of its other unfinished jobs not yet done (what
    the job's fair-share priorities start from).

    The job is uncommitted until the caller has queued its tasks and called
    ``store.commit``: a caller that dies in between leaves a job the janitor ends
    within :data:`COMMIT_SECONDS`."""
    backlog = store.backlog(owner)
    store.create(
        prepared.job_id,
        owner=owner,
        owner_name=owner_name,
        params=params.to_dict(),
        plan=prepared.plan.to_dict(),
        parts=prepared.plan.part_count,
        groups=prepared.plan.group_count,
        strips=prepared.strips(),
        extras=prepared.extras(),
        timeout=timeout,
        estimate=estimate,
        callback_url=callback_url,
        commit_within=COMMIT_SECONDS,
        pixels=prepared.plan.width * prepared.plan.height,
    )
    return backlog


def admit(store: JobStore, settings: Settings, owner: str, prepared: Prepared) -> None:
    """Check the token's limits before a job is recorded: jobs in flight
    (``token_max_jobs``) and input pixels in the last hour (``token_pixels_per_hour``).

    Raises:
        QuotaExceeded: over a limit for now (``detail["retry_after"]``: seconds).
        ImageTooLarge: the image alone is over the hourly pixel budget (never admitted).
    """
    pixels = prepared.plan.width * prepared.plan.height
    refusal = store.admit(owner, pixels, settings.token_max_jobs, settings.token_pixels_per_hour)
    if refusal is None:
        return
    if refusal.retry_after is None:
        raise ImageTooLarge(
            f"the image's {pixels} pixels are over this token's budget of {refusal.limit} "
            "input pixels per hour",
            pixels=pixels,
            limit=refusal.limit,
        )
    retry = int(-(-refusal.retry_after // 1))
    if refusal.reason == "jobs":
        message = f"this token has {refusal.used} jobs unfinished, its limit; retry in {retry} s"
    else:
        message = (
            f"this token submitted {refusal.used} input pixels in the last hour; this image's "
            f"{pixels} would pass its budget of {refusal.limit}; retry in {retry} s"
        )
    raise QuotaExceeded(
        message, limit=refusal.reason, allowed=refusal.limit, used=refusal.used, retry_after=retry
    )


def estimate_job(
    store: JobStore, registry: Registry, plan: JobPlan, processes: int
) -> estimate.Estimate:
    """The plan's inference time on the ``processes`` tile processes up, from the speeds
    the workers up measured (see :mod:`common.estimate` for the formula)."""
    workers = store.worker_speeds()
    figures: dict[str, float] = {}
    for name in {plan.model, *(m for _, speeds in workers.values() for m in speeds)}:
        # a worker's model this API does not know has no figure to scale by
        with contextlib.suppress(UnknownModel):
            figures[name] = registry.get(name).cpu_seconds_per_megapixel
    speed, basis = estimate.seconds_per_megapixel(plan.model, figures, workers)
    return estimate.estimate(plan, speed, basis, processes)


def window_read(plan: JobPlan, part: int) -> WindowRead:
    """Where part ``part``'s input window lies in its plane's column strip."""
    plane, tile = plan.locate(part)
    tiles = plan.tiles
    columns = len(plan.column_origins)
    row_bytes = tiles.window_width * 3 * plan.numpy_dtype.itemsize
    first = tile.window_y * row_bytes
    return WindowRead(
        part, plane, tile.index % columns, first, first + tiles.window_height * row_bytes - 1
    )


class PlanCache:
    """A worker process's parsed plans, by job id (a job's plan never changes).

    Parsing a plan and listing its tiles is paid once per process per job, not
    once per task, so a task's cost does not grow with its job's tile count.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._plans: OrderedDict[str, JobPlan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: JobStore, job_id: str) -> JobPlan | None:
        """The job's plan, from the store on first use; ``None`` for no such job."""
        with self._lock:
            plan = self._plans.get(job_id)
            if plan is not None:
                self._plans.move_to_end(job_id)
                return plan
        raw = store.plan_of(job_id)
        if raw is None:
            return None
        plan = JobPlan.from_dict(raw)
        plan.column_origins  # noqa: B018  (the tile grid: computed once here, not in every task)
        with self._lock:
            self._plans[job_id] = plan
            while len(self._plans) > self.size:
                self._plans.popitem(last=False)
        return plan


def run_group(
    store: JobStore,
    settings: Settings,
    job_id: str,
    group: int,
    worker: str,
    plans: PlanCache,
    *,
    stitch_here: bool = False,
) -> bool:
    """Infer every part of task ``group`` and store their integer cores; skip a finished job.

    Returns whether the caller must ask for the stitch: this call landed the
    job's last part and ``stitch_here`` is false. With ``stitch_here`` (a worker
    that takes stitches anyway) the stitch runs in this call instead, from the
    cores in memory plus the other groups' from the store, which saves a message
    and a read of this group's cores; a job of one group then stores no cores at
    all; the group that starts last also reads the cores already landed while it
    infers (:mod:`common.cluster.prefetch`). If the process dies meanwhile, the
    unacknowledged task is delivered
    again and redoes it. Ends the job ``failed`` when it is past its deadline
    (``timeout``) or when a part of the group has been delivered more than
    ``settings.max_deliveries`` times (a tile that kills its worker every time).

    Raises:
        ValueError: ``group`` is not a group of the job (a malformed message).
    """
    plan = plans.get(store, job_id)
    if plan is None:
        return False
    reads = [window_read(plan, part) for part in plan.group_parts(group)]
    start = store.begin_group(job_id, reads, f"{worker}:{os.getpid()}", settings.max_deliveries)
    if start.status is None or start.status.finished:
        return False
    if start.already_done:
        # a duplicate; or the redelivery of a task whose process died stitching: stitch again
        if start.landed and stitch_here:
            stitch(store, settings, job_id)
        return start.landed and not stitch_here
    if start.windows is None and time.time() > start.deadline:
        store.fail(job_id, "timeout", "the job ran past its timeout")
        return False
    if start.windows is None:
        store.fail(
            job_id,
            "poison_tile",
            f"tile {start.worst_part} was started {start.deliveries - 1} times and never "
            "finished (it stops the worker that runs it)",
        )
        return False
    if not all(start.windows):  # the job ended (and dropped its input) meanwhile, or
        problem = store.misplaced(job_id)  # its input is where this worker does not look
        if problem is not None:
            log.error("job %s: %s", job_id, problem)
            store.fail(job_id, "misconfigured", problem)
        return False
    prefetch = None
    if stitch_here and plan.group_count > 1 and start.started_parts >= plan.part_count:
        # the last group to start: it likely lands last and stitches (see common.cluster.prefetch)
        prefetch = CorePrefetch(
            store, job_id, plan, skip=plan.group_parts(group), limit=STITCH_BYTES
        )
    tiles = plan.tiles
    shape = (tiles.window_height, tiles.window_width, 3)
    try:
        engine = get_engine(plan.model, settings, _registry(settings, store))
    except (ModelError, UnknownModel) as error:
        # no retry: another delivery here would fail the same way, and the message says why
        log.error("job %s: model %s: %s", job_id, plan.model, error)
        store.fail(
            job_id,
            "model_unavailable",
            f"worker {worker} cannot load model {plan.model!r}: {error.message}",
        )
        return False
    _report_once(store, worker, plan.model, engine)
    windows = [np.frombuffer(data, plan.numpy_dtype).reshape(shape) for data in start.windows]
    batch = windows_per_run(shape, engine.provider)
    outputs = []
    seconds: list[float] = []
    for first in range(0, len(reads), batch):
        began = time.perf_counter()
        results = infer_windows(engine, windows[first : first + batch])
        for read, output in zip(reads[first : first + batch], results, strict=True):
            plane, tile = plan.locate(read.part)
            channels = plan.plane_channels(plan.planes[plane])
            core = tiling.tile_core(
                tiles, tile, output, plan.model_scale, channels, plan.numpy_dtype
            )
            outputs.append((read.part, core.tobytes()))  # C order, whatever core's strides
        # the windows of one engine call finish together: each is charged an equal share
        ran = len(results)
        seconds += [(time.perf_counter() - began) / ran] * ran
    pixels = len(windows) * tiles.window_width * tiles.window_height
    _report_speed(store, worker, plan.model, sum(seconds), pixels)
    whole_job = stitch_here and len(outputs) == plan.part_count
    _, landed = while_refused(
        lambda: store.record_outputs(
            job_id, outputs, worker, model=plan.model, seconds=seconds, keep=not whole_job
        )
    )
    if whole_job or (landed and stitch_here):
        known = dict(prefetch.result()) if prefetch is not None else {}
        known.update(outputs)
        stitch(store, settings, job_id, known=known)
        return False
    return landed


_registries: weakref.WeakKeyDictionary[JobStore, Registry] = weakref.WeakKeyDictionary()


def _registry(settings: Settings, store: JobStore) -> Registry:
    """The registry of ``store``'s cluster (one per store: a worker process has one)."""
    registry = _registries.get(store)
    if registry is None or registry.settings is not settings:
        registry = _registries[store] = Registry(settings, ClusterModels.from_store(store))
    return registry


WRITE_RETRY_SECONDS = 60.0
"""How long a worker holding inferred tiles retries a write that Redis refuses for a
passing reason (:func:`~common.cluster.store.refused_for_now`) before giving up the task
(its message is then delivered again)."""

_T = TypeVar("_T")


def while_refused(write: Callable[[], _T]) -> _T:
    """``write()``, retried each second while Redis refuses it for a passing reason, up to
    :data:`WRITE_RETRY_SECONDS`: the group's work is kept, no delivery is spent. (Giving
    the message back instead would not do: Celery's own reject writes to Redis too, and
    its worker exits when that is refused.)"""
    give_up = time.monotonic() + WRITE_RETRY_SECONDS
    while True:
        try:
            return write()
        except redis.ResponseError as error:
            if not refused_for_now(error) or time.monotonic() > give_up:
                raise
            log.warning("Redis refuses writes (%s); retrying", error)
            time.sleep(1.0)


SPEED_WEIGHT = 0.3
"""Weight of the newest group in a process's smoothed seconds per megapixel (the first run
of a session is slower; one slow group should not swing the estimates of the next jobs)."""

_speeds: dict[tuple[str, str], float] = {}


def _report_speed(store: JobStore, worker: str, model: str, seconds: float, pixels: int) -> None:
    """Smooth this process's seconds per inferred megapixel of ``model`` and publish it."""
    if pixels <= 0:
        return
    measured = seconds / (pixels / 1e6)
    previous = _speeds.get((worker, model))
    speed = measured if previous is None else previous + SPEED_WEIGHT * (measured - previous)
    _speeds[(worker, model)] = speed
    store.report_speed(worker, model, speed)


BATCH_PIXELS = 1 << 18
"""Window pixels run through the engine in one call: small windows go together (a call has
a fixed cost), a large window goes alone (activations grow with the batch)."""


PARALLEL_PROVIDERS = {"openvino-cpu": 2, "cuda": MAX_GROUP, "tensorrt": MAX_GROUP}
"""Windows an engine runs better together than one by one, whatever their size: OpenVINO's
THROUGHPUT mode keeps two inference streams busy (1.42-1.48x one at a time on a Xeon, a tie
on Zen 2); a GPU batches equal windows."""


def windows_per_run(shape: tuple[int, ...], provider: str = "cpu") -> int:
    """How many windows of ``shape`` (h, w, c) to infer in one engine call on ``provider``."""
    by_size = max(1, BATCH_PIXELS // (shape[0] * shape[1]))
    return max(by_size, PARALLEL_PROVIDERS.get(provider, 1))


_reported: set[tuple[str, str]] = set()


def _report_once(store: JobStore, worker: str, model: str, engine: Engine) -> None:
    """Tell the store (once per process and model) which engine this worker runs."""
    if (worker, model) not in _reported:
        described = engine.describe()
        log.info("worker %s runs %s with %s", worker, model, described)
        store.report_engine(worker, model, described)
        _reported.add((worker, model))


class TilesPending(Exception):
    """The stitch ran before every part was done (a stitch sent twice, or by hand, came early)."""


def stitch(
    store: JobStore,
    settings: Settings,
    job_id: str,
    *,
    known: Mapping[int, bytes] | None = None,
) -> bool:
    """Assemble, post-process and encode a job's result; returns whether this call ended the job.

    ``known`` holds cores already in memory (by part), read from the store only
    when absent (a job of one group, stitched where it ran, stores none).

    Raises:
        TilesPending: some parts are not done yet; try again shortly.
    """
    known = known or {}
    record = store.get(job_id)
    if record is None or record.status.finished:
        return False
    if time.time() > record.deadline:
        store.fail(job_id, "timeout", "the job ran past its timeout")
        return False
    if record.done < record.parts:
        raise TilesPending(f"{record.done} of {record.parts} tiles done")
    attempts = store.begin_stitch(job_id)
    if attempts > settings.max_deliveries:
        store.fail(
            job_id,
            "stitch_failed",
            f"the stitch was started {attempts - 1} times and never finished (its process "
            "died: out of memory?)",
        )
        return False
    plan = JobPlan.from_dict(record.plan)
    tiles = plan.tiles
    canvases = []
    for p, plane in enumerate(plan.planes):
        channels = plan.plane_channels(plane)
        canvas = tiling.Canvas(tiles, plan.model_scale, channels, plan.numpy_dtype)
        largest = max(t.width * t.height for t in tiles.tiles) * plan.model_scale**2
        chunk = max(1, STITCH_BYTES // (largest * channels * plan.numpy_dtype.itemsize))
        for start in range(0, len(tiles), chunk):
            group = tiles.tiles[start : start + chunk]
            parts = [plan.part(p, t) for t in group]
            stored = iter(store.read_outputs(job_id, [n for n in parts if n not in known]))
            for tile, part in zip(group, parts, strict=True):
                data = known[part] if part in known else next(stored)
                shape = (tile.height * plan.model_scale, tile.width * plan.model_scale, channels)
                if data is None or len(data) != np.prod(shape) * plan.numpy_dtype.itemsize:
                    if store.status(job_id) in (JobStatus.PENDING, JobStatus.PROCESSING):
                        store.fail(job_id, "lost_tile", f"the output of tile {part} is missing")
                    return False
                canvas.paste(tile, np.frombuffer(data, plan.numpy_dtype).reshape(shape))
        canvases.append(canvas.pixels)
    alpha_data = store.read_extra(job_id, "alpha")
    alpha = unpack_array(alpha_data) if alpha_data is not None else None
    pixels = assemble(plan, canvases, alpha)
    encoded = encode_result(
        pixels,
        plan,
        settings,
        icc=store.read_extra(job_id, "icc"),
        exif=store.read_extra(job_id, "exif"),
    )
    output: dict[str, Any] = {
        "size": len(encoded),
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "format": plan.format,
        "content_type": content_type(plan.format),
    }
    try:
        return store.succeed(job_id, encoded, output)
    except ResultTooLarge as error:
        log.error("job %s: %s", job_id, error.message)
        store.fail(job_id, "result_too_large", error.message)
        return False


def unstitched(
    store: JobStore, grace: float, now: float | None = None, lease: float = 0.0
) -> list[str]:
    """Ids of unfinished jobs whose tiles all landed over ``grace`` seconds ago, unstitched.

    The task that lands the last part sends the stitch; if it died first, or the
    message was lost, every tile is done and no stitch comes. The janitor sends
    those jobs a stitch again (stitching twice is harmless: ``success`` is
    final), and records when, so it asks once per ``grace``; nor while a stitch started
    less than ``lease`` seconds ago may still be running (every start counts towards the
    job's ``max_deliveries``).
    """
    now = time.time() if now is None else now
    ids = store.unfinished()
    found = []
    marks = zip(ids, store.stitch_marks(ids), store.stitching_since(ids), strict=True)
    for job_id, (landed, asked), began in marks:
        if landed is None or now - landed < grace:
            continue
        if asked is not None and now - asked < grace:
            continue
        if began is not None and now - began < lease:
            continue
        store.mark_stitch_requested(job_id, now)
        found.append(job_id)
    return found


def reap(store: JobStore, now: float | None = None) -> list[str]:
    """End every unfinished job past its deadline ``failed``; returns their ids.

    A job is past its deadline when its timeout ran out, whether its tiles are
    still queued or its stitch never fired (a lost tile result): either way it
    would otherwise stay ``processing`` forever.
    """
    ended = []
    for job_id in store.overdue(now):
        record = store.get(job_id)
        if record is None:
            store.forget(job_id)
            continue
        if not record.committed:
            reason = "the API stopped before it had queued the job's tiles"
            if store.fail(job_id, "queue_error", reason):
                ended.append(job_id)
            continue
        if record.done >= record.parts:
            reason = "every tile finished but the stitch never ran"
        else:
            reason = f"the job ran past its timeout with {record.done} of {record.parts} tiles done"
        if store.fail(job_id, "timeout", reason):
            ended.append(job_id)
    return ended
