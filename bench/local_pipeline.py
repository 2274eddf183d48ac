"""Local pipeline time over raw whole-image ONNX Runtime time, measured side by side.

    .venv/bin/python bench/local_pipeline.py [--model realesr-animevideov3] [--size 640x480] [--repeat 3]

For a photo-like image, runs alternately (a) raw whole-image inference, the
image in one ORT call with no tiling, no reflection and no image I/O, and
(b) the local pipeline (plan, reflect, tile, infer, crop, stitch, finish) with
its automatic tile and the model's default pad. Prints the median of each,
their ratio and the overlap waste of the plan. The ratio is the cost of
tiling; the absolute seconds depend on this machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import tiling
from common.engines import get_engine
from common.imageio import Image
from common.models import Registry
from common.params import parse_params
from common.pipeline import make_plan, run_plan
from common.settings import Settings

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "photo.png"


def photo_like(width: int, height: int) -> np.ndarray:
    """The test photo resized to ``width`` x ``height`` with mild sensor-like noise (RGB uint8)."""
    bgr = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(
        cv2.resize(bgr, (width, height), interpolation=cv2.INTER_CUBIC), cv2.COLOR_BGR2RGB
    )
    noise = np.random.default_rng(0).normal(0, 3, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--tile", type=int, default=None, help="tile size (default: auto)")
    parser.add_argument("--pad", type=int, default=None, help="tile pad (default: the model's)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    width, height = (int(v) for v in args.size.split("x"))
    settings = Settings.from_env()
    registry = Registry(settings)
    spec = registry.get(args.model)
    engine = get_engine(spec.name, settings)
    rgb = photo_like(width, height)
    image = Image(pixels=rgb, format="png", icc=None, exif=None)
    params = parse_params(model=spec.name, tile_size=args.tile, tile_pad=args.pad)
    plan = make_plan(image, params, spec, settings)
    whole = tiling.to_unit_float(rgb[None])

    engine.run(
        tiling.to_unit_float(
            tiling.window(tiling.extend(rgb), plan.tiles, plan.tiles.tiles[0])[None]
        )
    )
    raw_times, pipeline_times = [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        engine.run(whole)
        raw_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        run_plan(plan, rgb, engine)
        pipeline_times.append(time.perf_counter() - start)

    raw, pipe = statistics.median(raw_times), statistics.median(pipeline_times)
    tiles = plan.tiles
    print(
        f"model {spec.name} x{spec.scale}, image {width}x{height}, provider {engine.provider}, "
        f"threads {settings.session_threads()}, repeats {args.repeat}"
    )
    print(
        f"plan: tile {plan.tile}, pad {plan.pad}, {len(tiles)} tiles of "
        f"{tiles.window_width}x{tiles.window_height}, overlap waste {tiles.waste:.1%}"
    )
    print(f"raw whole-image ORT: {raw:.3f} s ({raw / (width * height / 1e6):.2f} s/MP)")
    print(f"local pipeline:      {pipe:.3f} s ({pipe / (width * height / 1e6):.2f} s/MP)")
    print(f"ratio pipeline / raw: {pipe / raw:.2f}")


if __name__ == "__main__":
    main()
