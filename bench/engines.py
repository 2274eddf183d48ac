"""Engines side by side: speed and PSNR of each engine/precision against ORT fp32.

    .venv/bin/python bench/engines.py [--runs 5] [--threads 2] [--size 600x512] [--anime 64]

Same windows, same threads, one process, runs interleaved round-robin (so a
neighbour's load hits every engine alike), minimum of ``--runs`` warm runs:

* compact model (``realesr-animevideov3``) on the test photo resized to
  ``--size``, cut into the windows the pipeline plans for it (600x512: two
  548x336 windows): one window, and every window in one ``run`` call;
* ``realesrgan-x4plus-anime`` on two ``--anime`` px crops of the photo.

Rows: ORT fp32 (the reference), ORT with the fp16 ONNX variant (CPU provider:
numerics of the GPU path, not its speed), OpenVINO fp32 with one window
(LATENCY hint), with all windows at once (THROUGHPUT hint) and with them one by
one (LATENCY, the alternative to THROUGHPUT), OpenVINO bf16
where the CPU has it natively. Prints ratios (>1: faster than ORT fp32) and
PSNR against ORT fp32's output, and what ``auto`` picks on this host.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import tiling
from common.engines import Engine, build_engine
from common.engines.host import detect_host
from common.engines.quality import psnr
from common.engines.select import Choice, choose
from common.models import Registry
from common.settings import Settings

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "photo.png"

Batch = npt.NDArray[np.float32]


def photo(width: int, height: int) -> npt.NDArray[np.uint8]:
    """The test photo resized to ``width`` x ``height``, RGB uint8."""
    bgr = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    resized = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))


def planned_windows(rgb: npt.NDArray[np.uint8], pad: int, max_tile: int) -> Batch:
    """The windows the pipeline's automatic plan cuts from ``rgb``, as one ``[N, 3, h, w]`` batch."""
    height, width = rgb.shape[:2]
    tile = tiling.auto_tile_size(width, height, pad, max_tile, 1)
    plan = tiling.plan_tiles(width, height, tile, pad)
    extended = tiling.extend(rgb)
    return tiling.to_unit_float(np.stack([tiling.window(extended, plan, t) for t in plan.tiles]))


def crops(rgb: npt.NDArray[np.uint8], side: int) -> Batch:
    """Two ``side`` px crops of ``rgb`` (top-left and bottom-right), as one batch."""
    h, w = rgb.shape[:2]
    pair = [rgb[:side, :side], rgb[h - side :, w - side :]]
    return tiling.to_unit_float(np.stack(pair))


def timed_rounds(
    jobs: dict[tuple[str, int], Callable[[], Batch]], runs: int
) -> dict[tuple[str, int], tuple[float, Batch]]:
    """Each job's minimum time over ``runs`` rounds (after one warm-up round) and its last output."""
    outputs = {label: job() for label, job in jobs.items()}  # warm: compile, arenas, caches
    best = dict.fromkeys(jobs, float("inf"))
    for _ in range(runs):
        for label, job in jobs.items():
            start = time.perf_counter()
            outputs[label] = job()
            best[label] = min(best[label], time.perf_counter() - start)
    return {label: (best[label], outputs[label]) for label in jobs}


def bench_case(
    title: str, model: str, batch: Batch, settings: Settings, threads: int, runs: int
) -> None:
    registry = Registry(settings)
    spec = registry.get(model)
    path = registry.onnx_path(model)
    host = detect_host()

    def make(engine: str, precision: str) -> Engine:
        return build_engine(path, spec.scale, Choice(engine, precision, "cpu", False), threads)

    engines: dict[str, Engine] = {
        "ort fp32": make("ort", "fp32"),
        "ort fp16 variant": make("ort", "fp16"),
    }
    if host.has_openvino:
        engines["openvino fp32"] = make("openvino", "fp32")
        if host.native_bf16:
            engines["openvino bf16"] = make("openvino", "bf16")
    n = batch.shape[0]
    one, every = np.ascontiguousarray(batch[:1]), batch
    jobs: dict[tuple[str, int], Callable[[], Batch]] = {}
    for label, engine in engines.items():
        jobs[label, 1] = lambda e=engine: e.run(one)
        if n > 1 and label != "ort fp16 variant":
            jobs[label, n] = lambda e=engine: e.run(every)
    if n > 1 and "openvino fp32" in engines:
        # the alternative to THROUGHPUT: the same windows one at a time under LATENCY
        ov = engines["openvino fp32"]
        jobs["openvino fp32 1 by 1", n] = lambda: np.concatenate(
            [ov.run(np.ascontiguousarray(batch[i : i + 1])) for i in range(n)]
        )
    results = timed_rounds(jobs, runs)

    _, h, w = batch.shape[1:]
    print(f"\n{title}: {model}, {n} window(s) of {w}x{h}, {threads} threads, min of {runs} runs")
    print(f"  {'engine':<22} {'windows':>7} {'seconds':>8} {'vs ORT fp32':>11} {'PSNR dB':>8}")
    for (label, count), (seconds, out) in results.items():
        ref_seconds, ref_out = results["ort fp32", count]
        db = "-" if label == "ort fp32" else f"{psnr(out, ref_out):.1f}"
        ratio = ref_seconds / seconds
        print(f"  {label:<22} {count:>7} {seconds:>8.3f} {ratio:>10.2f}x {db:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs per row (minimum reported)")
    parser.add_argument("--threads", type=int, default=0, help="threads per engine (0: all cores)")
    parser.add_argument("--size", default="600x512", help="compact-model image, WxH")
    parser.add_argument("--anime", type=int, default=64, help="side of the x4plus-anime crops")
    args = parser.parse_args()

    settings = Settings.from_env()
    threads = args.threads or settings.session_threads()
    host = detect_host()
    auto = choose(settings, host)
    print(f"host: {host.cpu_name}; OpenVINO {host.openvino_version or 'absent'}")
    print(f"  CPU optimization capabilities: {', '.join(host.cpu_capabilities) or '-'}")
    print(f"  ORT providers: {', '.join(host.ort_providers)}")
    print(f"  auto picks: {auto.engine} {auto.precision} (provider {auto.provider})")

    width, height = (int(v) for v in args.size.split("x"))
    registry = Registry(settings)
    compact = registry.get("realesr-animevideov3")
    windows = planned_windows(photo(width, height), compact.default_pad, compact.max_tile)
    bench_case(
        f"compact, {width}x{height} photo", compact.name, windows, settings, threads, args.runs
    )
    anime = crops(photo(160, 120), args.anime)
    bench_case(
        "x4plus-anime, small windows",
        "realesrgan-x4plus-anime",
        anime,
        settings,
        threads,
        args.runs,
    )


if __name__ == "__main__":
    main()
