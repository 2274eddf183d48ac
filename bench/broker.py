"""How much one Redis carries: tiles and tile groups per second with 1, 2, 4 worker processes.

    .venv/bin/python bench/broker.py [--workers 1,2,4] [--small 2048x2048] [--big 3840x2160]

With the stand-in engine of ``bench/overhead.py`` (ONNX ``Resize`` nearest x4:
real ONNX Runtime or OpenVINO, real tiles, almost no arithmetic), so what is
measured is the cluster's own cost per tile. One embedded Redis, AOF on as
shipped; tile-only worker processes (one pool process, one thread each) and one
stitch-only worker, so every output core crosses Redis (a worker that also
stitches keeps its own group's). For each worker count:

- ``tile 32``: a ``--small`` image in 32 px tiles (pad 4), tile groups as the
  planner chooses them for that many workers; 48 KiB of output per tile;
- ``tile 32, 1 per task``: a quarter of that image with one tile per task;
- ``tile 256``: a ``--big`` (4K) photo in 256 px tiles (pad 12, the compact
  model's), real-size tiles: 3 MiB of output each;

and prints parts (tiles) and tasks per second from the job's first part started
to its last part landed, the Redis server's CPU per part over the whole job
(submit to download: one Redis core is saturated at ``1000 / ms`` parts/s),
its share of the wall time, the bytes per part on Redis's wire (both ways,
from ``INFO stats``), and Redis's memory for the 4K job: before, at its peak
(inputs plus every output core, before the stitch) and after (the result).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.local_pipeline import photo_like  # noqa: E402
from bench.overhead import STAND_IN, TOKEN, cpu_seconds, stand_in_model  # noqa: E402
from common.cluster.embedded import EmbeddedRedis  # noqa: E402
from common.cluster.store import JobStore  # noqa: E402
from common.imageio import encode  # noqa: E402
from common.models import Registry  # noqa: E402
from common.settings import Settings  # noqa: E402
from srcluster.client import Client  # noqa: E402
from tests.cluster import ApiServer, WorkerProcess  # noqa: E402

MiB = 1 << 20


@dataclasses.dataclass
class Run:
    name: str
    workers: int
    parts: int
    tasks: int
    seconds: float
    redis_ms: float
    busy: float
    wire_in: float
    wire_out: float
    memory: tuple[int, int, int] | None = None


class MemoryPeak:
    """Polls Redis's ``used_memory`` every 10 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, client: Any):
        self.client = client
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, int(self.client.info("memory")["used_memory"]))
            time.sleep(0.01)

    def __enter__(self) -> MemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def wire(client: Any) -> tuple[int, int]:
    stats = client.info("stats")
    return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


def one_job(
    name: str, workers: int, client: Client, store: JobStore, raw: Any, redis_pid: int,
    data: bytes, tile: int, pad: int, fmt: str, watch_memory: bool = False,
) -> Run:  # fmt: skip
    before_cpu, before_wire = cpu_seconds(redis_pid), wire(raw)
    began = time.monotonic()
    memory_before = int(raw.info("memory")["used_memory"])
    with MemoryPeak(raw) if watch_memory else contextlib.nullcontext() as peak:
        job = client.submit(data, model=STAND_IN, tile_size=tile, tile_pad=pad, format=fmt)
        body = client.wait(job, timeout=1800, interval=0.05)
    if body["status"] != "success":
        raise RuntimeError(f"{name}: {body}")
    client.download(job)
    wall = time.monotonic() - began
    redis_s = cpu_seconds(redis_pid) - before_cpu
    after_wire = wire(raw)
    record = store.get(job)
    assert record is not None and record.started is not None and record.landed is not None
    memory = None
    if peak is not None:
        memory = (memory_before, peak.peak, int(raw.info("memory")["used_memory"]))
    return Run(
        name,
        workers,
        record.parts,
        record.groups,
        record.landed - record.started,
        redis_s * 1000 / record.parts,
        redis_s / wall,
        (after_wire[0] - before_wire[0]) / record.parts,
        (after_wire[1] - before_wire[1]) / record.parts,
        memory,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument("--small", default="2048x2048", help="image of the 32 px tile runs")
    parser.add_argument("--big", default="3840x2160", help="image of the real-size tile run")
    parser.add_argument("--no-aof", action="store_true", help="Redis without its append-only file")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    small_w, small_h = (int(v) for v in args.small.split("x"))
    big_w, big_h = (int(v) for v in args.big.split("x"))

    folder = Path(tempfile.mkdtemp(prefix="srcluster-broker-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # its Redis files
    base = Settings.from_env(tokens=f"bench:{TOKEN}", data_dir=folder / "data", threads=1)
    Registry(base).add(STAND_IN, stand_in_model(folder / "stand-in.onnx"))
    small = encode(photo_like(small_w, small_h), "png")
    quarter = encode(photo_like(small_w // 2, small_h // 2), "png")
    big = encode(photo_like(big_w, big_h), "jpeg")
    warm = encode(photo_like(256, 256), "png")

    runs: list[Run] = []
    with EmbeddedRedis(folder / "redis", appendonly=not args.no_aof) as server:
        grouped = dataclasses.replace(base, redis_url=server.url)
        single = dataclasses.replace(grouped, parts_per_group=1)
        store = JobStore.from_url(server.url, 60)
        raw = redis.Redis.from_url(server.url)
        assert server.process is not None
        pid = server.process.pid
        apis = [ApiServer(s, folder).wait_ready() for s in (grouped, single)]
        stitcher = WorkerProcess(grouped, "stitcher", folder, queues=grouped.stitch_queue)
        clients = [Client(api.url, TOKEN, timeout=600) for api in apis]
        try:
            stitcher.wait_ready()
            for n in counts:
                workers = [
                    WorkerProcess(grouped, f"w{n}-{i}", folder, queues=grouped.tile_queue)
                    for i in range(n)
                ]
                try:
                    for w in workers:
                        w.wait_ready()
                    job = (clients[0], store, raw, pid)
                    one_job("warm", n, *job, warm, 32, 4, "png")  # sessions, plan code
                    runs.append(one_job("tile 32", n, *job, small, 32, 4, "png"))
                    runs.append(
                        one_job("tile 32, 1 per task", n, clients[1], store, raw, pid,
                                quarter, 32, 4, "png")
                    )  # fmt: skip
                    runs.append(one_job("tile 256 (4K photo)", n, *job, big, 256, 12, "jpeg", True))
                    for run in runs[-3:]:
                        show(run)
                finally:
                    for w in workers:
                        w.stop()
        finally:
            for c in clients:
                c.close()
            stitcher.stop()
            for api in apis:
                api.stop()
    print(f"\nRedis AOF {'off' if args.no_aof else 'on'}; stand-in engine {STAND_IN}")
    print(
        f"{'workers':>7}  {'run':22} {'parts':>6} {'tasks':>6} {'parts/s':>8} {'tasks/s':>8}"
        f"  {'Redis ms/part':>13} {'1 Redis core: parts/s':>21} {'Redis busy':>10}"
        f"  {'wire in/out per part':>20}"
    )
    for run in runs:
        show(run)
    for run in runs:
        if run.memory is not None:
            before, peak, after = run.memory
            print(
                f"4K job, {run.workers} worker(s): Redis memory {before / MiB:.0f} MiB before, "
                f"peak {peak / MiB:.0f} MiB (+{(peak - before) / MiB:.0f}: inputs and every "
                f"output core), {after / MiB:.0f} MiB after (the result)"
            )


def show(run: Run) -> None:
    print(
        f"{run.workers:>7}  {run.name:22} {run.parts:>6} {run.tasks:>6}"
        f" {run.parts / run.seconds:>8.0f} {run.tasks / run.seconds:>8.1f}"
        f"  {run.redis_ms:>13.2f} {1000 / run.redis_ms:>21.0f} {run.busy * 100:>9.0f}%"
        f"  {run.wire_in / 1024:>8.0f} / {run.wire_out / 1024:>6.0f} KiB",
        flush=True,
    )


if __name__ == "__main__":
    main()
