"""The cluster's counters and latency histograms: what ``GET /metrics`` reports.

Tiles run in worker processes on any number of hosts and jobs end in a stitch
task, so a histogram kept in one process (the API's, or a worker's) would see a
fraction of the work. Prometheus' multiprocess mode shares files between the
processes of one host; ours are on many. So the counts live where every
process already writes, in Redis: the store adds to them inside the scripts
and pipelines a tile or a status change already runs (no extra round trip per
tile), and the API reads them all in one scrape
(:meth:`common.cluster.store.JobStore.metrics`). Any API process answers the
same, and nothing is lost when one restarts.

Fields of the ``srcluster:stats`` hash (no TTL: counters only grow)::

    jobs:<status>               jobs that entered <status> (pending: submitted)
    tiles:<model>               parts done, each counted once however often it ran
    tile_seconds:<model>:<le>   parts done, by the bucket (upper bound <le>) of their worker seconds
    tile_seconds:<model>:sum    their seconds, summed
    job_seconds:<model>:<le>    jobs that succeeded, by the bucket of their seconds since submission
    job_seconds:<model>:sum

Buckets are stored non-cumulative (one increment per observation);
:func:`parse` makes them cumulative, as Prometheus wants them. Model names
never contain ``:`` (:mod:`common.models` allows ``[a-z0-9._-]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

STATS = "srcluster:stats"

TILE_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
"""Upper bounds (s) of the tile latency buckets: a small compact-model tile takes ~20 ms
on 2 CPU cores, a 256 px one ~0.5 s; an x4plus tile ~20 s; the tile time limit is 600 s."""

JOB_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
"""Upper bounds (s) of the job latency buckets, up to the default largest timeout."""

TILE_SECONDS = "tile_seconds"
JOB_SECONDS = "job_seconds"


def bound_label(bound: float) -> str:
    """How a bucket's upper bound is written in a field name: ``0.05``, ``600``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else format(bound, "g")


def bucket_of(seconds: float, bounds: Sequence[float]) -> str:
    """The label of the first bucket of ``bounds`` that holds ``seconds`` (``+Inf`` past them)."""
    for bound in bounds:
        if seconds <= bound:
            return bound_label(bound)
    return "+Inf"


def bucket_field(kind: str, model: str, seconds: float, bounds: Sequence[float]) -> str:
    """The field to increment for one observation of ``seconds`` (``kind``: tile/job seconds)."""
    return f"{kind}:{model}:{bucket_of(seconds, bounds)}"


def sum_field(kind: str, model: str) -> str:
    return f"{kind}:{model}:sum"


@dataclass(frozen=True)
class Histogram:
    """One histogram as Prometheus reads it: cumulative ``(upper bound, count)``, the last
    bound infinite, and the observations' sum (s)."""

    buckets: list[tuple[float, int]]
    sum: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1]


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape reports, read from Redis at one moment (see the store's
    :meth:`~common.cluster.store.JobStore.metrics`)."""

    jobs_entered: dict[str, int]
    """Status -> jobs that entered it, ever (every status present, 0 when none)."""
    jobs_unfinished: dict[str, int]
    """``pending`` and ``processing`` -> jobs in that status now."""
    tiles: dict[str, int]
    """Model -> parts done."""
    tile_seconds: dict[str, Histogram]
    """Model -> worker seconds per part: inference and crop, a batch's time shared evenly."""
    job_seconds: dict[str, Histogram]
    """Model -> seconds from submission to success."""
    queues: dict[str, int]
    """Celery queue -> messages waiting in the broker."""
    unacked: int
    """Messages taken by a worker and not yet acknowledged (running or reserved), all queues."""
    workers: dict[str, int]
    """Worker that is up -> its tile processes (0: it only stitches)."""
    engines: list[tuple[str, str, str]]
    """``(worker, model, engine description)`` for each model a worker up has run."""


def parse(
    raw: Mapping[str, str], statuses: Sequence[str]
) -> tuple[dict[str, int], dict[str, int], dict[str, Histogram], dict[str, Histogram]]:
    """The stats hash's fields (decoded) as ``(jobs entered, tiles, tile seconds, job seconds)``.

    A bucket label that is not among the current bounds (written under older
    bounds) keeps its own bound, so every cumulative count stays right.
    """
    jobs = dict.fromkeys(statuses, 0)
    tiles: dict[str, int] = {}
    counts: dict[tuple[str, str], dict[float, int]] = {}
    sums: dict[tuple[str, str], float] = {}
    for name, value in raw.items():
        kind, _, rest = name.partition(":")
        if kind == "jobs":
            jobs[rest] = int(value)
        elif kind == "tiles":
            tiles[rest] = int(value)
        elif kind in (TILE_SECONDS, JOB_SECONDS):
            model, _, label = rest.rpartition(":")
            if label == "sum":
                sums[kind, model] = float(value)
            else:
                counts.setdefault((kind, model), {})[float(label)] = int(value)
    histograms: dict[str, dict[str, Histogram]] = {TILE_SECONDS: {}, JOB_SECONDS: {}}
    defaults = {TILE_SECONDS: TILE_BUCKETS, JOB_SECONDS: JOB_BUCKETS}
    for (kind, model), by_bound in counts.items():
        bounds = sorted({*defaults[kind], *by_bound, math.inf})
        total, buckets = 0, []
        for bound in bounds:
            total += by_bound.get(bound, 0)
            buckets.append((bound, total))
        histograms[kind][model] = Histogram(buckets, sums.get((kind, model), 0.0))
    return jobs, tiles, histograms[TILE_SECONDS], histograms[JOB_SECONDS]
