"""Tile plans cover every pixel once, and tiled inference equals whole-image inference."""

from __future__ import annotations

import numpy as np
import pytest

from common import tiling


def blur_then_upscale(batch: np.ndarray, radius: int = 3, scale: int = 2) -> np.ndarray:
    """A stand-in model with a known receptive field: box blur (zero padded), then nearest x2."""
    _n, _c, h, w = batch.shape
    padded = np.pad(batch, ((0, 0), (0, 0), (radius, radius), (radius, radius)))
    out = np.zeros_like(batch)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out += padded[:, :, dy : dy + h, dx : dx + w]
    out /= (2 * radius + 1) ** 2
    return out.repeat(scale, axis=2).repeat(scale, axis=3)


def reference(rgb: np.ndarray, radius: int) -> np.ndarray:
    ext = tiling.extend(rgb)
    out = blur_then_upscale(tiling.to_unit_float(ext[None]), radius)[0]
    b, s = tiling.BORDER, 2
    h, w = rgb.shape[:2]
    return tiling.from_unit_float(out[:, b * s : (b + h) * s, b * s : (b + w) * s], rgb.dtype)


def tiled(rgb: np.ndarray, tile: int, pad: int, radius: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    plan = tiling.plan_tiles(w, h, tile, pad)
    ext = tiling.extend(rgb)
    canvas = tiling.Canvas(plan, 2, 3, rgb.dtype)
    for t in plan.tiles:
        win = tiling.window(ext, plan, t)
        assert win.shape[:2] == (plan.window_height, plan.window_width)
        out = blur_then_upscale(tiling.to_unit_float(win[None]), radius)[0]
        canvas.paste(t, tiling.tile_core(plan, t, out, 2, 3, rgb.dtype))
    assert canvas.complete
    return canvas.pixels


@pytest.mark.parametrize(
    ("length", "tile", "pad"),
    [
        (1, 32, 8),
        (3, 32, 0),
        (97, 32, 8),
        (131, 40, 16),
        (500, 64, 18),
        (1000, 256, 32),
        (257, 256, 32),
    ],
)
def test_axis_cores_cover_once_with_context(length: int, tile: int, pad: int) -> None:
    window, spans = tiling.split_axis(length, tile, pad)
    extended = length + 2 * tiling.BORDER
    covered = [x for s in spans for x in range(s.start, s.end)]
    assert covered == list(range(length))
    for s in spans:
        assert 0 <= s.window <= extended - window
        left = s.start + tiling.BORDER - s.window
        right = s.window + window - (s.end + tiling.BORDER)
        assert left >= pad or s.window == 0, "left side lacks context but is not the border"
        assert right >= pad or s.window + window == extended
        # one window over the whole extended axis may hold a core longer than a tile
        assert s.end - s.start <= tile or window == extended


def test_small_image_is_one_tile_covering_the_extended_image() -> None:
    plan = tiling.plan_tiles(100, 60, 128, 16)
    assert len(plan) == 1
    assert (plan.window_width, plan.window_height) == (120, 80)


@pytest.mark.parametrize(
    ("size", "tile", "pad"),
    [((97, 131), 32, 4), ((64, 64), 32, 3), ((1, 1), 32, 4), ((3, 50), 32, 4), ((70, 45), 40, 5)],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiled_equals_whole_image_when_pad_covers_receptive_field(size, tile, pad, dtype) -> None:
    rng = np.random.default_rng(7)
    peak = np.iinfo(dtype).max
    rgb = rng.integers(0, peak, size=(*size, 3), endpoint=True).astype(dtype)
    np.testing.assert_array_equal(tiled(rgb, tile, pad, radius=3), reference(rgb, radius=3))


def test_too_little_pad_shows_seams() -> None:
    """The tiler is not exact by accident: with pad below the receptive field, tiles differ."""
    rgb = np.random.default_rng(1).integers(0, 255, size=(90, 90, 3)).astype(np.uint8)
    assert not np.array_equal(tiled(rgb, 32, 1, radius=3), reference(rgb, radius=3))


def test_auto_tile_size_infers_least_within_the_memory_budget() -> None:
    budget = (256 + 2 * 32) ** 2
    for width, height in ((320, 240), (1000, 700), (97, 131), (4000, 3000), (257, 2000)):
        tile = tiling.auto_tile_size(width, height, 32, 256)
        plan = tiling.plan_tiles(width, height, tile, 32)
        assert plan.window_width * plan.window_height <= budget
        nominal = tiling.plan_tiles(width, height, 256, 32)
        inferred = len(plan) * plan.window_width * plan.window_height
        assert inferred <= len(nominal) * nominal.window_width * nominal.window_height
    assert len(tiling.plan_tiles(320, 240, tiling.auto_tile_size(320, 240, 32, 256), 32)) == 1


def test_auto_tile_size_spreads_over_workers() -> None:
    tile = tiling.auto_tile_size(2000, 1500, 18, 512, workers=4)
    assert len(tiling.plan_tiles(2000, 1500, tile, 18)) >= 4
    # tiles below min_tile buy too little parallelism for their context: one window
    tile = tiling.auto_tile_size(100, 100, 18, 512, workers=8)
    assert len(tiling.plan_tiles(100, 100, tile, 18)) == 1


def test_plan_reports_overlap_waste() -> None:
    assert tiling.plan_tiles(1000, 1000, 250, 0, border=0).waste == pytest.approx(0.0)
    assert 0.3 < tiling.plan_tiles(1000, 700, 256, 32).waste < 0.5
