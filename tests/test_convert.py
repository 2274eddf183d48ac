"""The ncnn -> ONNX converter reproduces ncnn itself, and refuses what it does not know."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import ncnn
import numpy as np
import onnx
import pytest

from common.engines.ort import OrtEngine
from common.errors import ConversionError
from common.models import Registry
from common.ncnn import build_model, convert, read_param

FP16_TAG = struct.pack("<I", 0x01306B47)
FP32_TAG = struct.pack("<I", 0)

# (model, input h, w): x4plus is 17 M parameters, so it gets a small crop.
CASES = [
    pytest.param("realesrgan-x4plus", 20, 24, marks=pytest.mark.slow),
    pytest.param("realesrgan-x4plus-anime", 40, 48, marks=pytest.mark.slow),
    ("realesr-animevideov3", 40, 48),
    ("realesr-animevideov3-x2", 40, 48),
    ("realesr-animevideov3-x3", 40, 48),
]


def run_ncnn(param: Path, weights: Path, chw: np.ndarray) -> np.ndarray:
    """Run the original ncnn files on CPU in fp32 (no fp16/bf16 storage or arithmetic)."""
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = False
    net.opt.use_fp16_arithmetic = False
    net.opt.use_fp16_packed = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = 2
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(weights)) == 0
    with net.create_extractor() as ex:
        ex.input("data", ncnn.Mat(np.ascontiguousarray(chw, dtype=np.float32)))
        ret, out = ex.extract("output")
        assert ret == 0
        result = np.array(out)
    net.clear()
    return result


def run_onnx(path: Path, chw: np.ndarray, scale: int) -> np.ndarray:
    engine = OrtEngine(path, scale, "cpu", threads=2)
    return engine.run(chw[None])[0]


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.int16)


@pytest.mark.parametrize(("name", "h", "w"), CASES)
def test_converted_model_matches_ncnn(
    model_registry: Registry,
    make_photo: Callable[..., np.ndarray],
    name: str,
    h: int,
    w: int,
) -> None:
    spec = model_registry.get(name)
    assert spec.param_file is not None and spec.bin_file is not None
    image = make_photo(h, w)

    ours = run_onnx(model_registry.onnx_path(name), image, spec.scale)
    theirs = run_ncnn(spec.param_file, spec.bin_file, image)

    assert ours.shape == theirs.shape == (3, h * spec.scale, w * spec.scale)
    diff = np.abs(to_uint8(ours) - to_uint8(theirs))
    print(f"{name}: max |float diff| {np.abs(ours - theirs).max():.2e}, uint8 {diff.max()}")
    assert diff.max() <= 1


def test_converted_graph_has_dynamic_named_io(model_registry: Registry) -> None:
    model = onnx.load(str(model_registry.onnx_path("realesr-animevideov3-x2")))
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and out.name == "output"
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]


# A tiny model touching the paths the shipped models do not: raw fp32 weights,
# fp16 payload padding, ReLU, Eltwise prod/max, BinaryOp sub, one PReLU slope,
# bilinear Interp. Blob names follow ncnn's "data" in, "output" out.
TINY_PARAM = """7767517
14 18
Input            in     0 1 data
Split            sp     1 3 data d0 d1 d2
Convolution      c1     1 1 d0 a 0=12 1=3 4=1 5=1 6=324 9=1
Convolution      c2     1 1 d1 b 0=12 1=1 5=0 6=36 9=2 -23310=1,1.000000e-01
Split            sa     1 2 a a0 a1
Split            sb     1 2 b b0 b1
Eltwise          prod   2 1 a0 b0 p 0=0
Eltwise          max    2 1 a1 b1 m 0=2
BinaryOp         sub    2 1 p m s 0=1
PReLU            pr     1 1 s r 0=1
PixelShuffle     ps     1 1 r u 0=2
Convolution      c3     1 1 d2 c 0=3 1=1 5=1 6=9
Interp           up     1 1 c i 0=2 1=2.000000e+00 2=2.000000e+00
BinaryOp         add    2 1 u i output 0=0
"""


def tiny_weights(seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)

    def f32(n: int) -> bytes:
        return rng.normal(0, 0.3, n).astype("<f4").tobytes()

    def f16(n: int) -> bytes:
        raw = rng.normal(0, 0.3, n).astype("<f2").tobytes()
        return raw + b"\0" * (-len(raw) % 4)

    return b"".join(
        [
            FP32_TAG + f32(324) + f32(12),  # c1: raw fp32 weights, bias
            FP16_TAG + f16(36),  # c2: fp16, no bias
            f32(1),  # pr: one slope
            FP16_TAG + f16(9) + f32(3),  # c3: 18 bytes of fp16 padded to 20, bias
        ]
    )


def write_model(tmp_path: Path, param: str, weights: bytes) -> tuple[Path, Path]:
    p, b = tmp_path / "m.param", tmp_path / "m.bin"
    p.write_text(param)
    b.write_bytes(weights)
    return p, b


def test_tiny_model_matches_ncnn(tmp_path: Path, make_photo: Callable[..., np.ndarray]) -> None:
    param, weights = write_model(tmp_path, TINY_PARAM, tiny_weights())
    onnx_file = tmp_path / "m.onnx"
    onnx.save(convert(param, weights), str(onnx_file))
    image = make_photo(13, 17)

    ours = run_onnx(onnx_file, image, 2)
    theirs = run_ncnn(param, weights, image)

    assert ours.shape == theirs.shape == (3, 26, 34)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_read_param_parses_array_and_float_params() -> None:
    layers = read_param(TINY_PARAM)
    assert len(layers) == 14
    c2 = layers[3]
    assert (c2.type, c2.name, c2.inputs, c2.outputs) == ("Convolution", "c2", ("d1",), ("b",))
    assert c2.params == {0: 12, 1: 1, 5: 0, 6: 36, 9: 2, 10: (0.1,)}
    assert layers[12].params[1] == 2.0


def test_unknown_layer_type_is_named(tmp_path: Path) -> None:
    param = TINY_PARAM.replace("PixelShuffle     ps", "Shuffle2000      ps")
    with pytest.raises(ConversionError, match=r"Shuffle2000 layer 'ps'"):
        convert(*write_model(tmp_path, param, tiny_weights()))


def test_unknown_parameter_is_named(tmp_path: Path) -> None:
    param = TINY_PARAM.replace("0=2 1=2.000000e+00", "0=2 7=1 1=2.000000e+00")
    with pytest.raises(ConversionError, match=r"Interp layer 'up'.*\[7\]"):
        convert(*write_model(tmp_path, param, tiny_weights()))


def test_bad_weight_tag_is_named(tmp_path: Path) -> None:
    weights = bytearray(tiny_weights())
    weights[0:4] = struct.pack("<I", 0x000D4B38)  # ncnn's int8 tag, which we do not convert
    with pytest.raises(ConversionError, match=r"Convolution layer 'c1'.*0x000D4B38"):
        convert(*write_model(tmp_path, TINY_PARAM, bytes(weights)))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (tiny_weights() + b"\0\0\0\0", r"4 bytes left"),
        (tiny_weights()[:-8], r"Convolution layer 'c3'.*ends early"),
    ],
)
def test_bin_must_be_consumed_exactly(tmp_path: Path, weights: bytes, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        convert(*write_model(tmp_path, TINY_PARAM, weights))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7767518\n1 1\nInput in 0 1 data\n", "first line"),
        ("7767517\n2 1\nInput in 0 1 data\n", "declares 2 layers"),
        ("7767517\n1 1\nInput in 0 1 data 0=1,2\n", "malformed parameter"),
    ],
)
def test_malformed_param_text(text: str, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        read_param(text)


def test_fixed_output_size_interp_is_refused() -> None:
    param = TINY_PARAM.replace("0=2 1=2.000000e+00 2=2.000000e+00", "0=2 3=26 4=34")
    with pytest.raises(ConversionError, match=r"Interp layer 'up'.*fixed output size"):
        build_model(read_param(param), tiny_weights())
