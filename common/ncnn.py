"""Convert an ncnn model (``.param`` text + ``.bin`` weights) into an ONNX graph.

The contract:

* :func:`read_param` parses ``.param`` text into :class:`Layer` records.
* :func:`convert` reads both files and returns an ``onnx.ModelProto`` that has
  passed ``onnx.checker``. Its one input is ``input``: float32 NCHW
  ``[N, 3, H, W]`` with N, H and W dynamic; its one output is ``output``:
  float32 ``[N, C, H', W']``. Numerically it matches ncnn running the same files
  in fp32 (the weights stored as fp16 are widened to fp32 exactly).
* Only the layer types and parameters that the Real-ESRGAN models use are
  understood (Input, Convolution, Split, Concat, Eltwise, BinaryOp, Interp,
  PReLU, PixelShuffle). Anything else - an unknown layer type, parameter key,
  parameter value or weight tag, or a ``.bin`` that is too short or too long -
  raises :class:`~common.errors.ConversionError` whose message names the layer
  (type and name) where one is involved. Nothing is guessed.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.errors import ConversionError

PARAM_MAGIC = 7767517
"""First line of every ``.param`` file we read."""

CONVERTER_VERSION = 1
"""Bumped whenever the converter's output changes, so cached ONNX files are rebuilt."""

OPSET = 17
"""ONNX opset of the graphs we build: Resize with cubic_coeff_a, DepthToSpace CRD."""

IR_VERSION = 8
"""ONNX IR version; the lowest that carries opset 17, so older runtimes load it."""

INPUT_NAME = "input"
OUTPUT_NAME = "output"

_FP16_TAG = 0x01306B47
_FP32_TAG = 0
_ARRAY_KEY_BASE = -23300

ParamValue = int | float | tuple[int | float, ...]


@dataclass(frozen=True)
class Layer:
    """One ``.param`` line: ``Type name n_in n_out in_blobs... out_blobs... k=v...``.

    ``params`` maps the ncnn parameter id to an int, a float, or (for array
    parameters, written with a key <= -23300) a tuple of numbers.
    """

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: Mapping[int, ParamValue] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.type} layer {self.name!r}"


def read_param(text: str) -> list[Layer]:
    """Parse ``.param`` text into layers, in file order.

    Raises:
        ConversionError: wrong magic, wrong counts or a malformed line.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != str(PARAM_MAGIC):
        raise ConversionError(f"not an ncnn .param file: first line must be {PARAM_MAGIC}")
    if len(lines) < 2:
        raise ConversionError("ncnn .param file has no layer/blob count line")
    counts = lines[1].split()
    if len(counts) != 2 or not all(c.isdigit() for c in counts):
        raise ConversionError(f"ncnn .param count line is malformed: {lines[1]!r}")
    layer_count = int(counts[0])
    layers = [_read_layer(line) for line in lines[2:]]
    if len(layers) != layer_count:
        raise ConversionError(
            f"ncnn .param declares {layer_count} layers but holds {len(layers)}",
        )
    return layers


def _read_layer(line: str) -> Layer:
    tokens = line.split()
    if len(tokens) < 4:
        raise ConversionError(f"ncnn .param layer line is malformed: {line!r}")
    kind, name = tokens[0], tokens[1]
    label = f"{kind} layer {name!r}"
    try:
        n_in, n_out = int(tokens[2]), int(tokens[3])
    except ValueError:
        raise ConversionError(f"{label}: blob counts are not integers") from None
    blob_end = 4 + n_in + n_out
    if n_in < 0 or n_out < 0 or len(tokens) < blob_end:
        raise ConversionError(f"{label}: line lists fewer blobs than it declares")
    params: dict[int, ParamValue] = {}
    for item in tokens[blob_end:]:
        key_text, sep, value_text = item.partition("=")
        try:
            key = int(key_text)
            if not sep:
                raise ValueError(item)
            if key <= _ARRAY_KEY_BASE:
                values = value_text.split(",")
                count = int(values[0])
                if count != len(values) - 1:
                    raise ValueError(item)
                params[-key + _ARRAY_KEY_BASE] = tuple(_number(v) for v in values[1:])
            else:
                params[key] = _number(value_text)
        except ValueError:
            raise ConversionError(f"{label}: malformed parameter {item!r}") from None
    return Layer(
        type=kind,
        name=name,
        inputs=tuple(tokens[4 : 4 + n_in]),
        outputs=tuple(tokens[4 + n_in : blob_end]),
        params=params,
    )


def _number(text: str) -> int | float:
    # ncnn's own rule: a value is a float when it has a '.' or an exponent.
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


def convert(param_path: Path, bin_path: Path) -> onnx.ModelProto:
    """Convert ``param_path``/``bin_path`` to a checked ONNX model (see module docstring).

    Raises:
        ConversionError: anything in the files we do not understand.
        OSError: a file cannot be read.
    """
    layers = read_param(Path(param_path).read_text(encoding="ascii", errors="replace"))
    weights = Path(bin_path).read_bytes()
    model = build_model(layers, weights, graph_name=Path(param_path).stem)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"converted graph fails the ONNX checker: {exc}") from exc
    return model


def build_model(
    layers: Sequence[Layer], weights: bytes, graph_name: str = "ncnn"
) -> onnx.ModelProto:
    """Build the ONNX model for parsed ``layers`` and the ``.bin`` bytes ``weights``.

    Raises:
        ConversionError: an unsupported layer, parameter or weight tag, or
            ``weights`` not consumed exactly.
    """
    builder = _GraphBuilder(weights)
    for layer in layers:
        builder.add(layer)
    graph = builder.finish(graph_name)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="srcluster.ncnn",
        ir_version=IR_VERSION,
    )
    return model


class _WeightReader:
    """Reads ``.bin`` bytes in layer order, as ncnn's ModelBin does."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def _take(self, size: int, layer: Layer, what: str) -> bytes:
        if size > self.remaining:
            raise ConversionError(
                f"{layer.label}: .bin ends early reading {what} "
                f"(needs {size} bytes, {self.remaining} left)",
                layer=layer.name,
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def raw(self, count: int, layer: Layer, what: str) -> np.ndarray:
        """``count`` untagged little-endian float32 values."""
        return np.frombuffer(self._take(4 * count, layer, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, layer: Layer, what: str) -> np.ndarray:
        """``count`` values after a 4-byte storage tag (fp16 or fp32), widened to float32."""
        (tag,) = struct.unpack("<I", self._take(4, layer, f"{what} tag"))
        if tag == _FP16_TAG:
            size = 2 * count
            payload = self._take(size + (-size % 4), layer, what)
            return np.frombuffer(payload[:size], dtype="<f2").astype(np.float32)
        if tag == _FP32_TAG:
            return self.raw(count, layer, what)
        raise ConversionError(
            f"{layer.label}: unsupported weight storage tag 0x{tag:08X} for {what} "
            "(only fp16 0x01306B47 and raw fp32 0 are converted)",
            layer=layer.name,
            tag=tag,
        )


_KNOWN_PARAMS: dict[str, frozenset[int]] = {
    "Input": frozenset({0, 1, 2}),
    "Convolution": frozenset({0, 1, 2, 3, 4, 5, 6, 9, 10}),
    "Split": frozenset(),
    "Concat": frozenset({0}),
    "Eltwise": frozenset({0, 1}),
    "BinaryOp": frozenset({0, 1, 2}),
    "Interp": frozenset({0, 1, 2, 3, 4, 6}),
    "PReLU": frozenset({0}),
    "PixelShuffle": frozenset({0, 1}),
}


class _GraphBuilder:
    def __init__(self, weights: bytes) -> None:
        self._weights = _WeightReader(weights)
        self._nodes: list[onnx.NodeProto] = []
        self._initializers: list[onnx.TensorProto] = []
        # ncnn blob name -> (ONNX tensor name, channel count); Split only adds aliases.
        self._blobs: dict[str, tuple[str, int]] = {}
        self._consumed: set[str] = set()
        self._input_blob: str | None = None

    # -- helpers ---------------------------------------------------------

    def _fail(self, layer: Layer, message: str) -> ConversionError:
        return ConversionError(f"{layer.label}: {message}", layer=layer.name, type=layer.type)

    def _int(self, layer: Layer, key: int, default: int) -> int:
        value = layer.params.get(key, default)
        if not isinstance(value, int):
            raise self._fail(layer, f"parameter {key} must be an integer, got {value!r}")
        return value

    def _float(self, layer: Layer, key: int, default: float) -> float:
        value = layer.params.get(key, default)
        if isinstance(value, tuple):
            raise self._fail(layer, f"parameter {key} must be a number, got {value!r}")
        return float(value)

    def _array(self, layer: Layer, key: int) -> tuple[float, ...]:
        value = layer.params.get(key, ())
        if not isinstance(value, tuple):
            raise self._fail(layer, f"parameter {key} must be an array, got {value!r}")
        return tuple(float(v) for v in value)

    def _in(self, layer: Layer, index: int) -> tuple[str, int]:
        blob = layer.inputs[index]
        if blob not in self._blobs:
            raise self._fail(layer, f"input blob {blob!r} is not produced by an earlier layer")
        self._consumed.add(blob)
        return self._blobs[blob]

    def _out(self, layer: Layer, index: int, channels: int) -> str:
        blob = layer.outputs[index]
        if blob in self._blobs:
            raise self._fail(layer, f"output blob {blob!r} is produced twice")
        tensor = f"t_{blob}"
        self._blobs[blob] = (tensor, channels)
        return tensor

    def _const(self, name: str, array: np.ndarray) -> str:
        self._initializers.append(numpy_helper.from_array(array, name))
        return name

    def _node(
        self, op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs: Any
    ) -> None:
        self._nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))

    def _arity(self, layer: Layer, n_in: int | None, n_out: int | None) -> None:
        if (n_in is not None and len(layer.inputs) != n_in) or (
            n_out is not None and len(layer.outputs) != n_out
        ):
            raise self._fail(
                layer,
                f"has {len(layer.inputs)} inputs and {len(layer.outputs)} outputs; "
                f"expected {n_in if n_in is not None else 'any'} and "
                f"{n_out if n_out is not None else 'any'}",
            )

    # -- layers ----------------------------------------------------------

    def add(self, layer: Layer) -> None:
        known = _KNOWN_PARAMS.get(layer.type)
        if known is None:
            raise ConversionError(
                f"{layer.label}: layer type {layer.type!r} is not supported by the converter",
                layer=layer.name,
                type=layer.type,
            )
        unknown = sorted(set(layer.params) - known)
        if unknown:
            raise self._fail(layer, f"unsupported parameter id(s) {unknown}")
        getattr(self, f"_layer_{layer.type.lower()}")(layer)

    def _layer_input(self, layer: Layer) -> None:
        self._arity(layer, 0, 1)
        if self._input_blob is not None:
            raise self._fail(layer, "a second Input layer; only single-input models convert")
        channels = self._int(layer, 2, 3)
        if channels not in (0, 3):
            raise self._fail(layer, f"input has {channels} channels; only RGB (3) converts")
        self._input_blob = layer.outputs[0]
        self._blobs[layer.outputs[0]] = (INPUT_NAME, 3)

    def _layer_split(self, layer: Layer) -> None:
        self._arity(layer, 1, None)
        source = self._in(layer, 0)
        for blob in layer.outputs:
            if blob in self._blobs:
                raise self._fail(layer, f"output blob {blob!r} is produced twice")
            self._blobs[blob] = source

    def _layer_convolution(self, layer: Layer) -> None:
        self._arity(layer, 1, 1)
        x, in_channels = self._in(layer, 0)
        out_channels = self._int(layer, 0, 0)
        kernel = self._int(layer, 1, 0)
        dilation = self._int(layer, 2, 1)
        stride = self._int(layer, 3, 1)
        pad = self._int(layer, 4, 0)
        bias_term = self._int(layer, 5, 0)
        weight_count = self._int(layer, 6, 0)
        activation = self._int(layer, 9, 0)
        if out_channels <= 0 or kernel <= 0 or dilation <= 0 or stride <= 0:
            raise self._fail(layer, "num_output, kernel, dilation and stride must be positive")
        if pad < 0:
            raise self._fail(layer, f"padding mode {pad} (SAME-style) is not supported")
        if bias_term not in (0, 1):
            raise self._fail(layer, f"bias_term must be 0 or 1, got {bias_term}")
        if weight_count != out_channels * in_channels * kernel * kernel:
            raise self._fail(
                layer,
                f"weight count {weight_count} != {out_channels} x {in_channels} x "
                f"{kernel} x {kernel} (grouped convolution is not supported)",
            )
        weight = self._weights.tagged(weight_count, layer, "weights")
        w_name = self._const(
            f"{layer.name}.weight",
            weight.reshape(out_channels, in_channels, kernel, kernel),
        )
        inputs = [x, w_name]
        if bias_term:
            inputs.append(
                self._const(f"{layer.name}.bias", self._weights.raw(out_channels, layer, "bias"))
            )
        y = self._out(layer, 0, out_channels)
        conv_out = y if activation == 0 else f"{y}.preact"
        self._node(
            "Conv",
            inputs,
            [conv_out],
            layer.name,
            kernel_shape=[kernel, kernel],
            dilations=[dilation, dilation],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
        )
        if activation == 1:
            self._node("Relu", [conv_out], [y], f"{layer.name}.relu")
        elif activation == 2:
            slope = self._array(layer, 10)
            if len(slope) != 1:
                raise self._fail(layer, f"leaky relu needs one slope in parameter 10, got {slope}")
            self._node("LeakyRelu", [conv_out], [y], f"{layer.name}.leakyrelu", alpha=slope[0])
        elif activation != 0:
            raise self._fail(layer, f"fused activation type {activation} is not supported")

    def _layer_concat(self, layer: Layer) -> None:
        self._arity(layer, None, 1)
        axis = self._int(layer, 0, 0)
        if axis not in (0, 1, 2):
            raise self._fail(layer, f"concat axis {axis} is not supported")
        sources = [self._in(layer, i) for i in range(len(layer.inputs))]
        channels = sum(c for _, c in sources) if axis == 0 else sources[0][1]
        y = self._out(layer, 0, channels)
        # ncnn blobs are CHW, so ncnn axis k is ONNX axis k + 1 behind the batch axis.
        self._node("Concat", [t for t, _ in sources], [y], layer.name, axis=axis + 1)

    def _layer_eltwise(self, layer: Layer) -> None:
        self._arity(layer, None, 1)
        if len(layer.inputs) < 2:
            raise self._fail(layer, "needs at least two inputs")
        op = self._int(layer, 0, 0)
        coeffs = self._array(layer, 1)
        sources = [self._in(layer, i) for i in range(len(layer.inputs))]
        y = self._out(layer, 0, sources[0][1])
        if op == 0:
            self._chain("Mul", sources, y, layer)
            return
        if op == 2:
            self._node("Max", [t for t, _ in sources], [y], layer.name)
            return
        if op != 1:
            raise self._fail(layer, f"eltwise op {op} is not supported (0 prod, 1 sum, 2 max)")
        if coeffs and len(coeffs) != len(sources):
            raise self._fail(layer, f"{len(coeffs)} coefficients for {len(sources)} inputs")
        terms: list[tuple[str, int]] = []
        for i, (tensor, channels) in enumerate(sources):
            coeff = coeffs[i] if coeffs else 1.0
            if coeff == 1.0:
                terms.append((tensor, channels))
                continue
            c_name = self._const(f"{layer.name}.coeff{i}", np.array(coeff, dtype=np.float32))
            scaled = f"{y}.scaled{i}"
            self._node("Mul", [tensor, c_name], [scaled], f"{layer.name}.mul{i}")
            terms.append((scaled, channels))
        self._chain("Add", terms, y, layer)

    def _chain(self, op: str, terms: Sequence[tuple[str, int]], y: str, layer: Layer) -> None:
        # Left to right, as ncnn accumulates, so float rounding follows the same order.
        acc = terms[0][0]
        for i, (tensor, _) in enumerate(terms[1:], start=1):
            out = y if i == len(terms) - 1 else f"{y}.acc{i}"
            self._node(op, [acc, tensor], [out], f"{layer.name}.{op.lower()}{i}")
            acc = out

    def _layer_binaryop(self, layer: Layer) -> None:
        self._arity(layer, 2, 1)
        op = self._int(layer, 0, 0)
        if self._int(layer, 1, 0) != 0:
            raise self._fail(layer, "the scalar form (with_scalar=1) is not supported")
        onnx_op = {0: "Add", 1: "Sub", 2: "Mul", 3: "Div"}.get(op)
        if onnx_op is None:
            raise self._fail(layer, f"binary op {op} is not supported (0 add, 1 sub, 2 mul, 3 div)")
        a, a_channels = self._in(layer, 0)
        b, b_channels = self._in(layer, 1)
        y = self._out(layer, 0, max(a_channels, b_channels))
        self._node(onnx_op, [a, b], [y], layer.name)

    def _layer_interp(self, layer: Layer) -> None:
        self._arity(layer, 1, 1)
        mode = self._int(layer, 0, 0)
        h_scale = self._float(layer, 1, 1.0)
        w_scale = self._float(layer, 2, 1.0)
        if self._int(layer, 3, 0) or self._int(layer, 4, 0):
            raise self._fail(layer, "a fixed output size (parameters 3/4) is not supported")
        align = self._int(layer, 6, 0)
        if h_scale <= 0 or w_scale <= 0:
            raise self._fail(layer, f"scales must be positive, got {h_scale}, {w_scale}")
        x, channels = self._in(layer, 0)
        attrs: dict[str, Any]
        if mode == 1:
            # ncnn nearest picks floor(dst * in/out): ONNX asymmetric + floor.
            attrs = {
                "mode": "nearest",
                "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor",
            }
        elif mode in (2, 3):
            attrs = {
                "mode": "linear" if mode == 2 else "cubic",
                "coordinate_transformation_mode": "align_corners" if align else "half_pixel",
            }
            if mode == 3:
                attrs["cubic_coeff_a"] = -0.75
        else:
            raise self._fail(layer, f"interp type {mode} is not supported (1, 2, 3)")
        scales = self._const(
            f"{layer.name}.scales", np.array([1.0, 1.0, h_scale, w_scale], dtype=np.float32)
        )
        y = self._out(layer, 0, channels)
        self._node("Resize", [x, "", scales], [y], layer.name, **attrs)

    def _layer_prelu(self, layer: Layer) -> None:
        self._arity(layer, 1, 1)
        x, channels = self._in(layer, 0)
        count = self._int(layer, 0, 0)
        if count not in (1, channels):
            raise self._fail(layer, f"{count} slopes for {channels} channels")
        slope = self._weights.raw(count, layer, "slopes")
        shape = (count, 1, 1) if count > 1 else (1,)
        s_name = self._const(f"{layer.name}.slope", slope.reshape(shape))
        self._node("PRelu", [x, s_name], [self._out(layer, 0, channels)], layer.name)

    def _layer_pixelshuffle(self, layer: Layer) -> None:
        self._arity(layer, 1, 1)
        factor = self._int(layer, 0, 1)
        if self._int(layer, 1, 0) != 0:
            raise self._fail(layer, "only mode 0 (PyTorch / CRD order) is supported")
        x, channels = self._in(layer, 0)
        if factor <= 0 or channels % (factor * factor):
            raise self._fail(layer, f"{channels} channels do not shuffle by factor {factor}")
        y = self._out(layer, 0, channels // (factor * factor))
        self._node("DepthToSpace", [x], [y], layer.name, blocksize=factor, mode="CRD")

    # -- finish ----------------------------------------------------------

    def finish(self, graph_name: str) -> onnx.GraphProto:
        if self._input_blob is None:
            raise ConversionError("ncnn model has no Input layer")
        if self._weights.remaining:
            raise ConversionError(
                f".bin has {self._weights.remaining} bytes left after the last layer "
                "(the .param and .bin do not belong together)",
            )
        ends = [b for b in self._blobs if b not in self._consumed and b != self._input_blob]
        if len(ends) != 1:
            raise ConversionError(f"ncnn model must end in exactly one blob, found {ends}")
        tensor, channels = self._blobs[ends[0]]
        if tensor == INPUT_NAME:
            raise ConversionError("ncnn model output is its input")
        if any(tensor in node.input for node in self._nodes):
            # The end blob is a Split alias of a tensor that is also used inside.
            self._node("Identity", [tensor], [OUTPUT_NAME], "output")
        else:
            for node in self._nodes:
                for i, name in enumerate(node.output):
                    if name == tensor:
                        node.output[i] = OUTPUT_NAME
        graph_input = helper.make_tensor_value_info(
            INPUT_NAME,
            TensorProto.FLOAT,
            ["N", 3, "H", "W"],
        )
        graph_output = helper.make_tensor_value_info(
            OUTPUT_NAME,
            TensorProto.FLOAT,
            ["N", channels, "H_out", "W_out"],
        )
        return helper.make_graph(
            self._nodes,
            graph_name,
            [graph_input],
            [graph_output],
            self._initializers,
        )
