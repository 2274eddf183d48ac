"""Tile planning and stitching that reproduce whole-image inference.

The reference output is the model run on the whole image extended by
:data:`BORDER` px of reflection on every side (numpy ``mode="reflect"``, what
realesrgan-ncnn-vulkan's ``prepadding`` computes), with the model's own zero
padding beyond, cropped back to the image. A plan cuts that extended image into
windows that all have one shape (one ONNX Runtime shape, batchable):

- each tile's *core* (the pixels it is responsible for) gets ``pad`` px of real
  neighbouring context on every side that is not the extended image's edge;
- edge windows are shifted inward, overlapping their neighbour more, instead of
  being padded, so a window only ever sees real or border-reflected pixels;
- an image whose extended size fits in one window is one tile: exactly the
  reference.

All coordinates are integers. Core coordinates are in the *image* frame; window
coordinates are in the *extended* frame (image frame + ``BORDER``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BORDER = 10
"""Reflection added on every side before tiling, as realesrgan-ncnn-vulkan does."""

MIN_TILE = 32
MAX_TILE = 1024


@dataclass(frozen=True)
class Span:
    """One tile along one axis: core ``[start, end)`` (image frame), window from ``window``."""

    start: int
    end: int
    window: int


def split_axis(length: int, tile: int, pad: int, border: int = BORDER) -> tuple[int, list[Span]]:
    """Split an axis of ``length`` image px into spans of at most ``tile`` core px.

    Returns ``(window_size, spans)``. Every window has ``window_size`` px of the
    extended axis (``length + 2 * border`` long), cores are balanced (sizes differ
    by at most one) and cover ``[0, length)`` without overlap.
    """
    if length < 1 or tile < 1 or pad < 0:
        raise ValueError(f"bad axis: length={length} tile={tile} pad={pad}")
    extended = length + 2 * border
    count = 1 if tile + 2 * pad >= extended else math.ceil(length / tile)
    # balanced cores are at most ceil(length / count) long: windows need no more than that
    window = min(-(-length // count) + 2 * pad, extended)
    if count == 1:
        window = extended
    spans = []
    for i in range(count):
        start = length * i // count
        end = length * (i + 1) // count
        origin = min(max(start + border - pad, 0), extended - window)
        spans.append(Span(start, end, origin))
    return window, spans


@dataclass(frozen=True)
class Tile:
    """A tile: core ``(x, y, width, height)`` in the image, window origin in the extended image."""

    index: int
    x: int
    y: int
    width: int
    height: int
    window_x: int
    window_y: int


@dataclass(frozen=True)
class TilePlan:
    """Every tile of one image; all windows are ``window_height`` x ``window_width``."""

    width: int
    height: int
    tile: int
    pad: int
    window_width: int
    window_height: int
    tiles: tuple[Tile, ...]
    border: int = BORDER

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def waste(self) -> float:
        """Fraction of inferred pixels that are context, not output (0 = none)."""
        inferred = len(self.tiles) * self.window_width * self.window_height
        return 1.0 - (self.width * self.height) / inferred


def plan_tiles(width: int, height: int, tile: int, pad: int, border: int = BORDER) -> TilePlan:
    """Plan the tiles of a ``width`` x ``height`` image; a pure function of its arguments.

    Raises:
        ValueError: a size is not positive or ``pad`` is negative.
    """
    window_w, columns = split_axis(width, tile, pad, border)
    window_h, rows = split_axis(height, tile, pad, border)
    tiles = tuple(
        Tile(i, c.start, r.start, c.end - c.start, r.end - r.start, c.window, r.window)
        for i, (r, c) in enumerate(itertools.product(rows, columns))
    )
    return TilePlan(width, height, tile, pad, window_w, window_h, tiles, border)


def auto_tile_size(
    width: int, height: int, pad: int, max_tile: int, workers: int = 1, min_tile: int = 128
) -> int:
    """Pick a tile side for an image.

    ``max_tile`` bounds the *area* of a window, ``(max_tile + 2 * pad)**2``: that is
    what inference memory and cache behaviour depend on. Within that budget:

    - one worker: the tile whose plan infers the fewest pixels (overlap is pure
      waste), so a 320x240 image under a 256 limit is one window of 340x260, not
      two of 224x260;
    - several workers: the largest tile that still gives about two tiles per
      worker, never below ``min_tile``; small tiles only pay when they buy
      parallelism across hosts.
    """
    budget = (max_tile + 2 * pad) ** 2
    longest = max(width, height)
    if workers <= 1:
        best, best_cost = max_tile, math.inf
        for tile in range(
            max(min_tile, max_tile // 2), min(longest, 4 * max_tile, MAX_TILE) + 1, 8
        ):
            plan = plan_tiles(width, height, tile, pad)
            if plan.window_width * plan.window_height > budget:
                continue
            cost = len(plan) * plan.window_width * plan.window_height
            if cost <= best_cost:  # ties go to the larger tile: fewer, larger tasks
                best, best_cost = tile, cost
        return best
    target = 2 * workers
    for tile in range(max_tile, min_tile - 1, -16):
        if len(plan_tiles(width, height, tile, pad)) >= target:
            return tile
    return min(min_tile, max_tile)


def extend(pixels: npt.NDArray[np.generic], border: int = BORDER) -> npt.NDArray[np.generic]:
    """Return ``pixels`` (H, W, C) extended by ``border`` px of reflection on every side."""
    return np.pad(pixels, ((border, border), (border, border), (0, 0)), mode="reflect")


def window(
    extended: npt.NDArray[np.generic], plan: TilePlan, tile: Tile
) -> npt.NDArray[np.generic]:
    """The input window of ``tile`` cut from the extended image (a view, not a copy)."""
    return extended[
        tile.window_y : tile.window_y + plan.window_height,
        tile.window_x : tile.window_x + plan.window_width,
    ]


def to_unit_float(pixels: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """Convert uint8/uint16 (..., H, W, C) pixels to float32 (..., C, H, W) in [0, 1]."""
    peak = 65535.0 if pixels.dtype == np.uint16 else 255.0
    moved = np.moveaxis(pixels, -1, -3)
    return (moved.astype(np.float32) * np.float32(1.0 / peak)).astype(np.float32, copy=False)


def from_unit_float(
    values: npt.NDArray[np.float32], dtype: np.dtype[np.generic]
) -> npt.NDArray[np.generic]:
    """Convert float (C, H, W) model output to (H, W, C) ``dtype``: clip, scale, round."""
    peak = 65535.0 if dtype == np.uint16 else 255.0
    scaled = np.clip(values, 0.0, 1.0) * np.float32(peak)
    # C order: the worker ships cores as raw bytes, and a transposed view would be copied twice
    rounded: npt.NDArray[np.generic] = np.moveaxis(np.rint(scaled), 0, -1).astype(dtype, order="C")
    return rounded


def tile_core(
    plan: TilePlan,
    tile: Tile,
    output: npt.NDArray[np.float32],
    scale: int,
    channels: int,
    dtype: np.dtype[np.generic],
) -> npt.NDArray[np.generic]:
    """Crop one tile's model output (float32 (3, h*s, w*s)) to its core, as (H, W, channels) ``dtype``.

    With ``channels == 1`` (a gray or alpha plane inferred as RGB) the core is the
    mean of the three output channels. The worker and the local pipeline both call
    this, so the cluster's pixels are the local pipeline's pixels.
    """
    top = (tile.y + plan.border - tile.window_y) * scale
    left = (tile.x + plan.border - tile.window_x) * scale
    core = output[:, top : top + tile.height * scale, left : left + tile.width * scale]
    if channels == 1:
        core = core.mean(axis=0, keepdims=True)
    return from_unit_float(core, dtype)


class Canvas:
    """The upscaled image being assembled, held in its final integer dtype (no float canvas)."""

    def __init__(self, plan: TilePlan, scale: int, channels: int, dtype: np.dtype[np.generic]):
        self.plan = plan
        self.scale = scale
        self.pixels = np.zeros((plan.height * scale, plan.width * scale, channels), dtype=dtype)
        self.filled: set[int] = set()

    def paste(self, tile: Tile, core: npt.NDArray[np.generic]) -> None:
        """Write a tile's core (from :func:`tile_core`) into place; pasting twice is harmless."""
        s = self.scale
        expected = (tile.height * s, tile.width * s, self.pixels.shape[2])
        if core.shape != expected:
            raise ValueError(f"tile {tile.index}: core shape {core.shape}, expected {expected}")
        y, x = tile.y * s, tile.x * s
        self.pixels[y : y + expected[0], x : x + expected[1]] = core
        self.filled.add(tile.index)

    @property
    def complete(self) -> bool:
        return len(self.filled) == len(self.plan.tiles)
