"""The job store against a real Redis: final statuses stay final, redelivery is harmless, keys expire."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import redis

from common.cluster import jobs
from common.cluster.store import JobStatus, JobStore, pack_array, unpack_array
from tests.cluster import new_job


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore.from_url(redis_url, ttl=60)


def test_arrays_round_trip_and_pickles_are_refused() -> None:
    for array in (np.arange(12, dtype=np.uint16).reshape(2, 2, 3), np.zeros((1, 1, 1), np.uint8)):
        back = unpack_array(pack_array(array))
        assert back.dtype == array.dtype and np.array_equal(back, array)
    with pytest.raises(ValueError):
        unpack_array(pack_array(np.array([object()], dtype=object)))


def test_a_job_lives_and_ends_once(store: JobStore) -> None:
    job_id = new_job(store)
    record = store.get(job_id)
    assert record is not None and record.status is JobStatus.PENDING and record.parts == 3
    assert (
        store.redis.ttl(store.key(job_id)) > 0
        and store.redis.ttl(store.key(job_id, "in", 0, 0)) > 0
    )
    store.start(job_id)
    assert store.record_outputs(job_id, [(0, b"out")], "w1", model="m", seconds=[0.1]) == (1, False)
    assert store.record_outputs(job_id, [(0, b"out")], "w2", model="m", seconds=[0.1]) == (
        1,
        False,
    ), "a redelivered tile counts once"
    assert store.succeed(job_id, b"image", {"size": 5})
    assert not store.succeed(job_id, b"other", {"size": 5}), "success is final"
    assert not store.fail(job_id, "x", "late failure")
    assert not store.cancel(job_id)
    assert store.record_outputs(job_id, [(2, b"late")], "w1", model="m", seconds=[0.1]) == (
        -1,
        False,
    ), "a late tile stores nothing"
    assert store.redis.get(store.key(job_id, "out", 2)) is None
    record = store.get(job_id)
    assert (
        record is not None and record.status is JobStatus.SUCCESS and record.output == {"size": 5}
    )
    assert store.result(job_id) == b"image"
    assert store.read_strip(job_id, 0, 1) is None, "tiles are dropped once the job ends"


def test_outputs_are_recorded_after_redis_forgot_its_scripts(store: JobStore) -> None:
    """A Redis restart empties its script cache: recording outputs loads the script again."""
    job_id = new_job(store)
    store.redis.script_flush()
    assert store.record_outputs(job_id, [(0, b"a"), (1, b"b")], "w", model="m", seconds=[1, 1]) == (
        2,
        False,
    )
    assert store.read_outputs(job_id, [0, 1]) == [b"a", b"b"]


def test_racing_transitions_have_one_winner(store: JobStore) -> None:
    job_id = new_job(store)
    wins = []

    def end(kind: str) -> None:
        ok = store.cancel(job_id) if kind == "cancel" else store.fail(job_id, "x", "y")
        wins.append(ok)

    threads = [threading.Thread(target=end, args=(k,)) for k in ("cancel", "fail") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_racing_stitches_end_the_job_once_and_keep_its_result(store: JobStore) -> None:
    """Two stitches of one job at once (a janitor re-sent it while the first still ran): one
    ends the job, once, and the result the winner stored survives the loser."""

    def stitch(job_id: str, start: threading.Barrier, wins: list[bool]) -> None:
        start.wait()
        wins.append(store.succeed(job_id, b"image", {"size": 5}))

    for _ in range(20):
        job_id = new_job(store)
        start = threading.Barrier(4)
        wins: list[bool] = []
        threads = [threading.Thread(target=stitch, args=(job_id, start, wins)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        record = store.get(job_id)
        assert wins.count(True) == 1
        assert record is not None and record.status is JobStatus.SUCCESS and record.stitches == 1
        assert store.result(job_id) == b"image"


def test_overdue_jobs_are_reaped_with_a_reason(store: JobStore) -> None:
    # a deadline a minute away and a clock two minutes on: the session workers' own
    # janitors (same Redis) cannot race this test for the job
    job_id = new_job(store, timeout=60)
    later = time.time() + 120
    assert job_id not in jobs.reap(store), "not overdue yet"
    assert job_id in jobs.reap(store, now=later)
    record = store.get(job_id)
    assert (
        record is not None and record.status is JobStatus.FAILED and record.error_code == "timeout"
    )
    assert record.error and "0 of 3 tiles done" in record.error
    assert job_id not in store.overdue(later)


def test_missing_job_is_none(store: JobStore) -> None:
    assert store.get(uuid.uuid4().hex) is None


def test_store_errors_are_redis_errors() -> None:
    broken = JobStore(redis.Redis(port=1, socket_connect_timeout=0.2), ttl=60)
    with pytest.raises(redis.ConnectionError):
        broken.get("x")


def test_jobs_are_planned_for_the_hungriest_engine_up(store: JobStore, settings) -> None:
    from common.imageio import encode
    from common.models import Registry
    from common.params import parse_params

    budget = 4 << 30
    before = store.capacity().slots  # the session's worker may be up on this Redis
    store.announce_worker("ov@a", 1, window_budget=budget, memory_key="openvino-cpu")
    announced = store.capacity()
    assert announced.slots == before + 1 and ("openvino-cpu", budget) in announced.limits
    image = encode(np.zeros((720, 1280, 3), np.uint8), "png")
    params = parse_params(model="realesrgan-x4plus-anime")
    registry = Registry(settings)
    spec = registry.get("realesrgan-x4plus-anime")

    def window_peak(limits: tuple[tuple[str, int], ...], key: str) -> tuple[int, int]:
        plan = jobs.prepare(image, params, settings, registry, 1, limits).plan.tiles
        facts = spec.window_memory(key)
        assert facts is not None
        return plan.window_width * plan.window_height, facts.peak(
            plan.window_width * plan.window_height
        )

    ov_pixels, ov_peak = window_peak((("openvino-cpu", budget),), "openvino-cpu")
    assert ov_peak <= budget
    # an ORT worker joins: its windows take more memory, so the next job's fit it too
    store.announce_worker("ort@b", 1, window_budget=budget, memory_key="ort-cpu")
    both = store.capacity()
    assert both.slots == before + 2 and ("ort-cpu", budget) in both.limits
    mixed_pixels, ort_peak = window_peak((("openvino-cpu", budget), ("ort-cpu", budget)), "ort-cpu")
    assert ort_peak <= budget
    assert mixed_pixels < ov_pixels, "OpenVINO's leaner windows were planned for an ORT worker"


def test_a_tokens_hourly_pixels_are_counted_and_a_discarded_job_refunds_them(
    store: JobStore,
) -> None:
    budget = 1000
    assert store.admit("o", 600, max_jobs=10, pixels_per_hour=budget) is None
    kept = new_job(store, pixels=600)
    refusal = store.admit("o", 600, max_jobs=10, pixels_per_hour=budget)
    assert refusal is not None and refusal.reason == "pixels" and refusal.used == 600
    # the budget frees an hour after the job that spent it
    assert refusal.retry_after is not None and 3500 < refusal.retry_after <= 3600
    alone = store.admit("o", 2000, max_jobs=10, pixels_per_hour=budget)
    assert alone is not None and alone.retry_after is None  # never: the image alone is over it
    assert store.admit("other", 600, max_jobs=10, pixels_per_hour=budget) is None
    # a job that could not be queued (discarded) costs its token nothing
    never_queued = new_job(store, pixels=300)
    store.discard(never_queued)
    assert store.admit("o", 400, max_jobs=10, pixels_per_hour=budget) is None
    store.discard(kept)
    assert store.admit("o", 1000, max_jobs=1, pixels_per_hour=budget) is None
