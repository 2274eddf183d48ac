"""Engine selection, quality gates and the output guard, on real models and real engines.

The gate: every engine/precision ``auto`` may pick on this host, and the fp16
ONNX variant (the GPU path's numerics, run on ORT's CPU provider), must give
>= 50 dB against ORT fp32 with no NaN/black tile, for every built-in model, on
crops of the real test photo. A deliberately wrong precision must fail it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import numpy_helper

from common import tiling
from common.engines import Engine, build_engine, clear_engines, get_engine
from common.engines.guard import GuardedEngine
from common.engines.host import Host, detect_host
from common.engines.openvino import OpenVinoEngine
from common.engines.ort import OrtEngine, choose_providers, provider_config
from common.engines.quality import MIN_PSNR_DB, gate, psnr
from common.engines.select import Choice, choose, verdict_key, verify
from common.engines.variants import fp16_path
from common.errors import ConfigError, ModelError
from common.models import BUILTIN_NAMES, Registry
from common.settings import Settings

Batch = npt.NDArray[np.float32]

HOST = detect_host()

# Side of the photo crops per model: x4plus (23 RRDB blocks) is slow on CPU.
CROP = {"realesrgan-x4plus": 24, "realesrgan-x4plus-anime": 32}
COMPACT_CROP = 40


def gated_picks(host: Host) -> list[tuple[str, str]]:
    """Every (engine, precision) but the reference that ``auto`` may serve with on ``host``'s CPU, plus the fp16 variant."""
    picks = {("ort", "fp16")}  # the GPU path's numerics, on ORT's CPU provider
    for engine in ("auto", "openvino") if host.has_openvino else ("auto",):
        choice = choose(Settings(engine=engine, provider="cpu"), host)
        picks.add((choice.engine, choice.precision))
    picks.discard(("ort", "fp32"))  # the reference itself
    return sorted(picks)


GATED = gated_picks(HOST)
AUTO = choose(Settings(provider="cpu"), HOST)


def crops(photo: npt.NDArray[np.uint8], side: int) -> Batch:
    """Two ``side`` px crops of the photo, textured middle and an edge, as a ``[2, 3, side, side]`` batch."""
    h, w = photo.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    middle = photo[y : y + side, x : x + side]
    corner = photo[h - side :, :side]
    return tiling.to_unit_float(np.stack([middle, corner]))


@pytest.fixture(scope="module")
def references(
    model_registry: Registry, photo: npt.NDArray[np.uint8]
) -> dict[str, tuple[Batch, Batch]]:
    """Per model, (input crops, ORT fp32 output): the reference every gate compares against."""
    table = {}
    for name in BUILTIN_NAMES:
        spec = model_registry.get(name)
        batch = crops(photo, CROP.get(name, COMPACT_CROP))
        engine = OrtEngine(model_registry.onnx_path(name), spec.scale, "cpu", threads=2)
        table[name] = (batch, engine.run(batch))
    return table


def make(registry: Registry, name: str, engine: str, precision: str) -> Engine:
    spec = registry.get(name)
    choice = Choice(engine, precision, "cpu", automatic=False)
    return build_engine(registry.onnx_path(name), spec.scale, choice, threads=2, name=name)


# -- the quality gate ---------------------------------------------------------


@pytest.mark.parametrize(("engine", "precision"), GATED, ids=["-".join(p) for p in GATED])
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_quality_gate(
    name: str,
    engine: str,
    precision: str,
    model_registry: Registry,
    references: dict[str, tuple[Batch, Batch]],
) -> None:
    batch, reference = references[name]
    candidate = make(model_registry, name, engine, precision)
    out = candidate.run(batch)
    assert out.shape == reference.shape and out.dtype == np.float32
    result = gate(out, reference, batch)
    assert result.passed, f"{candidate.describe()} on {name}: {result}"


def int8_weights(src: Path, dst: Path) -> Path:
    """``src`` with every conv weight rounded to per-tensor symmetric int8: a deliberately wrong precision."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim == 4:
            step = float(np.abs(w).max()) / 127.0
            rounded = (np.round(w / step) * step).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    onnx.save(model, str(dst))
    return dst


def test_gate_fails_a_wrong_precision(
    model_registry: Registry, references: dict[str, tuple[Batch, Batch]], tmp_path: Path
) -> None:
    name = "realesr-animevideov3-x2"
    batch, reference = references[name]
    wrong = int8_weights(model_registry.onnx_path(name), tmp_path / "int8.onnx")
    result = gate(OrtEngine(wrong, 2, "cpu", threads=2).run(batch), reference, batch)
    assert not result.passed and "PSNR" in result.reason
    assert 30 < result.psnr_db < MIN_PSNR_DB  # int8 weights measured ~44 dB


def test_gate_fails_nan_and_black_tiles(references: dict[str, tuple[Batch, Batch]]) -> None:
    batch, reference = references["realesr-animevideov3"]
    nan = reference.copy()
    nan[1, 0, 5, 5] = np.nan
    result = gate(nan, reference, batch)
    assert not result.passed and "NaN" in result.reason and result.psnr_db == -math.inf
    black = reference.copy()
    black[0] = 0.0
    result = gate(black, reference, batch)
    assert not result.passed and "black" in result.reason and "[0]" in result.reason
    assert gate(reference, reference, batch).passed
    assert psnr(reference, reference) == math.inf


# -- selection -------------------------------------------------------------------


def host(capabilities: tuple[str, ...] = ("FP32", "INT8"), cuda: bool = False) -> Host:
    """A host described by hand: what another CPU or a GPU box would report."""
    providers = ("CUDAExecutionProvider",) if cuda else ()
    return Host("some CPU", capabilities, "2026.4", (*providers, "CPUExecutionProvider"))


def test_auto_rule() -> None:
    auto = Settings()
    assert choose(auto, host()) == Choice("openvino", "fp32", "cpu", True)
    assert choose(auto, host(("FP32", "BF16", "INT8"))) == Choice("openvino", "bf16", "cpu", True)
    assert choose(auto, host(cuda=True)) == Choice("ort", "fp16", "auto", True)
    assert choose(Settings(provider="cpu"), host(cuda=True)).engine == "openvino"
    assert choose(auto, Host("old CPU", (), "", ("CPUExecutionProvider",))).engine == "ort"
    # ort on a CPU: fp32 by default; fp16 (the variant) only when asked
    assert choose(Settings(engine="ort"), host()) == Choice("ort", "fp32", "cpu", True)
    assert choose(Settings(engine="ort", precision="fp16"), host()).precision == "fp16"
    assert choose(Settings(precision="fp16"), host()) == Choice("ort", "fp16", "cpu", True)
    assert not choose(Settings(engine="openvino", precision="fp32"), host()).automatic


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(precision="int8"), "int8"),
        (Settings(engine="ort", precision="int8"), "int8"),
        (Settings(precision="bf16"), "not native"),
        (Settings(engine="openvino", precision="bf16"), "not native"),
        (Settings(engine="ort", precision="bf16"), "bf16"),
        (Settings(engine="openvino", provider="cuda"), "CPU"),
    ],
)
def test_precisions_not_offered_are_config_errors(settings: Settings, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        choose(settings, host())


def test_get_engine_refuses_int8_and_emulated_bf16(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="int8"):
        get_engine("realesr-animevideov3-x2", dataclasses.replace(settings, precision="int8"))
    if not HOST.native_bf16:
        bf16 = dataclasses.replace(settings, engine="openvino", precision="bf16")
        with pytest.raises(ConfigError, match="not native"):
            get_engine("realesr-animevideov3-x2", bf16)


def test_auto_engine_says_what_it_is(settings: Settings) -> None:
    clear_engines()
    engine = get_engine("realesr-animevideov3-x2", settings)
    pick = choose(settings, HOST)
    assert (engine.name, engine.scale, engine.precision) == (
        "realesr-animevideov3-x2",
        2,
        pick.precision,
    )
    assert engine.provider == ("openvino-cpu" if pick.engine == "openvino" else "cpu")
    assert engine.describe().startswith(f"{pick.engine} {pick.precision} on ")
    assert "2 threads" in engine.describe()
    assert engine.run(np.full((1, 3, 8, 8), 0.5, np.float32)).shape == (1, 3, 16, 16)


def test_verify_caches_its_verdict(model_registry: Registry, tmp_path: Path) -> None:
    name = "realesr-animevideov3-x2"
    path = tmp_path / "model.onnx"
    path.write_bytes(model_registry.onnx_path(name).read_bytes())
    candidate = make(model_registry, name, "ort", "fp16")
    built = []

    def reference() -> Engine:
        built.append(1)
        return OrtEngine(path, 2, "cpu", threads=2)

    first = verify(candidate, reference, path, "ort-fp16|test")
    assert first.passed and first.reason == "" and built == [1]
    again = verify(candidate, reference, path, "ort-fp16|test")
    assert again.passed and again.reason == "cached" and built == [1]
    assert (tmp_path / "model.gates.json").is_file()


@pytest.mark.skipif(AUTO.is_reference, reason="auto is ORT fp32 here: nothing to fall back from")
def test_auto_pick_failing_the_gate_serves_ort_fp32(settings: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(settings, models_dir=tmp_path)
    path = Registry(settings).onnx_path("realesr-animevideov3-x2")
    key = verdict_key(AUTO, "openvino-cpu" if AUTO.engine == "openvino" else "cpu", HOST)
    verdicts = {key: {"passed": False, "psnr_db": 12.0}}  # as a failed probe leaves it
    path.with_name(path.stem + ".gates.json").write_text(json.dumps(verdicts))
    clear_engines()
    engine = get_engine("realesr-animevideov3-x2", settings)
    assert (engine.provider, engine.precision) == ("cpu", "fp32")
    assert engine.fallback() is None
    clear_engines()


# -- OpenVINO -------------------------------------------------------------------


@pytest.mark.skipif(not HOST.has_openvino, reason="OpenVINO cannot load here")
def test_openvino_engine(
    model_registry: Registry, references: dict[str, tuple[Batch, Batch]]
) -> None:
    name = "realesr-animevideov3-x2"
    batch, reference = references[name]
    engine = OpenVinoEngine(model_registry.onnx_path(name), 2, threads=2, name=name)
    assert (engine.provider, engine.precision) == ("openvino-cpu", "fp32")
    # one window runs under LATENCY, several under THROUGHPUT: the same numbers either way
    single = np.concatenate([engine.run(batch[i : i + 1]) for i in range(2)])
    both = engine.run(batch)
    np.testing.assert_allclose(both, single, atol=1e-5)
    assert psnr(both, reference) > 90
    h, w = batch.shape[2:]
    compiled = engine.compiled_for(h, w, "THROUGHPUT")
    assert compiled is engine.compiled_for(h, w, "THROUGHPUT")  # compiled once per shape
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert engine.run(batch[:0]).shape == (0, 3, 2 * h, 2 * w)

    # several threads at once, each its own requests
    results: dict[int, Batch] = {}

    def work(i: int) -> None:
        results[i] = engine.run(batch[i % 2 : i % 2 + 1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, out in results.items():
        np.testing.assert_allclose(out, single[i % 2 : i % 2 + 1], atol=1e-5)


# -- ORT: fp16 variant, I/O binding, GPU options -------------------------------------


def test_fp16_variant_is_cached_beside_the_model(model_registry: Registry) -> None:
    fp32 = model_registry.onnx_path("realesr-animevideov3-x3")
    variant = fp16_path(fp32)
    assert variant.parent == fp32.parent and variant.name.endswith(".fp16.onnx")
    mtime = variant.stat().st_mtime_ns
    assert fp16_path(fp32) == variant and variant.stat().st_mtime_ns == mtime
    graph = onnx.load(str(variant)).graph
    # float32 in and out: the engine contract does not change with precision
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)


def test_io_binding_path_matches_plain_run(model_registry: Registry) -> None:
    path = model_registry.onnx_path("realesr-animevideov3-x2")
    batch = np.random.default_rng(1).random((2, 3, 12, 10), dtype=np.float32)
    bound = OrtEngine(path, 2, "cpu", threads=2, io_binding=True)
    assert bound.io_binding and bound.describe() == "ort fp32 on cpu, 2 threads"
    np.testing.assert_allclose(
        bound.run(batch), OrtEngine(path, 2, "cpu", threads=2).run(batch), atol=1e-6
    )


def test_gpu_provider_choice_and_options() -> None:
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cuda", gpu, tensorrt=True) == gpu
    assert choose_providers("auto", ["CPUExecutionProvider"], tensorrt=True) == [
        "CPUExecutionProvider"
    ]
    config = provider_config(gpu, precision="fp16", cache_dir=Path("/cache"))
    assert config[0] == (
        "TensorrtExecutionProvider",
        {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": "/cache",
        },
    )
    assert config[1] == ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "EXHAUSTIVE"})
    assert config[2] == "CPUExecutionProvider"
    with pytest.raises(ConfigError, match="int8"):
        OrtEngine(Path("unused.onnx"), 2, "cpu", precision="int8")


# -- the guard ---------------------------------------------------------------------


class Corrupting:
    """A real engine whose output for chosen tiles is replaced: the one injected fault."""

    def __init__(self, engine: Engine, tiles: list[int], value: float) -> None:
        self.engine, self.tiles, self.value = engine, tiles, value
        self.name, self.scale = engine.name, engine.scale
        self.provider, self.precision = engine.provider, engine.precision

    def describe(self) -> str:
        return "corrupting " + self.engine.describe()

    def run(self, batch: Batch) -> Batch:
        out = self.engine.run(batch).copy()
        out[self.tiles] = self.value
        return out


@pytest.mark.parametrize("value", [np.nan, np.inf, 0.0], ids=["nan", "inf", "black"])
def test_guard_reruns_bad_tiles_in_fp32(
    value: float, model_registry: Registry, references: dict[str, tuple[Batch, Batch]]
) -> None:
    name = "realesr-animevideov3-x2"
    batch, reference = references[name]
    primary = make(model_registry, name, AUTO.engine, AUTO.precision)
    path = model_registry.onnx_path(name)
    guarded = GuardedEngine(
        Corrupting(primary, [1], value), lambda: OrtEngine(path, 2, "cpu", threads=2)
    )
    out = guarded.run(batch)
    assert guarded.reruns == 1
    np.testing.assert_allclose(out[1], reference[1], atol=1e-5)  # rerun in ORT fp32
    np.testing.assert_allclose(out[0], primary.run(batch[:1])[0], atol=1e-5)  # left alone
    assert gate(out, reference, batch).passed


def test_guard_never_returns_nan_from_the_reference(model_registry: Registry) -> None:
    path = model_registry.onnx_path("realesr-animevideov3-x2")
    ort_fp32 = OrtEngine(path, 2, "cpu", threads=2)
    batch = np.full((2, 3, 8, 8), 0.5, np.float32)
    with pytest.raises(ModelError, match="NaN/Inf"):
        GuardedEngine(Corrupting(ort_fp32, [0], np.nan), None).run(batch)
    # a black tile from ORT fp32 itself is the reference's answer: returned as it is
    out = GuardedEngine(Corrupting(ort_fp32, [0], 0.0), None).run(batch)
    assert float(out[0].max()) == 0.0 and float(out[1].max()) > 0.1


def test_served_engine_is_guarded(settings: Settings) -> None:
    engine = get_engine("realesr-animevideov3-x2", settings)
    assert isinstance(engine, GuardedEngine)
    fallback = engine.fallback()
    if engine.provider == "cpu" and engine.precision == "fp32":
        assert fallback is None
    else:
        assert fallback is not None
        assert (fallback.provider, fallback.precision) == ("cpu", "fp32")
