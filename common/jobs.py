"""The cluster's three steps, framework-free: prepare (API), run a tile and stitch (worker).

They call the same functions as :func:`common.pipeline.run_plan`, in the same
order, so a job run across hosts gives the local pipeline's pixels exactly.
The Celery tasks and Flask routes only move arguments to and from here.

Every step is safe to repeat (Celery redelivers after a worker dies): a tile
rewrites the same output key and re-adds the same index to the done set; a
stitch stores a result and ends the job only once (the status transition is
atomic and ``success`` is final).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from common import tiling
from common.engine import get_engine
from common.imageio import Image, content_type, decode, encode
from common.models import Registry
from common.params import UpscaleParams
from common.pipeline import (
    JobPlan,
    check_bytes,
    finish,
    infer_windows,
    make_plan,
    plane_inputs,
    uninferred_alpha,
)
from common.settings import Settings
from common.store import ACTIVE, JobStatus, JobStore, pack_array, unpack_array

STITCH_CHUNK = 16
"""Output cores fetched from Redis at a time while stitching (bounds the stitch's memory)."""


@dataclass
class Prepared:
    """A validated, planned job ready to be recorded: its plan and its input windows."""

    job_id: str
    plan: JobPlan
    image: Image

    def inputs(self) -> Iterator[tuple[int, bytes]]:
        """``(task, npy bytes)`` for every task, made lazily (one window in memory at a time)."""
        tiles = self.plan.tiles
        for p, extended in enumerate(plane_inputs(self.image.pixels, self.plan)):
            for tile in tiles.tiles:
                yield p * len(tiles) + tile.index, pack_array(tiling.window(extended, tiles, tile))

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


def prepare(
    data: bytes,
    params: UpscaleParams,
    settings: Settings,
    registry: Registry,
    workers: int = 1,
) -> Prepared:
    """Validate and plan one upload; nothing is stored yet.

    Raises:
        ImageTooLarge, UnsupportedImage: the bytes are too many or not a usable image.
        UnknownModel, BadParameter: see :func:`common.pipeline.make_plan`.
    """
    check_bytes(data, settings)
    spec = registry.get(params.model)
    image = decode(data, settings.max_pixels)
    plan = make_plan(image, params, spec, settings, workers=max(1, workers))
    return Prepared(job_id=uuid.uuid4().hex, plan=plan, image=image)


def submit(
    store: JobStore,
    prepared: Prepared,
    params: UpscaleParams,
    *,
    owner: str,
    owner_name: str,
    timeout: float,
) -> None:
    """Record a prepared job (``pending``) with its input windows in the store."""
    store.create(
        prepared.job_id,
        owner=owner,
        owner_name=owner_name,
        params=params.to_dict(),
        plan=prepared.plan.to_dict(),
        inputs=prepared.inputs(),
        extras=prepared.extras(),
        timeout=timeout,
    )


def tile_result(job_id: str, task: int) -> str:
    """What a tile task returns: deterministic, so a redelivered tile returns the same."""
    return f"{job_id}:{task}"


def run_tile(store: JobStore, settings: Settings, job_id: str, task: int, worker: str) -> str:
    """Infer one task of a job and store its integer core; skip work a finished job no longer needs.

    Ends the job ``failed`` when it is past its deadline (``timeout``) or when this
    task has been delivered more than ``settings.max_deliveries`` times (a tile
    that kills its worker every time).
    """
    record = store.get(job_id)
    if record is None or record.status.final:
        return tile_result(job_id, task)
    if time.time() > record.deadline:
        store.fail(job_id, "timeout", "the job ran past its timeout")
        return tile_result(job_id, task)
    deliveries = store.count_delivery(job_id, task, f"{worker}:{os.getpid()}")
    if deliveries > settings.max_deliveries:
        store.fail(
            job_id,
            "poison_tile",
            f"tile {task} was started {deliveries - 1} times and never finished "
            "(it stops the worker that runs it)",
        )
        return tile_result(job_id, task)
    store.start(job_id)
    data = store.read_input(job_id, task)
    if data is None:  # the job ended (and dropped its tiles) while this task waited
        return tile_result(job_id, task)
    plan = JobPlan.from_dict(record.plan)
    tiles = plan.tiles
    plane = plan.planes[task // len(tiles)]
    tile = tiles.tiles[task % len(tiles)]
    output = infer_windows(get_engine(plan.model, settings), [unpack_array(data)])[0]
    core = tiling.tile_core(
        tiles, tile, output, plan.model_scale, plan.plane_channels(plane), plan.numpy_dtype
    )
    store.finish_task(job_id, task, pack_array(core), worker)
    return tile_result(job_id, task)


class NotReady(Exception):
    """The stitch ran before every tile was done (a redelivered tile fired the chord early)."""


def stitch(store: JobStore, settings: Settings, job_id: str) -> bool:
    """Assemble, post-process and encode a job's result; returns whether this call ended the job.

    Raises:
        NotReady: some tiles are not done yet; try again shortly.
    """
    record = store.get(job_id)
    if record is None or record.status.final:
        return False
    if time.time() > record.deadline:
        store.fail(job_id, "timeout", "the job ran past its timeout")
        return False
    if record.done < record.tasks:
        raise NotReady(f"{record.done} of {record.tasks} tiles done")
    plan = JobPlan.from_dict(record.plan)
    tiles = plan.tiles
    canvases = []
    for p, plane in enumerate(plan.planes):
        canvas = tiling.Canvas(
            tiles, plan.model_scale, plan.plane_channels(plane), plan.numpy_dtype
        )
        first = p * len(tiles)
        for start in range(0, len(tiles), STITCH_CHUNK):
            group = tiles.tiles[start : start + STITCH_CHUNK]
            keys = [store.key(job_id, "out", first + t.index) for t in group]
            for tile, data in zip(group, store.redis.mget(keys), strict=True):
                if data is None:
                    if store.status(job_id) in (JobStatus.PENDING, JobStatus.PROCESSING):
                        store.fail(
                            job_id,
                            "lost_tile",
                            f"the output of tile {first + tile.index} is missing",
                        )
                    return False
                canvas.paste(tile, unpack_array(data))
        canvases.append(canvas.pixels)
    alpha_data = store.read_extra(job_id, "alpha")
    alpha = unpack_array(alpha_data) if alpha_data is not None else None
    pixels = finish(plan, canvases, alpha)
    encoded = encode(
        pixels,
        plan.format,
        icc=store.read_extra(job_id, "icc"),
        exif=store.read_extra(job_id, "exif"),
        jpeg_quality=settings.jpeg_quality,
        webp_quality=settings.webp_quality,
    )
    output: dict[str, Any] = {
        "size": len(encoded),
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "format": plan.format,
        "content_type": content_type(plan.format),
    }
    ended = store.succeed(job_id, encoded, output)
    if ended:
        store.redis.hincrby(store.key(job_id), "stitches", 1)
    return ended


def unstitched(store: JobStore, grace: float, now: float | None = None) -> list[str]:
    """Ids of unfinished jobs whose tiles all landed over ``grace`` seconds ago, unstitched.

    Celery's chord fires the stitch from its own bookkeeping in the result backend;
    a Redis restart or a result that could not be stored leaves it unable to fire
    (``ChordError``) though every tile is done. The janitor sends those jobs a
    stitch again (stitching twice is harmless: ``success`` is final), and records
    when, so it asks once per ``grace``.
    """
    now = time.time() if now is None else now
    ids = store.unfinished()
    pipe = store.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(store.key(job_id), "completed", "stitch_requested")
    found = []
    for job_id, (completed, asked) in zip(ids, pipe.execute() if ids else [], strict=True):
        if completed is None or now - float(completed) < grace:
            continue
        if asked is not None and now - float(asked) < grace:
            continue
        store.redis.hset(store.key(job_id), "stitch_requested", now)
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
            store.redis.zrem(ACTIVE, store.key(job_id))
            continue
        if record.done >= record.tasks:
            reason = "every tile finished but the stitch never ran"
        else:
            reason = f"the job ran past its timeout with {record.done} of {record.tasks} tiles done"
        if store.fail(job_id, "timeout", reason):
            ended.append(job_id)
    return ended
