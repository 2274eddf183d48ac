"""Inference memory: what one window costs and what one inference process may spend.

The planner (:func:`common.tiling.auto_tile_size`) sizes windows so that one
fits in an inference process's budget; this module turns the measured facts
into that window-pixel limit:

* :class:`WindowMemory` is the peak memory of one inference as a function of
  the window's pixels, ``fixed_bytes + bytes_per_pixel * h * w``, measured per
  model family and engine (the facts live with the models in
  :mod:`common.models`).
* :func:`inference_budget` is the bytes one of ``processes`` inference processes
  on this host may use: a fraction of the memory available now (the smaller of
  ``/proc/meminfo``'s ``MemAvailable`` and the cgroup's headroom).
* :func:`window_pixel_limit` is the largest window (``h * w`` input pixels,
  context included) whose peak fits a budget.

Engine keys name an engine on a device: :data:`ENGINE_KEYS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ENGINE_KEYS = ("ort-cpu", "openvino-cpu", "ort-cuda-fp32", "ort-cuda-fp16")
"""Engines whose window memory is known: ONNX Runtime and OpenVINO on CPU (fp32,
measured), ONNX Runtime CUDA in fp32 and fp16 (assumed, see :mod:`common.models`)."""

DEFAULT_MEMORY_FRACTION = 0.5
"""Share of the host's available memory that inference windows may take.

The rest is for what a job holds besides the window: the decoded image, the
output canvas (16x the input's pixels for a x4 model, in its final dtype), the
encoder's buffers, and other processes. ONNX Runtime's arena keeps its peak
after a run, so the budget is what a worker process holds from then on.
"""

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class WindowMemory:
    """Peak memory of one inference of a window of ``p`` input pixels (``h * w``).

    ``peak(p) = fixed_bytes + bytes_per_pixel * p`` bytes, on top of a process
    that already holds the loaded model (weights and session are not included).
    ``bytes_per_pixel`` covers the engine's activations and arena, its input and
    output tensors and the crop to integer pixels (:func:`common.tiling.tile_core`).
    """

    bytes_per_pixel: int
    fixed_bytes: int = 0

    def peak(self, pixels: int) -> int:
        """Peak bytes of one inference of a ``pixels``-pixel window."""
        return self.fixed_bytes + self.bytes_per_pixel * pixels

    def pixel_limit(self, budget_bytes: int) -> int:
        """The largest window (input pixels) whose :meth:`peak` is within ``budget_bytes``; 0 if none."""
        return max(0, (budget_bytes - self.fixed_bytes) // self.bytes_per_pixel)


def window_pixel_limit(memory: WindowMemory | None, budget_bytes: int) -> int | None:
    """The window-pixel limit for :func:`common.tiling.auto_tile_size`'s ``max_window_pixels``.

    ``None`` when the model's memory is not known (a user's model): the planner
    then falls back to the model's ``max_tile`` cap.
    """
    return None if memory is None else memory.pixel_limit(budget_bytes)


def available_bytes() -> int:
    """Memory this process could still get, in bytes: the least of ``MemAvailable`` and the cgroup's headroom.

    Reads ``/proc/meminfo`` and, under cgroup v2, ``memory.max`` minus
    ``memory.current`` (a container's limit, which ``MemAvailable`` does not see).
    Returns 0 when neither can be read (not Linux).
    """
    found: list[int] = []
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except OSError:
        pass
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            used = int((_CGROUP / "memory.current").read_text())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found, default=0)


def inference_budget(
    processes: int = 1,
    fraction: float = DEFAULT_MEMORY_FRACTION,
    available: int | None = None,
) -> int:
    """Bytes one of ``processes`` inference processes may spend on a window.

    ``available`` is the memory to share out (default :func:`available_bytes`,
    this host's RAM; pass a GPU's free memory for a GPU worker). Read it once
    when a worker starts, not per job: a warm worker's own arena is already
    counted as used.
    """
    total = available_bytes() if available is None else available
    return int(total * fraction) // max(1, processes)
