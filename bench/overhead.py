"""The cluster's own cost per tile, with a stand-in engine that costs almost nothing.

    .venv/bin/python bench/overhead.py [--size 2048x2048] [--tile 32] [--photo 3840x2160]

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

Prints ratios and the absolute rates.
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

import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.local_pipeline import photo_like  # noqa: E402
from common.cluster.embedded import EmbeddedRedis  # noqa: E402
from common.cluster.store import JobStore  # noqa: E402
from common.imageio import encode  # noqa: E402
from common.models import Registry  # noqa: E402
from common.settings import Settings  # noqa: E402
from srcluster.client import Client  # noqa: E402
from tests.cluster import ApiServer, WorkerProcess  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
STAND_IN = "stand-in-nearest-x4"


def stand_in_model(path: Path) -> Path:
    """An ONNX x4 upscaler that only repeats pixels: the engine is (almost) free."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H4", "W4"])
    scales = helper.make_tensor("s", TensorProto.FLOAT, [4], [1.0, 1.0, 4.0, 4.0])
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")
    graph = helper.make_graph([node], "stand_in", [x], [y], initializer=[scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


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
    parser.add_argument("--size", default="2048x2048", help="image of the tile-rate runs")
    parser.add_argument("--tile", type=int, default=32)
    parser.add_argument("--photo", default="3840x2160", help="JPEG of the POST latency run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pad", type=int, default=4, help="tile pad of the tile-rate runs")
    parser.add_argument("--no-aof", action="store_true", help="Redis without its append-only file")
    parser.add_argument("--groups-only", action="store_true", help="skip one part per task")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    photo_w, photo_h = (int(v) for v in args.photo.split("x"))

    folder = Path(tempfile.mkdtemp(prefix="srcluster-overhead-"))
    base = Settings.from_env(tokens=f"bench:{TOKEN}", data_dir=folder / "data", threads=1)
    registry = Registry(base)
    registry.add(STAND_IN, stand_in_model(folder / "stand-in.onnx"))
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
