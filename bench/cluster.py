"""One image end to end through the cluster (API -> result) over raw whole-image ORT time, in one run.

    .venv/bin/python bench/cluster.py [--model realesr-animevideov3] [--size 640x480] [--repeat 2]

Starts an embedded Redis, the API under gunicorn and Celery workers on this
machine, then for a photo-like image measures, alternately:

- raw: the whole image in one ONNX Runtime call in this process (no tiling, no I/O);
- cluster, 1 worker: POST /sr, poll /result until success, GET the download;
- cluster, 2 workers: the same with a second worker process.

On one machine both workers share its cores, so the CPU threads are split
between them (threads = cores / workers): the 2-worker run shows the cost of
spreading an image over processes, not a speed-up; across hosts each worker
brings its own cores. Prints medians and ratios to raw.
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
from common import tiling  # noqa: E402
from common.cluster.embedded import EmbeddedRedis  # noqa: E402
from common.engines import get_engine  # noqa: E402
from common.imageio import encode  # noqa: E402
from common.models import Registry  # noqa: E402
from common.settings import Settings  # noqa: E402
from srcluster.client import Client  # noqa: E402
from tests.cluster import ApiServer, WorkerProcess  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def through_cluster(api: ApiServer, data: bytes, model: str) -> float:
    """Seconds from upload to downloaded result, polling every 20 ms."""
    client = Client(api.url, TOKEN, timeout=120)
    start = time.perf_counter()
    job = client.submit(data, filename="photo.png", model=model)
    body = client.wait(job, timeout=600, interval=0.02)
    if body["status"] != "success":
        raise RuntimeError(body)
    client.download(job)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cores = os.cpu_count() or 1

    folder = Path(tempfile.mkdtemp(prefix="srcluster-bench-"))
    base = Settings.from_env(tokens=f"bench:{TOKEN}")
    Registry(base).onnx_path(args.model)
    rgb = photo_like(width, height)
    data = encode(rgb, "png")
    engine = get_engine(args.model, dataclasses.replace(base, threads=cores))
    whole = tiling.to_unit_float(rgb[None])
    engine.run(whole)

    def raw() -> float:
        start = time.perf_counter()
        engine.run(whole)
        return time.perf_counter() - start

    with EmbeddedRedis(folder / "redis") as server:
        one = dataclasses.replace(base, redis_url=server.url, threads=cores)
        two = dataclasses.replace(one, threads=max(1, cores // 2))
        api = ApiServer(one, folder).wait_ready()
        times: dict[str, list[float]] = {"raw": [], "1 worker": [], "2 workers": []}
        try:
            first = WorkerProcess(one, "one", folder).wait_ready()
            through_cluster(api, data, args.model)  # warm: model session loaded
            for _ in range(args.repeat):
                times["raw"].append(raw())
                times["1 worker"].append(through_cluster(api, data, args.model))
            first.stop()
            workers = [WorkerProcess(two, f"two{i}", folder).wait_ready() for i in range(2)]
            through_cluster(api, data, args.model)
            for _ in range(args.repeat):
                times["raw"].append(raw())
                times["2 workers"].append(through_cluster(api, data, args.model))
            for w in workers:
                w.stop()
        finally:
            api.stop()

    raw_median = statistics.median(times["raw"])
    print(f"model {args.model}, image {width}x{height}, {cores} cores, repeats {args.repeat}")
    print(f"raw whole-image ORT ({cores} threads): {raw_median:.3f} s")
    for name in ("1 worker", "2 workers"):
        median = statistics.median(times[name])
        print(f"cluster, {name:9}: {median:.3f} s  ratio to raw {median / raw_median:.2f}")


if __name__ == "__main__":
    main()
