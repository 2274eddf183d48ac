"""Tile plans: the old fixed-cap plan against the memory-sized one, and the measurements behind it.

    .venv/bin/python bench/plans.py                      # plan table, no inference (instant)
    .venv/bin/python bench/plans.py memory               # peak RSS per window pixel (minutes)
    .venv/bin/python bench/plans.py pads --model M --image PNG [--crop WxH+X+Y] [--check PAD...]

``plans`` prints, per image size, model and worker count, the old plan (tile
capped at the model's ``max_tile``) and the new one (windows sized from the
model's measured memory per pixel and this host's budget): windows, window
size, inferred pixels over image pixels, and the estimated time ratio
new/old (time taken as proportional to the Graham estimate the planner
minimises, see :func:`common.tiling.auto_tile_size`). Then krau's plan for
x4plus-anime on 600x512 (tile 128, 8 px of context clipped at the image edge,
after reflect-padding to a multiple of 16, as its ``onnx_infer.py`` does).

``memory`` runs each (engine, model, window size) in a fresh subprocess: load
the model and run a 32x32 window, read ``VmRSS``, reset the peak
(``/proc/self/clear_refs`` = 5), run one window from uint8 through
``to_unit_float``, the engine and ``from_unit_float``, read ``VmHWM``. The
difference is that window's peak; the session's own memory is reported apart.

``pads`` measures the quality-versus-context curve of a model on a real image:
the image is inferred whole (the reference) and as full-height strips with no
context, so each output pixel's error is a function of its distance ``c`` to
the nearest cut. From that curve (MSE and max |diff| per ``c``) it predicts,
for each pad, the whole-image PSNR of the plans the planner picks and the PSNR
of the worst seam band (the 8 input px next to a cut), without inferring every
plan. ``--check PAD...`` also runs real tiled plans (``--check-tile``) at those
pads and prints their measured PSNR, beside the prediction when there is a curve.
References and curves are cached in the temporary folder between runs.

The facts in ``common/models.py`` came from these runs (coffee.png is
``skimage/data/coffee.png`` from ``pip download --no-deps scikit-image==0.26.0``,
a CC0 real photo; photo.png is ``tests/data/photo.png``):

    plans.py memory
    plans.py pads --model realesr-animevideov3 --image coffee.png --pads 4 8 12 16 18 20 24 --check 8
    plans.py pads --model realesrgan-x4plus-anime --image coffee.png --crop 400x300+100+50 \
        --strip 160 --pads 16 20 24 28 32 40 48 --check 20 24 --check-tile 160
    plans.py pads --model realesrgan-x4plus --image coffee.png --crop 300x200+150+100 \
        --pads 16 20 24 28 32 40 48
    plans.py pads --model realesrgan-x4plus --image coffee.png --pads --check 28 --check-tile 200
    plans.py pads --model M --image photo.png --crop 100x56 --pads --check 20 24 28 32 --check-tile 40
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import memory, tiling
from common.models import BUILTIN_NAMES, Registry
from common.settings import Settings

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "photo.png"
SIZES = ((600, 512), (1280, 720), (1920, 1080), (3840, 2160))
MODELS = ("realesr-animevideov3", "realesrgan-x4plus-anime", "realesrgan-x4plus")
WORKERS = (1, 2, 4, 8)
MEMORY_SIZES = {
    "realesr-animevideov3": (128, 256, 512),
    "realesrgan-x4plus-anime": (128, 256, 384),
    "realesrgan-x4plus": (64, 128, 192),
}
KRAU_TILE, KRAU_PAD, KRAU_MOD = 128, 8, 16
OLD_MAX_TILE = {"realesr-animevideov3": 512}
"""``max_tile`` before memory-sized plans (256 for the others); ``pad`` was 18 / 32."""
OLD_PAD = {"realesr-animevideov3": 18}


# -- plans ----------------------------------------------------------------------


def old_auto_tile_size(width: int, height: int, pad: int, max_tile: int, workers: int) -> int:
    """The planner before memory-sized windows (commit 955dbb4), kept here to compare against."""
    budget = (max_tile + 2 * pad) ** 2
    if workers <= 1:
        best, best_cost = max_tile, math.inf
        top = min(max(width, height), 4 * max_tile, tiling.MAX_TILE)
        for tile in range(max(128, max_tile // 2), top + 1, 8):
            plan = tiling.plan_tiles(width, height, tile, pad)
            if plan.window_width * plan.window_height > budget:
                continue
            cost = len(plan) * plan.window_width * plan.window_height
            if cost <= best_cost:
                best, best_cost = tile, cost
        return best
    for tile in range(max_tile, 127, -16):
        if len(tiling.plan_tiles(width, height, tile, pad)) >= 2 * workers:
            return tile
    return min(128, max_tile)


def estimate(plan: tiling.TilePlan, workers: int) -> float:
    """The planner's time estimate for ``plan`` (window-pixel units)."""
    cost = plan.window_width * plan.window_height + tiling.WINDOW_OVERHEAD_PIXELS
    return len(plan) * cost / workers + (1 - 1 / workers) * cost


def inferred(plan: tiling.TilePlan) -> float:
    """Inferred pixels over image pixels."""
    return len(plan) * plan.window_width * plan.window_height / (plan.width * plan.height)


def krau_ratio(width: int, height: int) -> tuple[int, float]:
    """krau's tile count and inferred pixels over image pixels (its ``tile_process``)."""
    padded_w, padded_h = (-(-n // KRAU_MOD) * KRAU_MOD for n in (width, height))

    def axis(length: int) -> list[int]:
        sides = []
        for start in range(0, length, KRAU_TILE):
            end = min(start + KRAU_TILE, length)
            sides.append(min(end + KRAU_PAD, length) - max(start - KRAU_PAD, 0))
        return sides

    columns, rows = axis(padded_w), axis(padded_h)
    return len(columns) * len(rows), sum(columns) * sum(rows) / (width * height)


def show_plans(engine: str, budget: int) -> None:
    registry = Registry(Settings())
    print(f"engine {engine}, budget {budget / 2**30:.1f} GiB per inference process")
    print(
        f"{'size':>10} {'model':24} {'W':>2} | {'old: n':>6} {'window':>9} {'px':>5} |"
        f" {'new: n':>6} {'window':>9} {'px':>5} {'tile':>5} | {'time new/old':>12}"
    )
    for width, height in SIZES:
        for name in MODELS:
            spec = registry.get(name)
            limit = memory.window_pixel_limit(spec.window_memory(engine), budget)
            old_pad = OLD_PAD.get(name, 32)
            for workers in WORKERS:
                old_tile = old_auto_tile_size(
                    width, height, old_pad, OLD_MAX_TILE.get(name, 256), workers
                )
                old = tiling.plan_tiles(width, height, old_tile, old_pad)
                t0 = time.perf_counter()
                tile = tiling.auto_tile_size(
                    width, height, spec.default_pad, spec.max_tile, workers, max_window_pixels=limit
                )
                elapsed = time.perf_counter() - t0
                new = tiling.plan_tiles(width, height, tile, spec.default_pad)
                print(
                    f"{width:>5}x{height:<4} {name:24} {workers:>2} |"
                    f" {len(old):>6} {old.window_width:>4}x{old.window_height:<4} {inferred(old):>5.2f} |"
                    f" {len(new):>6} {new.window_width:>4}x{new.window_height:<4} {inferred(new):>5.2f}"
                    f" {tile:>5} | {estimate(new, workers) / estimate(old, workers):>12.2f}"
                    f"  ({elapsed * 1e3:.2f} ms)"
                )
    spec = registry.get("realesrgan-x4plus-anime")
    limit = memory.window_pixel_limit(spec.window_memory(engine), budget)
    tile = tiling.auto_tile_size(600, 512, spec.default_pad, spec.max_tile, max_window_pixels=limit)
    ours = tiling.plan_tiles(600, 512, tile, spec.default_pad)
    count, ratio = krau_ratio(600, 512)
    print(
        f"\nx4plus-anime 600x512, 1 worker: krau {count} tiles, {ratio:.3f}x the image's pixels"
        f" (hard-pasted, 8 px of context); ours {len(ours)} window(s) of"
        f" {ours.window_width}x{ours.window_height}, {inferred(ours):.3f}x (pad {spec.default_pad},"
        " no seams beyond the pad's error)"
    )


# -- memory ---------------------------------------------------------------------


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def memory_child(engine: str, onnx: str, scale: int, width: int, height: int) -> None:
    """One measurement, in this (fresh) process; prints a JSON line."""
    start = _status_kib("VmRSS")
    rng = np.random.default_rng(0)
    small = rng.random((1, 3, 32, 32), dtype=np.float32)
    window = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    run: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
    if engine == "ort-cpu":
        from common.engines.ort import OrtEngine

        session = OrtEngine(Path(onnx), scale, "cpu", 2)
        session.run(small)
        loaded = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        run = session.run
    else:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}
        model = core.read_model(onnx)
        model.reshape([1, 3, 32, 32])
        core.compile_model(model, "CPU", config)([small])
        loaded = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        # OpenVINO plans its buffers when it compiles a static shape: count that too
        model.reshape([1, 3, height, width])
        compiled = core.compile_model(model, "CPU", config)

        def run(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            return np.asarray(compiled([batch])[0], dtype=np.float32)

    t0 = time.perf_counter()
    out = run(tiling.to_unit_float(window[None]))
    seconds = time.perf_counter() - t0
    tiling.from_unit_float(out[0], np.dtype(np.uint8))
    peak = _status_kib("VmHWM")
    print(
        json.dumps(
            {
                "session_bytes": (loaded - start) * 1024,
                "window_bytes": (peak - loaded) * 1024,
                "seconds": round(seconds, 3),
            }
        )
    )


def measure_memory(settings: Settings, engines: list[str]) -> None:
    registry = Registry(settings)
    print(f"{'engine':13} {'model':24} {'window':>9} {'peak MB':>8} {'B/px':>6} {'session MB':>10}")
    for engine in engines:
        for name, sides in MEMORY_SIZES.items():
            onnx = registry.onnx_path(name)  # convert here, not in the measured process
            ratios = []
            for side in sides:
                args = ["memory-child", engine, str(onnx), str(registry.get(name).scale)]
                result = subprocess.run(
                    [sys.executable, __file__, *args, str(side), str(side)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                data = json.loads(result.stdout.strip().splitlines()[-1])
                ratio = data["window_bytes"] / side**2
                ratios.append(ratio)
                print(
                    f"{engine:13} {name:24} {side:>4}x{side:<4} {data['window_bytes'] / 1e6:>8.0f}"
                    f" {ratio:>6.0f} {data['session_bytes'] / 1e6:>10.0f}",
                    flush=True,
                )
            print(f"{'':13} {name:24} max {max(ratios):.0f} B/px")


# -- pads -----------------------------------------------------------------------


def infer(engine: Any, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Float32 (3, H*s, W*s) model output of one (H, W, 3) uint8 window."""
    out: npt.NDArray[np.float32] = engine.run(tiling.to_unit_float(pixels[None]))[0]
    return out


def whole_image(engine: Any, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The reference: the extended image inferred in one window, cropped back; (H*s, W*s, 3)."""
    s, b = engine.scale, tiling.BORDER
    h, w = rgb.shape[:2]
    out = infer(engine, tiling.extend(rgb))[:, b * s : (b + h) * s, b * s : (b + w) * s]
    pixels: npt.NDArray[np.uint8] = tiling.from_unit_float(out, np.dtype(np.uint8))
    return pixels


def context_curve(
    engine: Any, rgb: npt.NDArray[np.uint8], reference: npt.NDArray[np.uint8], strip: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(mse[c], maxdiff[c])`` for contexts ``c = 0 .. strip // 2 - 1`` input px.

    ``mse[c]`` is the mean squared error (8-bit levels, over output pixels and
    channels) of the pixels whose nearest cut is ``c`` input px away, from strips
    ``strip`` px wide cut out of the extended image with no context.
    """
    s, b = engine.scale, tiling.BORDER
    h, w = rgb.shape[:2]
    ext = tiling.extend(rgb)
    ext_w = ext.shape[1]
    crop = (slice(None), slice(b * s, (b + h) * s), slice(b * s, (b + w) * s))
    canvas = np.zeros((3, ext.shape[0] * s, ext_w * s), np.float32)
    bounds = [*range(0, ext_w - strip // 2, strip), ext_w]
    context = np.empty(ext_w, np.int64)
    for x0, x1 in itertools.pairwise(bounds):
        canvas[:, :, x0 * s : x1 * s] = infer(engine, np.ascontiguousarray(ext[:, x0:x1]))
        x = np.arange(x0, x1)
        left = x - x0 if x0 > 0 else np.full_like(x, 1 << 30)
        right = x1 - 1 - x if x1 < ext_w else np.full_like(x, 1 << 30)
        context[x0:x1] = np.minimum(left, right)
    tiled = tiling.from_unit_float(canvas[crop], np.dtype(np.uint8))
    diff = tiled.astype(np.float64) - reference.astype(np.float64)
    per_column = np.repeat(context[b : b + w], s)  # output column -> its input column's context
    size = strip // 2
    mse, maxdiff = np.zeros(size), np.zeros(size)
    for c in range(size):
        columns = diff[:, per_column == c]
        if columns.size:
            mse[c] = float(np.mean(columns**2))
            maxdiff[c] = float(np.abs(columns).max())
    return mse, maxdiff


def predicted_mse(plan: tiling.TilePlan, mse: npt.NDArray[np.float64]) -> float:
    """Whole-image MSE of ``plan`` from the context curve, errors of each cut added.

    (H, W, 3) outputs; the curve's contexts are input px.
    """
    tail = float(mse[-4:].mean())  # beyond the measured contexts: the last level, not 0
    ext_w, ext_h = plan.width + 2 * plan.border, plan.height + 2 * plan.border

    def side_errors(start: int, length: int, origin: int, window: int, extended: int) -> Any:
        pos = np.arange(start, start + length) + plan.border
        err = np.zeros(length)
        for cut, dist in (
            (origin > 0, pos - origin),
            (origin + window < extended, origin + window - 1 - pos),
        ):
            if cut:
                err += np.where(dist < len(mse), mse[np.minimum(dist, len(mse) - 1)], tail)
        return err

    total = 0.0
    for t in plan.tiles:
        ex = side_errors(t.x, t.width, t.window_x, plan.window_width, ext_w)
        ey = side_errors(t.y, t.height, t.window_y, plan.window_height, ext_h)
        total += float(ex.sum()) * t.height + float(ey.sum()) * t.width
    return total / (plan.width * plan.height)


def psnr_of(mse: float) -> float:
    return math.inf if mse <= 0 else 10 * math.log10(255.0**2 / mse)


def tiled_output(engine: Any, rgb: npt.NDArray[np.uint8], plan: tiling.TilePlan) -> Any:
    ext = tiling.extend(rgb)
    canvas = tiling.Canvas(plan, engine.scale, 3, np.dtype(np.uint8))
    for t in plan.tiles:
        out = infer(engine, np.ascontiguousarray(tiling.window(ext, plan, t)))
        canvas.paste(t, tiling.tile_core(plan, t, out, engine.scale, 3, np.dtype(np.uint8)))
    return canvas.pixels


def load_image(path: Path, crop: str | None) -> npt.NDArray[np.uint8]:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if crop:
        size, _, offset = crop.partition("+")
        w, h = (int(v) for v in size.split("x"))
        x, y = (int(v) for v in offset.split("+")) if offset else (0, 0)
        rgb = np.ascontiguousarray(rgb[y : y + h, x : x + w])
    return rgb


def measure_pads(settings: Settings, args: argparse.Namespace) -> None:
    from common.engines.ort import OrtEngine

    registry = Registry(settings)
    spec = registry.get(args.model)
    engine = OrtEngine(registry.onnx_path(args.model), spec.scale, "cpu", settings.threads)
    rgb = load_image(Path(args.image), args.crop)
    h, w = rgb.shape[:2]
    # the reference and the curve cost a whole-image inference each: keep them between runs
    stem = f"srcluster-pads-{args.model}-{Path(args.image).stem}-{args.crop}"
    cache = Path(tempfile.gettempdir()) / f"{stem}.npy"
    t0 = time.perf_counter()
    if cache.is_file():
        reference = np.load(cache)
    else:
        reference = whole_image(engine, rgb)
        np.save(cache, reference)
    print(f"{args.model} on {args.image} {w}x{h}: reference in {time.perf_counter() - t0:.0f} s")
    mse = np.zeros(1)
    if args.pads:
        t0 = time.perf_counter()
        curve = cache.with_name(f"{stem}-strip{args.strip}.npz")
        if curve.is_file():
            saved = np.load(curve)
            mse, maxdiff = saved["mse"], saved["maxdiff"]
        else:
            mse, maxdiff = context_curve(engine, rgb, reference, args.strip)
            np.savez(curve, mse=mse, maxdiff=maxdiff)
        print(
            f"curve in {time.perf_counter() - t0:.0f} s; context c -> MSE, PSNR at c, max |diff| at >= c"
        )
        for c in range(0, len(mse), 4):
            print(
                f"  c={c:3}  mse={mse[c]:.5f}  {psnr_of(mse[c]):6.1f} dB  max>={maxdiff[c:].max():.0f}"
            )
        show_predictions(spec, args.pads, mse, maxdiff)
    for pad in args.check:
        plan = tiling.plan_tiles(w, h, args.check_tile, pad)
        t0 = time.perf_counter()
        out = tiled_output(engine, rgb, plan)
        diff = out.astype(np.float64) - reference.astype(np.float64)
        band = seam_band(plan, engine.scale)
        predicted = f", predicted {psnr_of(predicted_mse(plan, mse)):.1f}" if args.pads else ""
        print(
            f"check pad {pad} tile {args.check_tile} ({len(plan)} windows of"
            f" {plan.window_width}x{plan.window_height}) in {time.perf_counter() - t0:.0f} s:"
            f" measured {psnr_of(float(np.mean(diff**2))):.1f} dB{predicted},"
            f" max |diff| {np.abs(diff).max():.0f};"
            f" seam band (corners included) {psnr_of(float(np.mean(diff[band] ** 2))):.1f} dB",
            flush=True,
        )


def show_predictions(
    spec: Any, pads: list[int], mse: npt.NDArray[np.float64], maxdiff: npt.NDArray[np.float64]
) -> None:
    limit = memory.window_pixel_limit(spec.window_memory("ort-cpu"), memory.inference_budget())
    print("pad -> predicted whole-image PSNR of the auto plan (size,workers:windows); seam band")
    for pad in pads:
        cells = []
        for width, height in SIZES[:2]:
            for workers in (2, 4, 8):
                tile = tiling.auto_tile_size(
                    width, height, pad, spec.max_tile, workers, max_window_pixels=limit
                )
                plan = tiling.plan_tiles(width, height, tile, pad)
                predicted = psnr_of(predicted_mse(plan, mse))
                cells.append(f"{width}x{height},{workers}:{len(plan)} {predicted:.1f}")
        dense = tiling.plan_tiles(1280, 720, 128, pad)
        cells.append(f"tile128 {psnr_of(predicted_mse(dense, mse)):.1f}")
        band = float(mse[pad : pad + 8].mean()) if pad + 8 <= len(mse) else float(mse[-8:].mean())
        worst = maxdiff[pad:].max() if pad < len(mse) else 0
        print(f"  pad {pad:3}: {'; '.join(cells)} | {psnr_of(band):.1f} dB, max {worst:.0f}")


def seam_band(plan: tiling.TilePlan, scale: int, width: int = 8) -> npt.NDArray[np.bool_]:
    """Output pixels (H*s, W*s) of cores within ``width`` input px of their window's pad at a cut."""
    mask = np.zeros((plan.height, plan.width), bool)
    ext_w, ext_h = plan.width + 2 * plan.border, plan.height + 2 * plan.border
    for t in plan.tiles:
        core = mask[t.y : t.y + t.height, t.x : t.x + t.width]
        if t.window_x > 0:
            core[:, : max(0, width - (t.x + plan.border - t.window_x - plan.pad))] = True
        if t.window_x + plan.window_width < ext_w:
            right = t.window_x + plan.window_width - (t.x + t.width + plan.border) - plan.pad
            core[:, core.shape[1] - max(0, width - right) :] = True
        if t.window_y > 0:
            core[: max(0, width - (t.y + plan.border - t.window_y - plan.pad))] = True
        if t.window_y + plan.window_height < ext_h:
            bottom = t.window_y + plan.window_height - (t.y + t.height + plan.border) - plan.pad
            core[core.shape[0] - max(0, width - bottom) :] = True
    return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "memory-child":
        engine, onnx, scale, width, height = sys.argv[2:7]
        memory_child(engine, onnx, int(scale), int(width), int(height))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="plans", choices=("plans", "memory", "pads"))
    parser.add_argument("--engine", default="ort-cpu", choices=memory.ENGINE_KEYS)
    parser.add_argument("--budget-gib", type=float, default=None, help="default: this host's")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--model", default="realesrgan-x4plus", choices=BUILTIN_NAMES)
    parser.add_argument("--image", default=str(PHOTO))
    parser.add_argument("--crop", default=None, help="WxH+X+Y of the image")
    parser.add_argument("--strip", type=int, default=128)
    parser.add_argument("--pads", type=int, nargs="*", default=[8, 12, 16, 20, 24, 28, 32, 40, 48])
    parser.add_argument("--check", type=int, nargs="*", default=[], help="pads of real tiled runs")
    parser.add_argument("--check-tile", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=args.data_dir or Path(tmp), threads=2)
        if args.command == "memory":
            measure_memory(settings, ["ort-cpu", "openvino-cpu"])
        elif args.command == "pads":
            measure_pads(settings, args)
        else:
            budget = (
                memory.inference_budget()
                if args.budget_gib is None
                else int(args.budget_gib * 2**30)
            )
            show_plans(args.engine, budget)


if __name__ == "__main__":
    main()
