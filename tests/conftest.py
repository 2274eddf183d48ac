"""Shared pytest fixtures."""

from __future__ import annotations

# --- models: shared converted models (common.ncnn, common.models) -----------
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.models import Registry
from common.settings import Settings


def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like RGB image, float32 CHW in [0, 1].

    Smooth gradients, hard edges (a disc and a bar) and a little noise, so a
    model's texture and edge paths are both exercised.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 0.5 + 0.4 * np.sin(x / w * 3.1 + y / h * 1.7)
    g = (x + y) / (h + w)
    disc = ((x - w / 2) ** 2 + (y - h / 2) ** 2) < (min(h, w) / 3) ** 2
    b = 0.2 + 0.6 * disc
    img = np.stack([r, g, b])
    img[:, h // 4 : h // 4 + 3, :] = [[[0.05]], [[0.9]], [[0.4]]]
    img += rng.normal(0.0, 0.03, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="session")
def model_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose model cache lives for the whole session, so each model converts once."""
    return Settings(data_dir=tmp_path_factory.mktemp("models"), threads=2)


@pytest.fixture(scope="session")
def model_registry(model_settings: Settings) -> Registry:
    return Registry(model_settings)


@pytest.fixture(scope="session")
def make_photo() -> Callable[..., np.ndarray]:
    """:func:`photo_like`, for tests that need several sizes."""
    return photo_like


# --- pipeline: the settings and the real photo the pipeline tests use -------
PHOTO = Path(__file__).parent / "data" / "photo.png"


@pytest.fixture(scope="session")
def settings(model_settings: Settings) -> Settings:
    """The session's settings (models converted once), as the pipeline and CLI use them."""
    return model_settings


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """``tests/data/photo.png``: a real 160x120 photograph, (H, W, 3) RGB uint8."""
    bgr = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
