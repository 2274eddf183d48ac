"""ONNX Runtime engines: shapes, provider choice and one session per process."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from common.engines import clear_engines, get_engine
from common.engines.ort import OrtEngine
from common.errors import BadParameter, ModelError
from common.models import Registry
from common.settings import Settings


def test_engine_upscales_a_batch(settings: Settings) -> None:
    # engine=ort: auto may pick OpenVINO on this host (tests/test_engines.py covers that)
    engine = get_engine("realesr-animevideov3-x2", dataclasses.replace(settings, engine="ort"))
    assert (engine.name, engine.scale, engine.provider) == ("realesr-animevideov3-x2", 2, "cpu")
    batch = np.random.default_rng(0).random((2, 3, 12, 10), dtype=np.float32)
    out = engine.run(batch)
    assert out.shape == (2, 3, 24, 20) and out.dtype == np.float32
    # Batched and single runs agree: tiles may be batched freely.
    np.testing.assert_allclose(out[1:], engine.run(batch[1:]), atol=1e-5)
    with pytest.raises(BadParameter):
        engine.run(batch[:, :1])


def test_get_engine_caches_per_process(settings: Settings) -> None:
    first = get_engine("realesr-animevideov3-x2", settings)
    assert get_engine("realesr-animevideov3-x2", settings) is first
    clear_engines()
    assert get_engine("realesr-animevideov3-x2", settings) is not first


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available"
)
def test_cuda_without_onnxruntime_gpu_is_an_error(model_registry: Registry) -> None:
    path = model_registry.onnx_path("realesr-animevideov3-x2")
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        OrtEngine(path, 2, "cuda", threads=1)
