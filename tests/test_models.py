"""The model registry: built-in names, the ONNX cache and user-registered models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import common.models
from common.errors import BadParameter, ModelError, UnknownModel
from common.models import BUILTIN_NAMES, DEFAULT_MODEL, Registry
from common.settings import Settings


def test_builtins_are_listed_with_their_scales(tmp_path: Path) -> None:
    registry = Registry(Settings(data_dir=tmp_path))
    assert DEFAULT_MODEL in registry.names()
    assert {s.name: s.scale for s in registry.specs()} == {
        "realesrgan-x4plus": 4,
        "realesrgan-x4plus-anime": 4,
        "realesr-animevideov3": 4,
        "realesr-animevideov3-x2": 2,
        "realesr-animevideov3-x3": 3,
    }
    spec = registry.get("realesrgan-x4plus")
    assert (spec.source, spec.default_pad, spec.max_tile) == ("builtin", 28, 256)
    assert spec.param_file is not None and spec.param_file.is_file()


def test_unknown_model_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="realesrgan-x4plus") as info:
        Registry(Settings(data_dir=tmp_path)).get("esrgan-9000")
    assert info.value.detail["known"] == list(BUILTIN_NAMES)


def test_onnx_cache_is_reused(model_registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "realesr-animevideov3-x2"
    first = model_registry.onnx_path(name)
    mtime = first.stat().st_mtime_ns
    assert model_registry.is_cached(name)
    assert first.parent == model_registry.cache_dir
    assert first.name.startswith(f"{name}-") and len(first.stem) == len(name) + 17

    def no_conversion(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(common.models, "convert", no_conversion)
    second = Registry(model_registry.settings).onnx_path(name)
    assert second == first and second.stat().st_mtime_ns == mtime
    assert not list(first.parent.glob("*.tmp"))


def test_fresh_cache_is_empty(tmp_path: Path) -> None:
    assert not Registry(Settings(data_dir=tmp_path)).is_cached("realesr-animevideov3")


def test_add_user_model_probes_scale(model_registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "mine.onnx"
    shutil.copyfile(model_registry.onnx_path("realesr-animevideov3-x3"), source)
    registry = Registry(Settings(data_dir=tmp_path / "data"))

    spec = registry.add("my-model_v1.0", source, description="test")

    assert (spec.name, spec.scale, spec.source) == ("my-model_v1.0", 3, "user")
    assert (spec.default_pad, spec.max_tile) == (32, 256)
    # A second registry (another process) sees it through user-models.json.
    again = Registry(Settings(data_dir=tmp_path / "data"))
    assert again.get("my-model_v1.0") == spec
    assert again.names()[-1] == "my-model_v1.0"
    path = again.onnx_path("my-model_v1.0")
    assert path.parent == again.cache_dir and path.read_bytes() == source.read_bytes()
    listed = json.loads((again.cache_dir / "user-models.json").read_text())
    assert listed["models"]["my-model_v1.0"]["scale"] == 3
    with pytest.raises(BadParameter, match="already exists"):
        again.add("my-model_v1.0", source)


def save_model(path: Path, nodes: list[onnx.NodeProto], in_shape: list[object]) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 1.5, 1.5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("nodes", "shape", "message"),
    [
        ([helper.make_node("Identity", ["x"], ["y"])], [1, 3, 16, 16], "must be dynamic"),
        ([helper.make_node("Identity", ["x"], ["y"])], ["N", 4, "H", "W"], "3 .RGB. channels"),
        (
            [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")],
            ["N", 3, "H", "W"],
            "not a whole multiple",
        ),
    ],
)
def test_add_refuses_unusable_models(
    tmp_path: Path, nodes: list[onnx.NodeProto], shape: list[object], message: str
) -> None:
    path = save_model(tmp_path / "bad.onnx", nodes, shape)
    registry = Registry(Settings(data_dir=tmp_path / "data"))
    with pytest.raises(ModelError, match=message):
        registry.add("bad", path)
    assert registry.names() == list(BUILTIN_NAMES)


def test_add_accepts_scale_one(tmp_path: Path) -> None:
    path = save_model(
        tmp_path / "id.onnx", [helper.make_node("Identity", ["x"], ["y"])], ["N", 3, "H", "W"]
    )
    assert Registry(Settings(data_dir=tmp_path)).add("identity", path).scale == 1


def test_add_refuses_garbage_and_bad_names(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    registry = Registry(Settings(data_dir=tmp_path / "data"))
    with pytest.raises(ModelError, match="ONNX Runtime can load"):
        registry.add("garbage", garbage)
    for name in ("Bad Name", "", "../x", "realesrgan-x4plus"):
        with pytest.raises(BadParameter):
            registry.add(name, garbage)
    with pytest.raises(BadParameter, match="no such file"):
        registry.add("missing", tmp_path / "missing.onnx")
