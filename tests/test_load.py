"""The cluster under load: 200 small images at once from 8 client threads, two workers.

Nothing may be lost, duplicated or crossed (each result is exactly the local
pipeline's output for its own input), and the API never answers 5xx.
"""

from __future__ import annotations

import pytest

from bench.load import MODEL, local_outputs, make_inputs, run_load
from tests.cluster import WorkerProcess
from tests.tokens import ALICE

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

COUNT = 200
THREADS = 8


def test_many_small_images_at_once(api, worker, cluster_settings, logs, record_property) -> None:
    inputs = make_inputs(COUNT)
    second = WorkerProcess(cluster_settings, "load2", logs).wait_ready()
    try:
        report = run_load(
            api.url,
            ALICE,
            inputs,
            lambda: local_outputs(inputs, MODEL, cluster_settings),
            model=MODEL,
            threads=THREADS,
            timeout=240,
        )
    finally:
        second.stop()
    for line in report.lines():
        print(line)
    for q in (50, 90, 99, 100):
        record_property(f"post_latency_p{q}_ms", round(1000 * report.percentile(q), 1))
    record_property("wall_s", round(report.wall, 2))

    assert report.errors == []
    assert report.server_errors == 0, report.statuses
    assert report.post_status == [202] * COUNT
    assert report.successes == COUNT and report.lost == 0, report.failures()
    assert report.duplicates == 0, report.crossed
    assert report.mismatched == []
    assert report.matched == COUNT
