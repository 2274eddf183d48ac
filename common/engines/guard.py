"""The output guard: a NaN, Inf or black tile is rerun in ORT fp32, never stitched.

:class:`GuardedEngine` wraps the engine :func:`common.engines.get_engine`
chose. After each run it checks every output tile (:func:`quality.bad_tiles`,
two reductions per tile) and reruns the bad ones, only those, on the fallback:
ONNX Runtime fp32 on the CPU, the reference every engine is gated against. It
is built on first need, so a guard that never trips costs no second session.

When the wrapped engine is itself ORT fp32 on the CPU there is nothing to
fall back to: a NaN/Inf tile raises :class:`ModelError` (a black one is the
reference's own answer and is returned).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from common.engines import quality
from common.errors import ModelError

if TYPE_CHECKING:
    from common.engines import Engine

log = logging.getLogger(__name__)


class GuardedEngine:
    """An :class:`Engine` that never returns a NaN/Inf tile, nor a black one for a lit input.

    ``name``, ``scale``, ``provider`` and ``precision`` are the wrapped
    engine's. ``fallback`` builds the ORT fp32 CPU engine (``None``: the wrapped
    engine is that engine). ``reruns`` counts tiles rerun so far.
    """

    def __init__(self, engine: Engine, fallback: Callable[[], Engine] | None) -> None:
        self.engine = engine
        self.name = engine.name
        self.scale = engine.scale
        self.provider = engine.provider
        self.precision = engine.precision
        self.reruns = 0
        self._make_fallback = fallback
        self._fallback: Engine | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        """The wrapped engine's one-line description."""
        return self.engine.describe()

    def fallback(self) -> Engine | None:
        """The ORT fp32 engine bad tiles are rerun on, built on first call (``None``: no fallback)."""
        if self._make_fallback is None:
            return None
        with self._lock:
            if self._fallback is None:
                self._fallback = self._make_fallback()
            return self._fallback

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """See :meth:`Engine.run`; bad tiles come back from the fallback instead.

        Raises:
            BadParameter: ``batch`` is not ``[N, 3, h, w]``.
            ModelError: a tile is NaN/Inf even in ORT fp32.
        """
        out = self.engine.run(batch)
        bad = quality.bad_tiles(batch, out)
        if not bad:
            return out
        fallback = self.fallback()
        if fallback is not None:
            log.warning(
                "%s gave %d bad tile(s) (NaN/Inf or black) for %s; rerunning them in ORT fp32",
                self.engine.describe(),
                len(bad),
                self.name,
            )
            with self._lock:
                self.reruns += len(bad)
            redo = fallback.run(np.ascontiguousarray(batch[bad]))
            if not out.flags.writeable:
                out = out.copy()
            out[bad] = redo
            bad = [bad[i] for i in quality.bad_tiles(batch[bad], redo)]
        # fp32's own black tile for a lit input is the reference's answer; NaN/Inf never is
        broken = [i for i in bad if not np.isfinite(out[i]).all()]
        if broken:
            raise ModelError(
                f"model {self.name!r} gives NaN/Inf for tile(s) {broken} even in ORT fp32",
                tiles=broken,
            )
        return out

    def __repr__(self) -> str:
        return f"GuardedEngine({self.engine!r})"
