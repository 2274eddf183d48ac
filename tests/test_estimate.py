"""common.estimate: the submit-time estimate's facts and formula, and the ETA while a job runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common import estimate
from common.cluster.store import JobRecord, JobStatus
from common.errors import JobTooLong
from common.imageio import Image
from common.models import Registry
from common.params import parse_params
from common.pipeline import make_plan
from common.settings import Settings

FIGURES = {"slow": 300.0, "fast": 10.0}


def test_measured_speeds_are_averaged_by_processes() -> None:
    workers = {"a": (1, {"slow": 100.0}), "b": (3, {"slow": 200.0})}
    speed, basis = estimate.seconds_per_megapixel("slow", FIGURES, workers)
    assert speed == pytest.approx((100 + 3 * 200) / 4) and basis == estimate.MEASURED


def test_a_worker_new_to_a_model_is_scaled_by_its_other_models() -> None:
    """b has only run "fast", at half its figure: its "slow" is taken as half that figure too."""
    workers = {"a": (1, {"slow": 100.0}), "b": (1, {"fast": 5.0})}
    speed, basis = estimate.seconds_per_megapixel("slow", FIGURES, workers)
    assert speed == pytest.approx((100 + 150) / 2) and basis == estimate.SCALED


def test_with_nothing_measured_the_figure_stands() -> None:
    assert estimate.seconds_per_megapixel("slow", FIGURES, {}) == (300.0, estimate.FIGURE)
    workers = {"a": (2, {})}
    assert estimate.seconds_per_megapixel("slow", FIGURES, workers) == (300.0, estimate.FIGURE)


def test_estimate_is_rounds_of_groups_times_a_groups_work(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, parts_per_group=2)
    spec = Registry(settings).get("realesr-animevideov3")
    image = Image(np.zeros((100, 130, 3), np.uint8), "png")
    plan = make_plan(image, parse_params(model=spec.name, tile_size=32), spec, settings)
    window = plan.tiles.window_width * plan.tiles.window_height / 1e6
    for processes in (1, 2, 5, 1000):
        found = estimate.estimate(plan, 7.0, estimate.MEASURED, processes)
        rounds = math.ceil(plan.group_count / processes)
        assert found.seconds == pytest.approx(rounds * 2 * window * 7.0)
    assert estimate.estimate(plan, 7.0, estimate.MEASURED, 0).processes == 1


def record(done: int, started: float | None, estimate_s: float | None) -> JobRecord:
    return JobRecord(
        id="0" * 32,
        status=JobStatus.PROCESSING if started else JobStatus.PENDING,
        owner="",
        owner_name="",
        params={"model": "m"},
        plan={"notes": ["a note"]},
        parts=10,
        groups=5,
        created=1000.0,
        deadline=2000.0,
        done=done,
        started=started,
        estimate=estimate_s,
    )


def test_eta_from_progress_then_from_the_estimate() -> None:
    # 4 of 10 parts in 20 s since the first started: 6 more take 30 s
    body = record(4, 1010.0, 99.0).public(now=1030.0)
    assert body["eta_seconds"] == 30.0 and body["estimated_seconds"] == 99.0
    assert body["notes"] == ["a note"]
    # nothing done yet: the estimate less the time since it started (or was made)
    assert record(0, 1010.0, 50.0).public(now=1030.0)["eta_seconds"] == 30.0
    assert record(0, None, 50.0).public(now=1030.0)["eta_seconds"] == 20.0
    assert record(0, None, 50.0).public(now=1090.0)["eta_seconds"] == 0.0
    assert record(0, None, None).public(now=1030.0)["eta_seconds"] is None


def test_a_finished_job_has_no_eta() -> None:
    done = record(10, 1010.0, 50.0)
    done.status = JobStatus.SUCCESS
    assert "eta_seconds" not in done.public(now=1030.0)


def test_refusal_gives_the_estimate_and_what_would_help() -> None:
    found = estimate.Estimate(700.0, 46.5, 2, estimate.SCALED)
    estimate.refuse_too_long(found, timeout=700, max_timeout=3600)  # within: accepted
    with pytest.raises(JobTooLong) as info:
        estimate.refuse_too_long(found, timeout=600, max_timeout=3600)
    assert info.value.http_status == 422 and info.value.detail["parameter"] == "timeout"
    assert info.value.detail["estimate"] == found.to_dict()
    assert "about 700 s of inference on the 2 tile process(es)" in info.value.message
    assert "ask for a timeout of up to 3600 s" in info.value.message
    with pytest.raises(JobTooLong, match="faster model"):
        estimate.refuse_too_long(found, timeout=600, max_timeout=650)
