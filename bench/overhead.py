"""The cluster's own cost per tile, with a stand-in engine that costs almost nothing.

    .venv/bin/python bench/overhead.py [--size 2048x2048] [--tile 32] [--photo 3840x2160]
    .venv/bin/python bench/overhead.py --blobs redis,redis-no-aof,file,s3

Starts an embedded Redis (AOF on, as ``srcluster up`` runs it), the API under
gunicorn and one worker process, registers a stand-in model (ONNX ``Resize``
nearest x4: real ONNX Runtime, real tiles, next to no arithmetic) and measures,
side by side in one run:

- tiles per second through one worker, from the job's first part started to its
  last part landed (``started`` -> ``landed`` in the job record), for the same
  image with tile groups (the planner's choice) and with one part per task;
- that rate for a quarter of the tiles too: with groups, a task's cost should not
  grow with its job's tile count;
- the Redis server's CPU time per tile over each job (submit to download), which
  bounds how many tiles per second one Redis can carry for all its workers;
- ``POST /sr`` latency of a 4K photo-like JPEG with the default compact model
  (decode, plan, store the input strips, queue the groups).

With ``--blobs`` it compares where the tile and result bytes live instead, side
by side, on real-size tiles: a 4K JPEG at tile 256, pad 32 (realesrgan-x4plus's
pad; its x4 output cores are 3 MiB each), one job per backend (after a warm-up
job), each on a fresh Redis: ``redis`` (bytes in Redis, AOF on),
``redis-no-aof``, ``file`` (a folder) and ``s3`` (the S3 server of
``tests/s3.py``: MinIO when installed, else moto's, as its own process). Per
tile over the whole job (submit, every group, stitch, download): Redis's CPU by
its own accounting (``INFO cpu``), the bytes into and out of Redis (``INFO
stats``), and how many such tiles one Redis could carry at that CPU cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.local_pipeline import photo_like  # noqa: E402
from common.cluster.embedded import EmbeddedRedis  # noqa: E402
from common.cluster.store import JobStore  # noqa: E402
from common.imageio import encode  # noqa: E402
from common.models import Registry  # noqa: E402
from common.settings import Settings  # noqa: E402
from srcluster.client import Client  # noqa: E402
from tests import s3  # noqa: E402
from tests.cluster import ApiServer, WorkerProcess  # noqa: E402
from tests.stand_in import STAND_IN, stand_in_model  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tiles_per_second(
    client: Client, store: JobStore, data: bytes, tile: int, pad: int, redis_pid: int
) -> tuple[float, int, float]:
    """Parts per second from the job's first part started to its last part landed, the
    job's tasks, and the Redis server's CPU milliseconds per part over the whole job
    (submit, every group, the stitch and the download)."""
    before = cpu_seconds(redis_pid)
    job = client.submit(data, model=STAND_IN, tile_size=tile, tile_pad=pad, format="png")
    body = client.wait(job, timeout=900, interval=0.05)
    if body["status"] != "success":
        raise RuntimeError(body)
    client.download(job)
    redis_ms = (cpu_seconds(redis_pid) - before) * 1000
    record = store.get(job)
    assert record is not None and record.started is not None and record.landed is not None
    return record.parts / (record.landed - record.started), record.groups, redis_ms / record.parts


BLOB_BACKENDS = ("redis", "redis-no-aof", "file", "s3")


@dataclasses.dataclass
class BlobRun:
    """One job's cost to Redis, with its bytes in one backend."""

    tiles: int
    tasks: int
    rate: float
    """Parts per second through the one worker (first part started to last landed)."""
    cpu_ms: float
    """Redis CPU milliseconds per tile (``used_cpu_user`` + ``used_cpu_sys``)."""
    bytes_in: float
    bytes_out: float
    """Bytes per tile into and out of Redis (``total_net_input_bytes`` / ``..._output_bytes``)."""


def redis_counters(store: JobStore) -> tuple[float, int, int]:
    """Redis's own CPU seconds so far, and its network bytes in and out."""
    cpu = store.redis.info("cpu")
    net = store.redis.info("stats")
    seconds = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return seconds, int(net["total_net_input_bytes"]), int(net["total_net_output_bytes"])


def blob_job(client: Client, store: JobStore, data: bytes, tile: int, pad: int) -> BlobRun:
    before = redis_counters(store)
    job = client.submit(
        data, filename="photo.jpg", model=STAND_IN, tile_size=tile, tile_pad=pad, format="jpg"
    )
    body = client.wait(job, timeout=1800, interval=0.25)
    if body["status"] != "success":
        raise RuntimeError(body)
    client.download(job)
    after = redis_counters(store)
    record = store.get(job)
    assert record is not None and record.started is not None and record.landed is not None
    n = record.parts
    return BlobRun(
        n,
        record.groups,
        n / (record.landed - record.started),
        (after[0] - before[0]) * 1000 / n,
        (after[1] - before[1]) / n,
        (after[2] - before[2]) / n,
    )


def compare_blobs(args: argparse.Namespace, base: Settings, folder: Path) -> None:
    """``--blobs``: the same real-size job with its bytes in each backend, side by side."""
    width, height = (int(v) for v in args.size.split("x"))
    image = encode(photo_like(width, height), "jpeg")
    warm = encode(photo_like(width // 2, height // 2), "jpeg")
    names = [n.strip() for n in args.blobs.split(",") if n.strip()]
    unknown = set(names) - set(BLOB_BACKENDS)
    if unknown:
        raise SystemExit(f"--blobs: unknown {sorted(unknown)}; choose from {BLOB_BACKENDS}")
    server = None
    if "s3" in names:
        reason = s3.unavailable()
        if reason:
            print(f"s3 left out: {reason}")
            names.remove("s3")
        else:
            server = s3.start(folder / "s3")
    runs: dict[str, BlobRun] = {}
    try:
        for name in names:
            with EmbeddedRedis(
                folder / f"redis-{name}", appendonly=name != "redis-no-aof"
            ) as redis:
                settings = dataclasses.replace(base, redis_url=redis.url)
                if name == "file":
                    settings = dataclasses.replace(settings, blob_url=(folder / "blobs").as_uri())
                if name == "s3" and server is not None:
                    settings = dataclasses.replace(
                        settings,
                        blob_url=f"s3://{s3.BUCKET}/bench",
                        s3_endpoint_url=server.endpoint_url,
                    )
                store = JobStore.from_settings(settings)
                api = ApiServer(settings, folder).wait_ready()
                worker = WorkerProcess(settings, name, folder).wait_ready()
                client = Client(api.url, TOKEN, timeout=600)
                try:
                    blob_job(client, store, warm, args.tile, args.pad)
                    runs[name] = blob_job(client, store, image, args.tile, args.pad)
                finally:
                    client.close()
                    worker.stop()
                    api.stop()
                    store.close()
    finally:
        if server is not None:
            server.stop()
    core = (args.tile * 4) ** 2 * 3
    first = next(iter(runs.values()))
    print(
        f"stand-in engine ({STAND_IN}), {width}x{height} JPEG at tile {args.tile} pad {args.pad}: "
        f"{first.tiles} tiles in {first.tasks} tasks, {core / 2**20:.2f} MiB output core per tile"
        + (f"; S3 server: {server.kind}" if server is not None else "")
    )
    baseline = runs.get("redis", first)
    print(
        f"  {'bytes kept in':14} {'worker tiles/s':>14} {'Redis CPU ms/tile':>18} "
        f"{'one Redis, tiles/s':>19} {'x vs redis':>10} {'Redis KiB/tile in':>18} {'out':>9}"
    )
    for name, run in runs.items():
        print(
            f"  {name:14} {run.rate:14.1f} {run.cpu_ms:18.3f} {1000 / run.cpu_ms:19.0f} "
            f"{baseline.cpu_ms / run.cpu_ms:10.1f} {run.bytes_in / 1024:18.1f} "
            f"{run.bytes_out / 1024:9.1f}"
        )


def post_latency(client: Client, data: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        job = client.submit(data, filename="photo.jpg", model="realesr-animevideov3")
        times.append(time.perf_counter() - start)
        client.cancel(job)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", help="image of the tile-rate runs (2048x2048; with --blobs 3840x2160)"
    )
    parser.add_argument("--tile", type=int, help="tile size (32; with --blobs 256)")
    parser.add_argument("--photo", default="3840x2160", help="JPEG of the POST latency run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pad", type=int, help="tile pad of the tile-rate runs (4; --blobs 32)")
    parser.add_argument("--no-aof", action="store_true", help="Redis without its append-only file")
    parser.add_argument("--groups-only", action="store_true", help="skip one part per task")
    parser.add_argument(
        "--blobs", help=f"compare where tile bytes live instead: some of {','.join(BLOB_BACKENDS)}"
    )
    args = parser.parse_args()
    real = args.blobs is not None
    args.size = args.size or ("3840x2160" if real else "2048x2048")
    args.tile = args.tile or (256 if real else 32)
    args.pad = args.pad if args.pad is not None else (32 if real else 4)
    width, height = (int(v) for v in args.size.split("x"))
    photo_w, photo_h = (int(v) for v in args.photo.split("x"))

    folder = Path(tempfile.mkdtemp(prefix="srcluster-overhead-"))
    base = Settings.from_env(tokens=f"bench:{TOKEN}", data_dir=folder / "data", threads=1)
    registry = Registry(base)
    registry.add(STAND_IN, stand_in_model(folder / "stand-in.onnx"))
    if real:
        compare_blobs(args, base, folder)
        return
    registry.onnx_path("realesr-animevideov3")
    big = encode(photo_like(width, height), "png")
    quarter = encode(photo_like(width // 2, height // 2), "png")
    photo = encode(photo_like(photo_w, photo_h), "jpeg")

    rates: dict[str, tuple[float, int, float]] = {}
    with EmbeddedRedis(folder / "redis", appendonly=not args.no_aof) as server:
        grouped = dataclasses.replace(base, redis_url=server.url)
        single = dataclasses.replace(grouped, parts_per_group=1)
        store = JobStore.from_url(server.url, 60)
        assert server.process is not None
        pid = server.process.pid
        runs = [("groups", grouped), ("one part per task", single)]
        for name, settings in runs[:1] if args.groups_only else runs:
            api = ApiServer(settings, folder).wait_ready()
            worker = WorkerProcess(settings, name.replace(" ", "-"), folder).wait_ready()
            client = Client(api.url, TOKEN, timeout=300)
            try:
                tiles_per_second(
                    client, store, quarter, args.tile, args.pad, pid
                )  # warm: session, plan code
                rates[name] = tiles_per_second(client, store, big, args.tile, args.pad, pid)
                rates[name + ", 1/4 of the tiles"] = tiles_per_second(
                    client, store, quarter, args.tile, args.pad, pid
                )
                if name == "groups":
                    post_latency(client, photo, 1)
                    latency = post_latency(client, photo, args.repeat)
            finally:
                client.close()
                worker.stop()
                api.stop()

    parts = -(-width // args.tile) * -(-height // args.tile)
    core = (args.tile * 4) ** 2 * 3
    print(
        f"stand-in engine ({STAND_IN}), {width}x{height} at tile {args.tile} pad {args.pad}: "
        f"{parts} tiles, {core / 2**20:.2f} MiB of output per tile, "
        f"Redis AOF {'off' if args.no_aof else 'on'}"
    )
    for name, (rate, groups, redis_ms) in rates.items():
        print(
            f"  {name:32} {rate:8.0f} tiles/s  ({groups} tasks)  Redis CPU {redis_ms:6.2f} ms/tile"
            f" (one Redis: at most {1000 / redis_ms:.0f} tiles/s)"
        )
    if "one part per task" in rates:
        ratio = rates["groups"][0] / rates["one part per task"][0]
        print(f"  groups / one part per task: {ratio:.1f}x")
    print(
        "  groups, all tiles / a quarter of them: "
        f"{rates['groups'][0] / rates['groups, 1/4 of the tiles'][0]:.2f} (1.0: cost per task flat)"
    )
    print(f"POST /sr of a {photo_w}x{photo_h} JPEG ({len(photo) // 1024} KiB): {latency:.3f} s")


if __name__ == "__main__":
    main()
