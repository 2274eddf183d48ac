"""The quality gate: when an engine's output may stand in for ONNX Runtime fp32's.

An engine or precision is fit to serve when, on real images, its output is
finite, not black where the input is not, and within :data:`MIN_PSNR_DB` of
ORT fp32's output on the same input. Measured (DESIGN.md section 7): OpenVINO
f32 96-99 dB, the fp16 ONNX variant 75-93 dB, bf16 53-58 dB, NNCF int8 35-45
dB. So 50 dB admits every float path and refuses int8.

PSNR is computed on outputs clipped to [0, 1] with a peak of 1, which is what
the pipeline keeps once it clips and rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MIN_PSNR_DB = 50.0
"""Least PSNR (dB) against ORT fp32 an engine's output must reach."""

BLACK_LEVEL = 0.5 / 255.0
"""An output tile whose every value is below this rounds to all-black in 8 bits."""

LIT_LEVEL = 2.0 / 255.0
"""An input tile with a value above this is not black: its output must not be either."""


def psnr(candidate: npt.NDArray[np.float32], reference: npt.NDArray[np.float32]) -> float:
    """PSNR in dB of ``candidate`` against ``reference`` (same shape), both clipped to [0, 1].

    ``inf`` when they are equal after clipping; ``-inf`` when ``candidate``
    holds NaN or Inf (clipping would hide them).

    Raises:
        ValueError: the shapes differ.
    """
    if candidate.shape != reference.shape:
        raise ValueError(f"shapes differ: {candidate.shape} vs {reference.shape}")
    if not np.isfinite(candidate).all():
        return -math.inf
    a = np.clip(candidate, 0.0, 1.0, dtype=np.float64)
    b = np.clip(reference, 0.0, 1.0, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def bad_tiles(inputs: npt.NDArray[np.float32], outputs: npt.NDArray[np.float32]) -> list[int]:
    """Indices of the tiles of ``outputs`` ``[N, 3, H, W]`` that must never be stitched.

    A tile is bad when it holds NaN or Inf, or when it is all black (below
    :data:`BLACK_LEVEL`) while its input tile (``inputs[i]``, ``[3, h, w]`` in
    [0, 1]) is not (some value above :data:`LIT_LEVEL`). Costs two reductions
    per tile, nothing against inference.
    """
    if outputs.shape[0] == 0:
        return []
    axes = (1, 2, 3)
    # max/min propagate NaN and keep Inf, so they find both without a boolean copy
    high = outputs.max(axis=axes)
    low = outputs.min(axis=axes)
    lit = inputs.max(axis=axes) > LIT_LEVEL
    broken = ~(np.isfinite(high) & np.isfinite(low))
    black = (high < BLACK_LEVEL) & lit
    return [int(i) for i in np.flatnonzero(broken | black)]


@dataclass(frozen=True)
class GateResult:
    """The verdict on one output: ``passed``, the PSNR found and, on failure, why."""

    passed: bool
    psnr_db: float
    reason: str = ""

    def __str__(self) -> str:
        verdict = "pass" if self.passed else f"FAIL ({self.reason})"
        return f"{verdict}, {self.psnr_db:.1f} dB"


def gate(
    candidate: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float32],
    inputs: npt.NDArray[np.float32],
    *,
    min_psnr: float = MIN_PSNR_DB,
) -> GateResult:
    """Judge ``candidate`` (an engine's output for ``inputs``) against ORT fp32's ``reference``.

    All three are ``[N, 3, ...]`` float32 batches; ``inputs`` in [0, 1].
    Fails on any bad tile (:func:`bad_tiles`), then on PSNR under ``min_psnr``.
    """
    if candidate.shape != reference.shape:
        return GateResult(False, -math.inf, f"shape {candidate.shape} != {reference.shape}")
    value = psnr(candidate, reference)
    bad = bad_tiles(inputs, candidate)
    if bad:
        kind = "NaN/Inf" if value == -math.inf else "all-black"
        return GateResult(False, value, f"{kind} output in tile(s) {bad}")
    if value < min_psnr:
        return GateResult(False, value, f"PSNR under {min_psnr:g} dB")
    return GateResult(True, value)
