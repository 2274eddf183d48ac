"""Reading a job's landed output cores while its last group still infers.

The worker that lands a job's last part stitches it, and the stitch first reads
every other group's cores from Redis: on 2 hosts of 1 core with a 1280x720
photo that read was a third of the stitch, and over a 1 Gbit link most of it
(measured in ``bench/scaleout.py``). The group that starts last usually lands
last, so when it starts (:attr:`~common.cluster.store.GroupStart.started_parts`
says every part has been started), a thread reads the cores already landed
while the engine runs; the stitch then reads only what landed since. It is only
a read ahead: if this group does not land last, what was read is dropped.
"""

from __future__ import annotations

import logging
import threading

from common.cluster.store import JobStore
from common.pipeline import JobPlan

log = logging.getLogger(__name__)


def core_bytes(plan: JobPlan, part: int) -> int:
    """Bytes of one part's output core (its tile's core at the model's scale, its plane's channels)."""
    plane, tile = plan.locate(part)
    channels = plan.plane_channels(plan.planes[plane])
    pixels = tile.width * tile.height * plan.model_scale**2
    return pixels * channels * plan.numpy_dtype.itemsize


class CorePrefetch:
    """Reads, in a daemon thread, the cores of the job's parts already done but ``skip``,
    lowest part first, up to ``limit`` bytes; :meth:`result` waits for them.

    A failed read gives an empty result (the stitch reads what it lacks itself).
    """

    def __init__(
        self, store: JobStore, job_id: str, plan: JobPlan, skip: range, limit: int
    ) -> None:
        self._cores: dict[int, bytes] = {}
        self._thread = threading.Thread(
            target=self._read,
            args=(store, job_id, plan, skip, limit),
            name="srcluster-prefetch",
            daemon=True,
        )
        self._thread.start()

    def _read(self, store: JobStore, job_id: str, plan: JobPlan, skip: range, limit: int) -> None:
        try:
            parts, total = [], 0
            for part in sorted(store.done_parts(job_id)):
                if part in skip:
                    continue
                total += core_bytes(plan, part)
                if total > limit:
                    break
                parts.append(part)
            values = store.read_outputs(job_id, parts)
            self._cores = {p: v for p, v in zip(parts, values, strict=True) if v is not None}
        except Exception:  # a read ahead only: the stitch reads these itself
            log.warning("prefetch of job %s's cores failed", job_id, exc_info=True)

    def result(self) -> dict[int, bytes]:
        """The cores read (part -> raw bytes), once the read has ended."""
        self._thread.join()
        return self._cores
