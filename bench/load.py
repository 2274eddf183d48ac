"""Many small images at once through the cluster: lost jobs, duplicates, 5xx and POST latency.

    .venv/bin/python bench/load.py [-n 200] [-t 8] [--size 24] [--model realesr-animevideov3]

Starts an embedded Redis, the API under gunicorn (2 workers, 8 threads) and
two Celery worker processes (concurrency 1, one inference thread each), then
sends ``n`` distinct small photo-like PNGs concurrently from ``t`` client
threads (one :class:`srcluster.client.Client` each). Every job is then polled to a final
status and its result downloaded and compared, pixel for pixel, with the local
pipeline's output for its own input (computed in this process).

Checks: every job ``success`` (0 lost), distinct task ids and no result that
belongs to another input (0 duplicates), no result that matches no input
(0 mismatched), no 5xx reply. Prints the counts, POST /sr latency
p50/p90/p99/max, the wall time and jobs/s; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.imageio import decode, encode  # noqa: E402
from common.params import parse_params  # noqa: E402
from common.pipeline import upscale_bytes  # noqa: E402
from common.settings import Settings  # noqa: E402
from srcluster.client import Client, ServiceError, Unreachable  # noqa: E402

MODEL = "realesr-animevideov3"
TOKEN = "bench-load-token-0123456789abcdef"
FINAL = ("success", "failed", "cancelled")


def make_inputs(n: int, size: int = 24) -> list[bytes]:
    """``n`` distinct photo-like ``size`` x ``size`` RGB PNGs (gradients, a disc, a bar, noise)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    images = []
    for i in range(n):
        rng = np.random.default_rng(1000 + i)
        phase = i * 0.37
        r = 0.5 + 0.4 * np.sin(x / size * 3.1 + y / size * 1.7 + phase)
        g = (x + y + i % size) / (2 * size + size)
        cx, cy = size * (0.3 + 0.4 * rng.random()), size * (0.3 + 0.4 * rng.random())
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < (size / 4) ** 2
        b = 0.2 + 0.6 * disc
        img = np.stack([r, g, b], axis=-1)
        row = i % (size - 3)
        img[row : row + 2, :, :] = [0.05, 0.9, 0.4]
        img += rng.normal(0.0, 0.03, img.shape)
        pixels = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        images.append(encode(pixels, "png"))
    assert len({hashlib.sha256(d).digest() for d in images}) == n, "inputs are not distinct"
    return images


def local_outputs(inputs: Sequence[bytes], model: str, settings: Settings) -> list[np.ndarray]:
    """The local pipeline's decoded output for each input."""
    params = parse_params(model=model)
    return [decode(upscale_bytes(data, params, settings)[0], 1 << 30).pixels for data in inputs]


def _digest(pixels: np.ndarray) -> bytes:
    return hashlib.sha256(
        f"{pixels.dtype}{pixels.shape}".encode() + np.ascontiguousarray(pixels).tobytes()
    ).digest()


@dataclass
class LoadReport:
    """What one load run saw."""

    count: int
    post_latency: list[float]
    """Seconds of each ``POST /sr`` (every request, whatever its status)."""
    post_status: list[int]
    job_ids: list[str | None]
    final_status: dict[int, str]
    """Input index -> final status of its job (only jobs that were accepted)."""
    matched: int = 0
    """Results pixel-identical to their own input's local output."""
    crossed: list[tuple[int, int]] = field(default_factory=list)
    """(input, other input) pairs: the result is the local output of another input."""
    mismatched: list[int] = field(default_factory=list)
    """Inputs whose result matches no input's local output (or could not be downloaded)."""
    statuses: Counter[int] = field(default_factory=Counter)
    """HTTP status -> count, over every request (POST, polls, downloads)."""
    errors: list[str] = field(default_factory=list)
    """Connection errors and other client-side exceptions."""
    wall: float = 0.0
    """Seconds from the first POST until the last result was downloaded."""

    @property
    def successes(self) -> int:
        return sum(1 for s in self.final_status.values() if s == "success")

    @property
    def lost(self) -> int:
        """Images sent that did not come back as a success (refused, failed, never finished)."""
        return self.count - self.successes

    @property
    def duplicates(self) -> int:
        ids = [j for j in self.job_ids if j is not None]
        return len(ids) - len(set(ids)) + len(self.crossed)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.post_latency, q)) if self.post_latency else float("nan")

    def failures(self) -> list[str]:
        out = []
        if self.successes != self.count:
            out.append(f"{self.successes} of {self.count} jobs succeeded")
        if self.duplicates:
            out.append(f"{self.duplicates} duplicates: crossed results {self.crossed[:5]}")
        if self.mismatched:
            out.append(f"{len(self.mismatched)} results match no input: {self.mismatched[:5]}")
        if self.server_errors:
            out.append(f"{self.server_errors} 5xx replies")
        if self.errors:
            out.append(f"{len(self.errors)} client errors, first: {self.errors[0]}")
        bad = Counter(s for s in self.final_status.values() if s != "success")
        if bad:
            out.append(f"final statuses other than success: {dict(bad)}")
        return out

    def lines(self) -> list[str]:
        ms = [1000 * self.percentile(q) for q in (50, 90, 99, 100)]
        return [
            f"count {self.count}, success {self.successes}, lost {self.lost}, "
            f"duplicates {self.duplicates}, mismatched {len(self.mismatched)}, "
            f"5xx {self.server_errors}, client errors {len(self.errors)}",
            f"POST /sr latency ms: p50 {ms[0]:.1f}  p90 {ms[1]:.1f}  p99 {ms[2]:.1f}  "
            f"max {ms[3]:.1f}",
            f"HTTP statuses: {dict(sorted(self.statuses.items()))}",
            f"wall {self.wall:.2f} s, {self.successes / self.wall if self.wall else 0:.2f} jobs/s",
        ]


def run_load(
    url: str,
    token: str,
    inputs: Sequence[bytes],
    expected: Callable[[], Sequence[np.ndarray]] | Sequence[np.ndarray],
    *,
    model: str = MODEL,
    threads: int = 8,
    timeout: float = 300.0,
    poll_interval: float = 0.5,
) -> LoadReport:
    """Send every input concurrently, wait for every job, download and check every result.

    ``expected`` is the local output of each input (or a callable computing them,
    called once the load itself is over, so it does not compete with the cluster).
    """
    n = len(inputs)
    local = threading.local()
    lock = threading.Lock()
    report = LoadReport(
        count=n,
        post_latency=[0.0] * n,
        post_status=[0] * n,
        job_ids=[None] * n,
        final_status={},
    )
    clients: list[Client] = []

    def session() -> Client:
        if not hasattr(local, "client"):
            local.client = Client(url, token)
            with lock:
                clients.append(local.client)
        c: Client = local.client
        return c

    def count(status: int) -> None:
        with lock:
            report.statuses[status] += 1

    def error(what: str, exc: BaseException) -> None:
        with lock:
            report.errors.append(f"{what}: {type(exc).__name__}: {exc}")

    def post(i: int) -> None:
        start = time.perf_counter()
        try:
            job = session().submit(inputs[i], filename=f"in{i}.png", model=model)
        except ServiceError as exc:
            report.post_latency[i] = time.perf_counter() - start
            report.post_status[i] = exc.status
            count(exc.status)
            return
        except Unreachable as exc:
            report.post_latency[i] = time.perf_counter() - start
            error(f"POST {i}", exc)
            return
        report.post_latency[i] = time.perf_counter() - start
        report.post_status[i] = 202  # the only success answer of POST /sr without a wait
        count(202)
        report.job_ids[i] = job

    results: dict[int, bytes] = {}

    def poll(i: int) -> None:
        job = report.job_ids[i]
        assert job is not None
        try:
            status = session().result(job)["status"]
            count(200)
            if status not in FINAL:
                return
            if status == "success":
                results[i] = session().download(job)
                count(200)
            report.final_status[i] = status
        except ServiceError as exc:
            count(exc.status)  # polled again next round
        except Unreachable as exc:
            error(f"poll {i}", exc)

    with ThreadPoolExecutor(threads) as pool:
        begin = time.perf_counter()
        list(pool.map(post, range(n)))
        pending = [i for i in range(n) if report.job_ids[i] is not None]
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            time.sleep(poll_interval)
            list(pool.map(poll, pending))
            pending = [i for i in pending if i not in report.final_status]
        report.wall = time.perf_counter() - begin
    for c in clients:
        c.close()

    wanted = list(expected() if callable(expected) else expected)
    owner: dict[bytes, int] = {}
    for i, pixels in enumerate(wanted):
        owner.setdefault(_digest(pixels), i)
    for i in range(n):
        if report.final_status.get(i) != "success":
            continue
        data = results.get(i)
        if data is None:
            report.mismatched.append(i)
            continue
        j = owner.get(_digest(decode(data, 1 << 30).pixels))
        if j == i:
            report.matched += 1
        elif j is not None:
            report.crossed.append((i, j))
        else:
            report.mismatched.append(i)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=200)
    parser.add_argument("-t", "--threads", type=int, default=8)
    parser.add_argument("--size", type=int, default=24, help="image side in pixels")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for jobs")
    args = parser.parse_args()

    from common.cluster.embedded import EmbeddedRedis
    from common.models import Registry
    from tests.cluster import ApiServer, WorkerProcess

    folder = Path(tempfile.mkdtemp(prefix="srcluster-load-"))
    base = Settings.from_env(tokens=f"bench:{TOKEN}", threads=1)
    Registry(base).onnx_path(args.model)  # convert once, before any process needs it
    inputs = make_inputs(args.count, args.size)

    with EmbeddedRedis(folder / "redis") as server:
        settings = dataclasses.replace(base, redis_url=server.url)
        api = ApiServer(settings, folder, workers=2).wait_ready()
        workers: list[WorkerProcess] = []
        try:
            workers = [WorkerProcess(settings, f"load{i}", folder) for i in range(2)]
            for w in workers:
                w.wait_ready()
            report = run_load(
                api.url,
                TOKEN,
                inputs,
                lambda: local_outputs(inputs, args.model, settings),
                model=args.model,
                threads=args.threads,
                timeout=args.timeout,
            )
        finally:
            for w in workers:
                w.stop()
            api.stop()

    print(
        f"model {args.model}, {args.count} images {args.size}x{args.size}, "
        f"{args.threads} client threads, API 2x4 threads, 2 workers x 1 process x 1 thread"
    )
    for line in report.lines():
        print(line)
    failures = report.failures()
    for failure in failures:
        print("FAIL:", failure)
    print("logs:", folder)
    print("OK" if not failures else "FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
