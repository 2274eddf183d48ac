"""One photo on 1 host of 1 core, on 2 hosts of 1 core, and on 2 hosts over a slow link, in one run.

    sudo .venv/bin/python bench/scaleout.py [--size 1280x720] [--rounds 3] [--format jpeg]

Needs root: the hosts are Linux network namespaces (``tests/hosts.py``), each
worker pinned to its own core, Redis (AOF on, as shipped) and the API in this
namespace. Three clusters share the one Redis, each in its own database so each
plans for its own workers: ``1 host`` (one worker, core 0), ``2 hosts`` (cores 0
and 1) and ``2 hosts, slow link``: two more hosts whose links are limited to
1 Gbit (``tc ... tbf``) and whose Redis traffic passes a proxy that delays every
chunk by ``--delay-ms`` each way (``bench/delayproxy.py``; the kernel here has no
``netem``). Every cluster runs the same photo (default model, automatic tiles)
once to warm up, then the rounds interleave the clusters so drifting machine
load hits all three alike.

Prints the medians, each phase of the job (upload and planning in the API,
queueing, the tiles from first started to last landed, the stitch, the
download), the plans, the measured round trips, and the ratios: the speed-up of
2 hosts over 1 (goal >= 1.8) and the cost of the slow link (goal <= 10 %). On a
machine with 2 cores, 2 hosts use both, so Redis, the API and this process
share them with the workers; the load average is printed before and after, and
each job's share of other processes' CPU. The ratios come four ways: the
median of each round's own ratios (the three jobs of a round run seconds apart,
so a drift of the machine's speed hits them alike: the figure to read), of the
medians, of the best runs, and of the "quiet" jobs, those during which
everything else used under 0.15 cores.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.local_pipeline import photo_like  # noqa: E402
from common.cluster.embedded import EmbeddedRedis, free_port  # noqa: E402
from common.cluster.store import JobStore  # noqa: E402
from common.imageio import encode  # noqa: E402
from common.models import Registry  # noqa: E402
from common.settings import Settings  # noqa: E402
from srcluster.client import Client  # noqa: E402
from tests.cluster import ApiServer, WorkerProcess, child_env  # noqa: E402
from tests.hosts import Host, Network, unavailable  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
PHASES = ("api", "queue", "tiles", "stitch", "download")


@dataclasses.dataclass
class Cluster:
    name: str
    api: ApiServer
    store: JobStore
    hosts: list[Host]
    times: list[float] = dataclasses.field(default_factory=list)
    phases: list[dict[str, float]] = dataclasses.field(default_factory=list)
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)


CLOCK = os.sysconf("SC_CLK_TCK")
QUIET = 0.15
"""A job counts as measured on a quiet machine when everything else used under this many
cores on average while it ran."""


def machine_seconds() -> float:
    """CPU seconds this machine has spent on any process (or lost to its hypervisor)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK


def own_seconds() -> float:
    """CPU seconds of this process and its descendants (Redis, the APIs, the workers, ...)."""
    table: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        used = sum(int(v) for v in fields[11:15]) / CLOCK  # utime stime cutime cstime
        table[int(stat.parent.name)] = (int(fields[1]), used)
    ours, total, frontier = {os.getpid()}, 0.0, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        total += table.get(parent, (0, 0.0))[1]
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in ours]
        ours.update(children)
        frontier += children
    return total


def one_job(cluster: Cluster, data: bytes, model: str) -> tuple[float, dict[str, float]]:
    """Seconds from upload to downloaded result, and the job's phases (polling every 20 ms);
    ``others`` is the cores the rest of the machine kept busy meanwhile, on average."""
    client = Client(cluster.api.url, TOKEN, timeout=300)
    machine, own = machine_seconds(), own_seconds()
    began = time.time()
    job = client.submit(data, filename="photo", model=model)
    body = client.wait(job, timeout=900, interval=0.02)
    if body["status"] != "success":
        raise RuntimeError(f"{cluster.name}: {body}")
    client.download(job)
    ended = time.time()
    others = (machine_seconds() - machine - (own_seconds() - own)) / (ended - began)
    client.close()
    record = cluster.store.get(job)
    assert record is not None and record.started is not None and record.finished is not None
    landed = record.landed or record.finished  # a job of one group is stitched where it ran
    cluster.plan = dict(record.plan, parts=record.parts, groups=record.groups)
    return ended - began, {
        "api": record.created - began,
        "queue": record.started - record.created,
        "tiles": landed - record.started,
        "stitch": record.finished - landed,
        "download": ended - record.finished,
        "others": others,
    }


def round_trip(host: Host, url: str) -> str:
    """PING round trip and SET+GET throughput from ``host`` to the Redis at ``url``."""
    probe = (
        "import redis, sys, time\n"
        "r = redis.Redis.from_url(sys.argv[1]); r.ping(); t = time.perf_counter()\n"
        "for _ in range(200): r.ping()\n"
        "rtt = (time.perf_counter() - t) / 200; blob = b'x' * (16 << 20); t = time.perf_counter()\n"
        "r.set('bench:probe', blob); r.get('bench:probe'); r.delete('bench:probe')\n"
        "print(f'{rtt * 1e3:.2f} ms round trip, {2 * len(blob) * 8 / (time.perf_counter() - t) / 1e9:.2f} Gbit/s')\n"
    )
    out = subprocess.run(
        [*host.prefix(), sys.executable, "-c", probe, url],
        env=child_env(Settings()),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--format", default="jpeg", help="the photo's format (and the result's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=1.0, help="slow link: added each way")
    parser.add_argument("--rate", default="1gbit", help="slow link: tbf rate")
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        sys.exit(f"bench/scaleout.py needs namespace hosts: {reason}")
    width, height = (int(v) for v in args.size.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="srcluster-scaleout-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # its Redis files
    base = Settings.from_env(tokens=f"bench:{TOKEN}", data_dir=folder / "data")
    Registry(base).onnx_path(args.model)
    data = encode(photo_like(width, height), args.format)
    print(f"before: {load()}", flush=True)

    started: list[WorkerProcess] = []
    apis: list[ApiServer] = []
    proxy: subprocess.Popen[str] | None = None
    with Network() as net:
        try:
            # the clusters take turns, so they share hosts (and cores) but for the slow ones
            first, second, slow_a, slow_b = (net.add_host() for _ in range(4))
            for host in (slow_a, slow_b):
                host.shape(rate=args.rate)
            with EmbeddedRedis(folder / "redis", bind=("127.0.0.1", net.address)) as server:
                proxy_port = free_port()
                proxy = subprocess.Popen(
                    [sys.executable, str(ROOT / "bench" / "delayproxy.py"),
                     f"{net.address}:{proxy_port}", f"127.0.0.1:{server.port}",
                     "--delay-ms", str(args.delay_ms)],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
                layouts = [
                    ("1 host", [first], server.url_at(net.address, 1)),
                    ("2 hosts", [first, second], server.url_at(net.address, 2)),
                    (
                        "2 hosts, slow link",
                        [slow_a, slow_b],
                        f"redis://{net.address}:{proxy_port}/3",
                    ),
                ]
                clusters = []
                for db, (name, hosts, worker_url) in enumerate(layouts, start=1):
                    settings = dataclasses.replace(base, redis_url=server.url_at("127.0.0.1", db))
                    api = ApiServer(settings, folder, workers=1).wait_ready()
                    apis.append(api)
                    on_hosts = dataclasses.replace(settings, redis_url=worker_url)
                    for host in hosts:
                        worker = WorkerProcess(
                            on_hosts, f"db{db}-h{host.index}", folder, prefix=host.prefix()
                        )
                        started.append(worker.wait_ready())
                    store = JobStore.from_url(settings.redis_url, 60)
                    clusters.append(Cluster(name, api, store, hosts))
                print("links from a host to Redis:")
                print(f"  direct:    {round_trip(first, server.url_at(net.address))}")
                print(f"  slow link: {round_trip(slow_a, f'redis://{net.address}:{proxy_port}/0')}")
                for cluster in clusters:  # warm: engine sessions built, shapes seen
                    one_job(cluster, data, args.model)
                for _ in range(args.rounds):
                    for cluster in clusters:
                        seconds, phases = one_job(cluster, data, args.model)
                        cluster.times.append(seconds)
                        cluster.phases.append(phases)
                        print(
                            f"  {cluster.name:20} {seconds:7.2f} s   (others kept "
                            f"{phases['others']:.2f} cores busy)",
                            flush=True,
                        )
                report(clusters, args, width, height, len(data))
        finally:
            for worker in started:
                worker.stop()
            for api in apis:
                api.stop()
            if proxy is not None:
                proxy.kill()
                proxy.wait()
    print(f"after: {load()}")


def report(
    clusters: list[Cluster], args: argparse.Namespace, width: int, height: int, size: int
) -> None:
    cores = len(os.sched_getaffinity(0))
    print(
        f"\n{args.model}, {width}x{height} {args.format} ({size // 1024} KiB), {args.rounds} rounds, "
        f"{cores} cores here; slow link: {args.rate} tbf + {args.delay_ms:g} ms each way"
    )
    print(
        f"  {'':20} {'median':>8} {'best':>8} {'quiet':>8}  "
        + "  ".join(f"{p:>8}" for p in PHASES)
        + "   plan"
    )
    medians, best, quiet = {}, {}, {}
    for c in clusters:
        calm = [t for t, ph in zip(c.times, c.phases, strict=True) if ph["others"] < QUIET]
        medians[c.name], best[c.name] = statistics.median(c.times), min(c.times)
        quiet[c.name] = statistics.median(calm) if calm else float("nan")
        phases = {p: statistics.median(ph[p] for ph in c.phases) for p in PHASES}
        plan = c.plan
        print(
            f"  {c.name:20} {medians[c.name]:7.2f}s {best[c.name]:7.2f}s "
            f"{quiet[c.name]:6.2f}s{len(calm):>2}  "
            + "  ".join(f"{phases[p]:7.2f}s" for p in PHASES)
            + f"   tile {plan['tile']} pad {plan['pad']}: {plan['parts']} parts in {plan['groups']} tasks"
        )
    print(
        f"  (quiet: the median of the N runs during which other processes used under {QUIET} "
        "cores; phases: medians of all runs)"
    )
    one, two, slow = (c.times for c in clusters)
    rounds = {  # the clusters of a round ran seconds apart, on the machine as it was then
        "1 host": statistics.median(a / b for a, b in zip(one, two, strict=True)),
        "2 hosts": 1.0,
        "2 hosts, slow link": statistics.median(a / b for a, b in zip(slow, two, strict=True)),
    }
    for name, of in (
        ("per round", rounds),
        ("medians", medians),
        ("best runs", best),
        ("quiet runs", quiet),
    ):
        speedup = of["1 host"] / of["2 hosts"]
        cost = of["2 hosts, slow link"] / of["2 hosts"] - 1
        print(
            f"{name:>10}: speed-up of 2 hosts over 1 {speedup:.2f}x (goal >= 1.8); "
            f"slow link costs {cost * 100:+.1f} % (goal <= 10 %)"
        )
    print(
        "  (per round: the median over rounds of each round's own ratios; this machine's speed "
        "drifted by up to 1.8x between minutes with nothing else visible on it)"
    )


if __name__ == "__main__":
    main()
