"""The cluster's steps, framework-free: prepare and submit (API), run a part and stitch (worker).

They call the same functions as :func:`common.pipeline.run_plan`, in the same
order, so a job run across hosts gives the local pipeline's pixels exactly.
The Celery tasks and Flask routes only move arguments to and from here, and
every Redis read or write goes through :class:`~common.cluster.store.JobStore`.

Every step is safe to repeat (Celery redelivers after a worker dies): a part
rewrites the same output key and re-adds the same number to the done set; a
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
from common.cluster.store import JobStatus, JobStore, pack_array, unpack_array
from common.engines import get_engine
from common.imageio import Image, content_type, decode
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

STITCH_CHUNK = 16
"""Output cores fetched from Redis at a time while stitching (bounds the stitch's memory)."""


@dataclass
class Prepared:
    """A validated, planned job ready to be recorded: its plan and its input windows."""

    job_id: str
    plan: JobPlan
    image: Image

    def inputs(self) -> Iterator[tuple[int, bytes]]:
        """``(part, npy bytes)`` for every part, made lazily (one window in memory at a time)."""
        tiles = self.plan.tiles
        for p, extended in enumerate(plane_inputs(self.image.pixels, self.plan)):
            for tile in tiles.tiles:
                yield self.plan.part(p, tile), pack_array(tiling.window(extended, tiles, tile))

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


def part_result(job_id: str, part: int) -> str:
    """What a tile task returns: deterministic, so a redelivered tile returns the same."""
    return f"{job_id}:{part}"


def run_part(store: JobStore, settings: Settings, job_id: str, part: int, worker: str) -> str:
    """Infer one part of a job and store its integer core; skip work a finished job no longer needs.

    Ends the job ``failed`` when it is past its deadline (``timeout``) or when this
    part has been delivered more than ``settings.max_deliveries`` times (a tile
    that kills its worker every time).
    """
    record = store.get(job_id)
    if record is None or record.status.finished:
        return part_result(job_id, part)
    if time.time() > record.deadline:
        store.fail(job_id, "timeout", "the job ran past its timeout")
        return part_result(job_id, part)
    deliveries = store.count_delivery(job_id, part, f"{worker}:{os.getpid()}")
    if deliveries > settings.max_deliveries:
        store.fail(
            job_id,
            "poison_tile",
            f"tile {part} was started {deliveries - 1} times and never finished "
            "(it stops the worker that runs it)",
        )
        return part_result(job_id, part)
    store.start(job_id)
    data = store.read_input(job_id, part)
    if data is None:  # the job ended (and dropped its tiles) while this part waited
        return part_result(job_id, part)
    plan = JobPlan.from_dict(record.plan)
    plane, tile = plan.locate(part)
    output = infer_windows(get_engine(plan.model, settings), [unpack_array(data)])[0]
    channels = plan.plane_channels(plan.planes[plane])
    core = tiling.tile_core(plan.tiles, tile, output, plan.model_scale, channels, plan.numpy_dtype)
    store.record_output(job_id, part, pack_array(core), worker)
    return part_result(job_id, part)


class TilesPending(Exception):
    """The stitch ran before every part was done (a redelivered tile fired the chord early)."""


def stitch(store: JobStore, settings: Settings, job_id: str) -> bool:
    """Assemble, post-process and encode a job's result; returns whether this call ended the job.

    Raises:
        TilesPending: some parts are not done yet; try again shortly.
    """
    record = store.get(job_id)
    if record is None or record.status.finished:
        return False
    if time.time() > record.deadline:
        store.fail(job_id, "timeout", "the job ran past its timeout")
        return False
    if record.done < record.parts:
        raise TilesPending(f"{record.done} of {record.parts} tiles done")
    plan = JobPlan.from_dict(record.plan)
    tiles = plan.tiles
    canvases = []
    for p, plane in enumerate(plan.planes):
        canvas = tiling.Canvas(
            tiles, plan.model_scale, plan.plane_channels(plane), plan.numpy_dtype
        )
        for start in range(0, len(tiles), STITCH_CHUNK):
            group = tiles.tiles[start : start + STITCH_CHUNK]
            parts = [plan.part(p, t) for t in group]
            for tile, part, data in zip(
                group, parts, store.read_outputs(job_id, parts), strict=True
            ):
                if data is None:
                    if store.status(job_id) in (JobStatus.PENDING, JobStatus.PROCESSING):
                        store.fail(job_id, "lost_tile", f"the output of tile {part} is missing")
                    return False
                canvas.paste(tile, unpack_array(data))
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
    return store.succeed(job_id, encoded, output)


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
    found = []
    for job_id, (landed, asked) in zip(ids, store.stitch_marks(ids), strict=True):
        if landed is None or now - landed < grace:
            continue
        if asked is not None and now - asked < grace:
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
        if record.done >= record.parts:
            reason = "every tile finished but the stitch never ran"
        else:
            reason = f"the job ran past its timeout with {record.done} of {record.parts} tiles done"
        if store.fail(job_id, "timeout", reason):
            ended.append(job_id)
    return ended
