"""The stand-in engine of the cluster tests and benches: an ONNX x4 that only repeats pixels.

With it the engine costs (almost) nothing, so what a test or bench measures is the
cluster's own per-tile cost: the queue, Redis, the stitch.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

STAND_IN = "stand-in-nearest-x4"


def stand_in_model(path: Path) -> Path:
    """An ONNX x4 upscaler that only repeats pixels: the engine is (almost) free."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H4", "W4"])
    scales = helper.make_tensor("s", TensorProto.FLOAT, [4], [1.0, 1.0, 4.0, 4.0])
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")
    graph = helper.make_graph([node], "stand_in", [x], [y], initializer=[scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path
