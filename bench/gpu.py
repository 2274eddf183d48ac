"""The GPU path, measured: CUDA (and TensorRT when present) on 1080p input, fp16 vs fp32, batches.

    .venv/bin/python bench/gpu.py [--models realesr-animevideov3,realesrgan-x4plus]
                                  [--batches 1,2,4,8] [--window 256] [--runs 5]

Needs ``onnxruntime-gpu`` with a working CUDA (``deploy/README.md``); without
one it says so and exits with status 2, measuring nothing. For each model it
times, on the same windows of a 1920x1080 photo-like image, min of ``--runs``
warm runs:

- ORT CUDA fp32 and fp16 (the fp16 variant of ``common.engines.variants``),
  one window at a time and in batches of equal windows (``--batches``);
- ``cudnn_conv_algo_search`` EXHAUSTIVE vs HEURISTIC (first run included, since
  the search is paid once per shape);
- I/O binding on vs off;
- TensorRT fp16 when its provider is present (the first run, which builds the
  TensorRT engine, is reported separately);

and prints milliseconds per window, megapixels per second for the whole
1080p image's windows, ratios to CUDA fp32 batch 1, and PSNR of fp16 against
fp32 (the quality gate is 50 dB).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.local_pipeline import photo_like  # noqa: E402
from common import tiling  # noqa: E402
from common.engines.ort import OrtEngine  # noqa: E402
from common.engines.quality import psnr  # noqa: E402
from common.models import Registry  # noqa: E402
from common.settings import Settings  # noqa: E402


def timed(run: Callable[[], object], runs: int) -> tuple[float, float]:
    """(first run, min of the following ``runs``) in seconds."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return first, best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="realesr-animevideov3,realesrgan-x4plus")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--window", type=int, default=256, help="window side (tile + 2 pad)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        print(
            "bench/gpu.py: this ONNX Runtime has no CUDA provider "
            f"(it offers {', '.join(providers)}); install onnxruntime-gpu on a GPU host. "
            "Nothing measured.",
            file=sys.stderr,
        )
        return 2
    settings = Settings.from_env(data_dir=Path(tempfile.gettempdir()) / "srcluster-gpu-bench")
    registry = Registry(settings)
    image = photo_like(1920, 1080)
    extended = tiling.extend(image)
    side = args.window
    batches = [int(b) for b in args.batches.split(",")]
    windows = [
        extended[y : y + side, x : x + side]
        for y in range(0, extended.shape[0] - side + 1, side)
        for x in range(0, extended.shape[1] - side + 1, side)
    ][: max(batches)]
    whole_windows = math.ceil(1920 / (side - 2 * 32)) * math.ceil(1080 / (side - 2 * 32))
    print(f"ORT {ort.__version__}, providers {', '.join(providers)}")
    print(f"1920x1080 input, windows of {side}x{side}, ~{whole_windows} windows per image")
    for model in args.models.split(","):
        spec = registry.get(model)
        path = registry.onnx_path(model)
        reference = None
        base_ms = None
        print(f"\n{model} (x{spec.scale})")
        variants: list[tuple[str, dict[str, object]]] = [
            ("cuda fp32", {"precision": "fp32"}),
            ("cuda fp16", {"precision": "fp16"}),
            ("cuda fp16 heuristic", {"precision": "fp16", "cudnn_conv_algo_search": "HEURISTIC"}),
            ("cuda fp16 no binding", {"precision": "fp16", "io_binding": False}),
        ]
        if "TensorrtExecutionProvider" in providers:
            variants.append(("tensorrt fp16", {"precision": "fp16", "tensorrt": True}))
        for label, options in variants:
            engine = OrtEngine(path, spec.scale, "cuda", name=model, **options)  # type: ignore[arg-type]
            for batch_size in batches:
                batch = tiling.to_unit_float(np.stack(windows[:batch_size]))
                first, best = timed(lambda: engine.run(batch), args.runs)  # noqa: B023
                per_window = best / batch_size * 1000
                if base_ms is None:
                    base_ms = per_window
                quality = ""
                if batch_size == 1:
                    out = engine.run(batch)
                    if reference is None:
                        reference = out
                    else:
                        quality = f"  {psnr(out, reference):.1f} dB vs fp32"
                mp_s = (side * side * batch_size / 1e6) / best
                print(
                    f"  {label:22} batch {batch_size:2}: {per_window:7.2f} ms/window "
                    f"({mp_s:6.2f} MP/s in, first run {first:.2f} s, "
                    f"{base_ms / per_window:5.2f}x fp32 b1){quality}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
