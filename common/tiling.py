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


def _axis_shape(length: int, tile: int, pad: int, border: int) -> tuple[int, int]:
    """``(count, window)`` of the spans :func:`split_axis` makes; O(1), for planning."""
    extended = length + 2 * border
    if tile + 2 * pad >= extended:
        return 1, extended
    count = -(-length // tile)
    # balanced cores are at most ceil(length / count) long: windows need no more than that
    return count, extended if count == 1 else min(-(-length // count) + 2 * pad, extended)


def split_axis(length: int, tile: int, pad: int, border: int = BORDER) -> tuple[int, list[Span]]:
    """Split an axis of ``length`` image px into spans of at most ``tile`` core px.

    Returns ``(window_size, spans)``. Every window has ``window_size`` px of the
    extended axis (``length + 2 * border`` long), cores are balanced (sizes differ
    by at most one) and cover ``[0, length)`` without overlap.
    """
    if length < 1 or tile < 1 or pad < 0:
        raise ValueError(f"bad axis: length={length} tile={tile} pad={pad}")
    extended = length + 2 * border
    count, window = _axis_shape(length, tile, pad, border)
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


WINDOW_OVERHEAD_PIXELS = 4096
"""Fixed cost of one window beyond its pixels, as the window pixels of inference it is worth.

On CPU a window's inference time is proportional to its pixels (from the costs per
useful pixel measured on a 2-core Xeon, DESIGN.md section 5: compact 3.6 s per MP
of window at 100x100 and 3.9 at 548x548, x4plus 82 and 94 at 128x128 and 320x320),
so what a window adds is the cluster's per-tile machinery: ~18 ms per tile measured
(55 tiles/s through one worker), ~4096 px of compact-model CPU inference. For slower
models it overstates the overhead, which only nudges plans towards fewer windows; a
GPU worker, ~50x faster per pixel, should pass a proportionally larger value.
"""


def _plan_shape(width: int, height: int, tile: int, pad: int, border: int) -> tuple[int, int]:
    """``(windows, pixels per window)`` of ``plan_tiles(width, height, tile, pad)``, in O(1)."""
    columns, window_w = _axis_shape(width, tile, pad, border)
    rows, window_h = _axis_shape(height, tile, pad, border)
    return columns * rows, window_w * window_h


def _one_window_tile(length: int, pad: int, border: int) -> int:
    """The least tile for which an axis of ``length`` px is one window (see :func:`_axis_shape`)."""
    return max(1, min(length, length + 2 * (border - pad)))


def auto_tile_size(
    width: int,
    height: int,
    pad: int,
    max_tile: int,
    workers: int = 1,
    min_tile: int = 128,
    *,
    max_window_pixels: int | None = None,
    window_overhead: int = WINDOW_OVERHEAD_PIXELS,
    border: int = BORDER,
) -> int:
    """The tile side whose plan finishes ``width`` x ``height`` soonest; a pure function.

    Memory: every window has at most ``max_window_pixels`` px (``h * w`` of the
    window, context included), the limit that one inference process's memory
    budget allows (:func:`common.memory.window_pixel_limit`). Without it the limit
    is ``(max_tile + 2 * pad) ** 2``, the old fixed cap, kept for models whose
    memory per pixel is not known.

    Time: a plan of ``n`` windows of ``p`` px each is estimated to take
    ``n * c / workers + (1 - 1 / workers) * c`` with ``c = p + window_overhead``
    (window-pixel units). That is Graham's bound for greedy list scheduling:
    whatever the workers' speeds and start times, the job ends within its total
    work shared out plus one window's tail. So with one worker the plan inferring
    the fewest pixels wins (one window whenever the whole extended image fits),
    and with several, tiles get smaller only while the parallelism they buy
    outweighs the context they add: that lands at about 1-3 tiles per worker,
    smaller tiles only where the pad is a small part of them.

    With one worker, an image whose extended size fits the limit is always one
    window (exactly the reference, even where a pad below :data:`BORDER` would
    let cuts save a few pixels). Tiles are at least ``min_tile`` unless the
    memory limit forces smaller ones or one window holds the whole image. Ties
    go to fewer pixels, then the larger tile. Runs in microseconds: plans are
    costed per axis, never built.

    Raises:
        ValueError: a size is not positive, ``pad`` is negative, or not even a
            one-pixel tile's window fits in ``max_window_pixels``.
    """
    if width < 1 or height < 1 or pad < 0 or max_tile < 1:
        raise ValueError(f"bad image or tile: {width}x{height} pad={pad} max_tile={max_tile}")
    limit = (max_tile + 2 * pad) ** 2 if max_window_pixels is None else max_window_pixels
    workers = max(1, workers)
    ones = (_one_window_tile(width, pad, border), _one_window_tile(height, pad, border))
    if workers == 1 and (width + 2 * border) * (height + 2 * border) <= limit:
        # exactly the reference; cuts could only save the border a pad below it drops
        return max(ones)
    floor = min(min_tile, max(ones))
    best = _best_tile(width, height, pad, limit, workers, floor, ones, window_overhead, border)
    if best is None:  # the memory limit is below a min_tile window: go as small as needed
        best = _best_tile(width, height, pad, limit, workers, 1, ones, window_overhead, border)
    if best is None:
        raise ValueError(f"no window of pad {pad} fits in {limit} px")
    return best


def _best_tile(
    width: int,
    height: int,
    pad: int,
    limit: int,
    workers: int,
    floor: int,
    ones: tuple[int, int],
    overhead: int,
    border: int,
) -> int | None:
    # A plan depends on the tile only through the tile counts per axis, which change
    # at ceil(length / count) and at each axis' one-window tile: those break points
    # are the only candidates worth costing.
    whole = max(ones)
    candidates = {*ones, floor}
    for length in (width, height):
        for count in range(2, length // floor + 2):
            candidates.add(-(-length // count))
    best: tuple[float, int, int] | None = None
    chosen = None
    for tile in candidates:
        if tile < floor or tile > whole:
            continue
        count, pixels = _plan_shape(width, height, tile, pad, border)
        if pixels > limit:
            continue
        cost = pixels + overhead
        estimate = count * cost / workers + (1 - 1 / workers) * cost
        key = (estimate, count * pixels, -tile)
        if best is None or key < best:
            best, chosen = key, tile
    return chosen


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
