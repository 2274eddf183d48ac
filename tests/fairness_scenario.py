"""The fair-share scenario: token B's one-tile job behind token A's large job (a stand-in
engine, one task per tile), shared by ``tests/test_fairness.py`` and ``bench/fairness.py``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cluster.store import JobStore
from common.imageio import encode
from common.models import Registry
from common.settings import Settings
from srcluster.client import Client
from tests.cluster import wait_for
from tests.stand_in import STAND_IN, stand_in_model
from tests.tokens import ALICE, BOB

TILE = 32


def photo(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8), "png")


@dataclass
class HeadStart:
    """What token B's one-tile job saw behind token A's large job."""

    a_parts: int
    a_done_at_b_submit: int
    a_done_at_b_start: int
    b_wait: float
    """Seconds from B's submission to its first tile starting."""
    a_seconds: float
    """A's whole run (its submission to its last tile)."""

    @property
    def a_tiles_ahead(self) -> int:
        """A's tiles that ran between B's submission and B's start."""
        return self.a_done_at_b_start - self.a_done_at_b_submit


def fair_settings(base: Settings, folder: Path, redis_url: str, fair: bool) -> Settings:
    settings = dataclasses.replace(
        base,
        redis_url=redis_url,
        data_dir=folder / "data",
        models_dir=None,
        fair_share=fair,
        parts_per_group=1,
        threads=1,
        estimate_check=False,
        token_max_jobs=1,
    )
    Registry(settings).add(STAND_IN, stand_in_model(folder / "stand-in.onnx"))
    return settings


def head_start(api_url: str, store: JobStore, large: bytes) -> HeadStart:
    """Submit A's large job, let it run a moment, then B's one-tile job; measure."""
    a_client, b_client = Client(api_url, ALICE), Client(api_url, BOB)
    fields = {"model": STAND_IN, "tile_size": TILE, "tile_pad": 4}
    a_job = a_client.submit(large, **fields)
    wait_for(lambda: store.get(a_job).done >= 20, 120, "A under way")  # type: ignore[union-attr]
    a_done_at_b_submit = store.get(a_job).done  # type: ignore[union-attr]
    b_job = b_client.submit(photo(TILE, TILE, seed=1), **fields)
    b_record = wait_for(
        lambda: (r := store.get(b_job)) is not None and r.started is not None and r,
        300,
        "B to start",
        interval=0.005,
    )
    a_done_at_b_start = store.get(a_job).done  # type: ignore[union-attr]
    assert b_client.wait(b_job, timeout=300)["status"] == "success"
    assert a_client.wait(a_job, timeout=600)["status"] == "success"
    a = store.get(a_job)
    assert a is not None and a.landed is not None
    return HeadStart(
        a.parts,
        a_done_at_b_submit,
        a_done_at_b_start,
        b_record.started - b_record.created,  # type: ignore[union-attr]
        a.landed - a.created,
    )
