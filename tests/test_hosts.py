"""One image over several hosts: workers in their own network namespaces, one core each.

Redis and the API run here, in the root namespace; each worker runs on a host
of :mod:`tests.hosts` (its own network namespace, reaching Redis only over its
veth link, pinned to its own core where the machine has two or more). What a
user must be able to rely on: an image's tiles spread over the hosts that are
up, including one that joins while the job waits; a host that drops off the
network mid-job loses nothing, and when it comes back late it changes nothing;
the output is the local pipeline's, byte for byte, whichever host ran what.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.cluster.embedded import EmbeddedRedis
from common.cluster.store import JobRecord, JobStore
from common.imageio import encode
from common.params import parse_params
from common.pipeline import upscale_bytes
from common.settings import Settings
from srcluster.client import Client
from tests.cluster import ApiServer, WorkerProcess, wait_for
from tests.hosts import Host, Network, unavailable
from tests.tokens import ALICE

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
COMPACT = "realesr-animevideov3"
TILE = 128
VISIBILITY = 10
"""Seconds before a message held by a host that dropped off comes back (production: 1200)."""


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    """Two hosts' namespaces and links for the module (removed at its end, whatever happened)."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no namespace hosts: {reason}")
    with Network() as net:
        net.add_host()
        net.add_host()
        yield net


@pytest.fixture(scope="module")
def hosts_redis(
    network: Network, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedRedis]:
    """Redis on 127.0.0.1 (for the API and the test) and on the cluster address (for hosts)."""
    folder = tmp_path_factory.mktemp("hosts-redis")
    with EmbeddedRedis(folder, bind=("127.0.0.1", network.address)) as server:
        yield server


@pytest.fixture(scope="module")
def root_settings(cluster_settings: Settings, hosts_redis: EmbeddedRedis) -> Settings:
    """What the API and this process use; one engine thread, as a one-core host runs."""
    return dataclasses.replace(cluster_settings, redis_url=hosts_redis.url, threads=1)


@pytest.fixture(scope="module")
def host_settings(
    root_settings: Settings, hosts_redis: EmbeddedRedis, network: Network
) -> Settings:
    """What a host's worker uses: Redis at the cluster address (one engine thread, as here)."""
    return dataclasses.replace(root_settings, redis_url=hosts_redis.url_at(network.address))


@pytest.fixture(scope="module")
def hosts_api(
    root_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    server = ApiServer(root_settings, tmp_path_factory.mktemp("hosts-api")).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def store(root_settings: Settings) -> Iterator[JobStore]:
    store = JobStore.from_url(root_settings.redis_url, 60)
    yield store
    store.close()


@pytest.fixture
def workers(network: Network) -> Iterator[list[WorkerProcess]]:
    """Workers a test starts on the module's hosts, stopped at its end; hosts it adds go too."""
    started: list[WorkerProcess] = []
    known = list(network.hosts)
    yield started
    for host in network.hosts:
        host.thaw()  # a worker frozen or cut off could not shut down warm
        host.restore()
    for worker in started:
        worker.stop()
    for host in [h for h in network.hosts if h not in known]:
        network.remove_host(host)


def start(host: Host, settings: Settings, started: list[WorkerProcess], tmp: Path) -> WorkerProcess:
    worker = WorkerProcess(settings, f"host{host.index}-{len(started)}", tmp, prefix=host.prefix())
    started.append(worker)  # stopped at the end even if it never comes up
    return worker.wait_ready()


def image(width: int, height: int, seed: int) -> bytes:
    """A blocky random PNG: every tile differs, and so would a misplaced one."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, size=(height // 8, width // 8, 3), dtype=np.uint8)
    return encode(np.kron(blocks, np.ones((8, 8, 1), np.uint8)), "png")


def submit(api: ApiServer, data: bytes) -> str:
    return Client(api.url, ALICE).submit(data, model=COMPACT, tile_size=TILE)


def final(store: JobStore, job_id: str, timeout: float = 180) -> JobRecord:
    def ended() -> JobRecord | None:
        record = store.get(job_id)
        return record if record is not None and record.status.finished else None

    record: Any = wait_for(ended, timeout, f"job {job_id} to end")
    return record


def assert_local_pipeline_output(
    api: ApiServer, store: JobStore, job_id: str, data: bytes, settings: Settings
) -> JobRecord:
    """The job ended ``success``, stitched once, with exactly the local pipeline's bytes."""
    record = final(store, job_id)
    assert record.status.value == "success", record
    assert record.stitches == 1
    expected, _ = upscale_bytes(data, parse_params(model=COMPACT, tile_size=TILE), settings)
    assert Client(api.url, ALICE).download(job_id) == expected
    return record


def running_on(store: JobStore, job_id: str, worker: WorkerProcess) -> int | None:
    """A part that ``worker`` has started and not finished, if any."""
    runners = store.redis.hgetall(store.key(job_id, "running"))
    done = {int(v) for v in store.redis.smembers(store.key(job_id, "done"))}
    mine = {int(k) for k, v in runners.items() if v.decode().startswith(worker.hostname + ":")}
    return min(mine - done) if mine - done else None


def in_namespace(host: Host, worker: WorkerProcess) -> bool:
    pids = subprocess.run(
        ["ip", "netns", "pids", host.namespace], capture_output=True, text=True, check=True
    ).stdout.split()
    return str(worker.process.pid) in pids


def test_one_image_runs_on_both_hosts(
    network, hosts_api, host_settings, root_settings, store, workers, tmp_path
) -> None:
    a, b = network.hosts
    on_a = start(a, host_settings, workers, tmp_path)
    on_b = start(b, host_settings, workers, tmp_path)
    assert in_namespace(a, on_a) and in_namespace(b, on_b)
    data = image(512, 384, seed=0)
    job_id = submit(hosts_api, data)
    record = assert_local_pipeline_output(hosts_api, store, job_id, data, root_settings)
    ran = store.workers_of(job_id)
    assert sorted(ran) == list(range(record.parts))
    assert set(ran.values()) == {on_a.hostname, on_b.hostname}


def test_host_added_while_a_job_is_queued_takes_tiles_of_it(
    network, hosts_api, host_settings, root_settings, store, workers, tmp_path
) -> None:
    """A job planned and queued for host 1 alone is shared with a host that joins after.

    Host 1 is held (frozen) from its first tile until the new host has taken one, so
    the queue cannot drain before the new host is up, however slow its start."""
    a = network.hosts[0]
    on_a = start(a, host_settings, workers, tmp_path)
    data = image(768, 512, seed=1)
    job_id = submit(hosts_api, data)
    wait_for(lambda: running_on(store, job_id, on_a) is not None, 60, "host 1 to start the job")
    a.freeze()
    try:
        on_late = start(network.add_host(), host_settings, workers, tmp_path)
        wait_for(lambda: running_on(store, job_id, on_late) is not None, 60, "the new host's tile")
    finally:
        a.thaw()
    assert_local_pipeline_output(hosts_api, store, job_id, data, root_settings)
    assert set(store.workers_of(job_id).values()) == {on_a.hostname, on_late.hostname}


def ended(worker: WorkerProcess, job_id: str, group: int) -> bool:
    """Whether ``worker`` has finished its run of the job's group, landed or given back."""
    log = worker.log.read_text()
    return any(f"[{job_id}-{group}] {end}" in log for end in ("succeeded", "reject"))


def start_two_hosts(
    network: Network, settings: Settings, api: ApiServer, started, tmp: Path
) -> tuple[WorkerProcess, WorkerProcess, str, bytes]:
    """A worker on each host, with a short visibility timeout, and a job for them."""
    a, b = network.hosts
    quick = dataclasses.replace(settings, visibility_timeout=VISIBILITY)
    on_a = start(a, quick, started, tmp)
    on_b = start(b, quick, started, tmp)
    data = image(768, 512, seed=len(started))
    return on_a, on_b, submit(api, data), data


def lose_mid_tile(
    store: JobStore,
    job_id: str,
    worker: WorkerProcess,
    down: Callable[[], None],
    up: Callable[[], None],
) -> int:
    """Take ``worker``'s host down (``down``) while it runs a tile of the job; returns the part
    it held then (read once the host can no longer write, so it stays held)."""
    while True:
        wait_for(lambda: running_on(store, job_id, worker) is not None, 60, "a tile on host 1")
        down()
        time.sleep(0.2)  # a write sent just before has landed
        held = running_on(store, job_id, worker)
        if held is not None:
            return held
        up()  # it was between two tiles: catch it in the next one


def assert_rerun_elsewhere(store: JobStore, job_id: str, parts: int, held: int, by: str) -> None:
    ran = store.workers_of(job_id)
    assert sorted(ran) == list(range(parts)), "every part landed"
    assert ran[held] == by, "the tile the lost host held was run again on the other"
    assert int(store.redis.hget(store.key(job_id, "deliveries"), str(held))) == 2


def test_host_cut_off_mid_job_loses_nothing(
    network, hosts_api, host_settings, root_settings, store, workers, tmp_path
) -> None:
    on_a, on_b, job_id, data = start_two_hosts(network, host_settings, hosts_api, workers, tmp_path)
    a = network.hosts[0]
    held = lose_mid_tile(store, job_id, on_a, a.cut, a.restore)
    record = assert_local_pipeline_output(hosts_api, store, job_id, data, root_settings)
    assert_rerun_elsewhere(store, job_id, record.parts, held, on_b.hostname)
    result = store.result(job_id)

    a.restore()  # back on the network: it ends its stale tile and changes nothing
    group = held // record.plan["group"]
    wait_for(lambda: ended(on_a, job_id, group), 60, "the cut host to end its stale tile")
    wait_for(lambda: on_a.hostname in store.workers_up(), 30, "the cut host to announce itself")
    after = store.get(job_id)
    assert after is not None and (after.stitches, after.finished) == (1, record.finished)
    assert store.result(job_id) == result


def test_host_back_late_does_not_stitch_twice(
    network, hosts_api, host_settings, root_settings, store, workers, tmp_path
) -> None:
    """A host that hangs mid-tile (every process stopped) and resumes after its tile was run
    elsewhere and the job ended: its tile lands on a finished job and changes nothing."""
    on_a, on_b, job_id, data = start_two_hosts(network, host_settings, hosts_api, workers, tmp_path)
    a = network.hosts[0]
    held = lose_mid_tile(store, job_id, on_a, a.freeze, a.thaw)
    try:
        record = assert_local_pipeline_output(hosts_api, store, job_id, data, root_settings)
    finally:
        a.thaw()
    assert_rerun_elsewhere(store, job_id, record.parts, held, on_b.hostname)
    ran, result = store.workers_of(job_id), store.result(job_id)
    group = held // record.plan["group"]
    wait_for(
        lambda: f"[{job_id}-{group}] succeeded" in on_a.log.read_text(),
        60,
        "the late host to finish the tile it held",
    )
    after = store.get(job_id)
    assert after is not None and after.status.value == "success"
    assert after.stitches == 1, "stitched once, not again by the late host"
    assert (after.finished, store.result(job_id)) == (record.finished, result)
    assert store.workers_of(job_id) == ran, "the late tile was not recorded over the rerun"
