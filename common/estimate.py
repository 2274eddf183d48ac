"""How long a job will take: estimated before it runs, and what is left while it runs.

Before (:func:`estimate`), from the plan and the workers up::

    seconds = ceil(groups / processes) x parts per group x window megapixels x s/MP

``processes`` is the tile processes up (at least 1): a job's groups run on
them side by side, each group's parts one after another. ``s/MP`` is the
seconds one tile process takes per inferred megapixel of the model, the best
fact there is (:func:`seconds_per_megapixel`): what the workers up measured on
that model; else, for a worker that measured other models, the model's figure
(:attr:`common.models.ModelSpec.cpu_seconds_per_megapixel`) scaled by how that
worker compared with those models' figures; else the figure itself, a 2-core
CPU's. It leaves out the queue (jobs ahead of this one), the upload and the
stitch; it is a floor on CPU hosts that share their cores with other jobs.

While it runs (:func:`remaining`), from the progress::

    seconds left = elapsed since the first tile started x (parts - done) / done

and, before the first part is done, the submit-time estimate less the time since.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.errors import BadParameter, JobTooLong

if TYPE_CHECKING:  # the store reads remaining() and need not load the pipeline
    from common.pipeline import JobPlan

MEASURED = "measured"
"""Basis: every tile process up measured this model."""

SCALED = "scaled"
"""Basis: some workers had not run this model; their speed on other models stood in."""

FIGURE = "figure"
"""Basis: no worker up measured anything; the model's 2-core CPU figure."""

BASIS_WORDS = {
    MEASURED: "as measured on the workers up",
    SCALED: "from the workers' measured speed on other models",
    FIGURE: "from the model's figure for a 2-core CPU (no worker up has measured it yet)",
}

FORMULA = (
    "ceil(groups / tile processes) x parts per group x window megapixels "
    "x seconds per megapixel of one tile process"
)
"""The estimate's formula, in words, as the API states it."""

WorkerSpeeds = Mapping[str, tuple[int, Mapping[str, float]]]
"""Tile workers up: name -> (tile processes, model -> measured seconds per inferred
megapixel of one of its processes)."""


@dataclass(frozen=True)
class Estimate:
    """A job's estimated inference time and the facts it came from."""

    seconds: float
    seconds_per_megapixel: float
    processes: int
    basis: str
    """:data:`MEASURED`, :data:`SCALED` or :data:`FIGURE`."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "seconds_per_megapixel": round(self.seconds_per_megapixel, 3),
            "processes": self.processes,
            "basis": self.basis,
        }


def seconds_per_megapixel(
    model: str, figures: Mapping[str, float], workers: WorkerSpeeds
) -> tuple[float, str]:
    """One tile process's seconds per inferred megapixel of ``model`` across ``workers``
    (their mean, weighted by their processes), and its basis.

    ``figures`` maps model names to their registry figure; ``model`` must be in it.
    """
    figure = figures[model]
    weighted = 0.0
    processes = 0
    basis = MEASURED
    for slots, measured in workers.values():
        if slots <= 0:
            continue
        if model in measured:
            speed = measured[model]
        else:
            ratios = [s / figures[m] for m, s in measured.items() if figures.get(m)]
            speed = figure * statistics.median(ratios) if ratios else figure
            basis = max(basis, SCALED if ratios else FIGURE, key=_rank)
        weighted += slots * speed
        processes += slots
    if processes == 0:
        return figure, FIGURE
    return weighted / processes, basis


def _rank(basis: str) -> int:
    return (MEASURED, SCALED, FIGURE).index(basis)


def estimate(plan: JobPlan, speed: float, basis: str, processes: int) -> Estimate:
    """The inference time of ``plan`` on ``processes`` tile processes of ``speed`` s/MP."""
    processes = max(1, processes)
    tiles = plan.tiles
    window_megapixels = tiles.window_width * tiles.window_height / 1e6
    rounds = math.ceil(plan.group_count / processes)
    seconds = rounds * min(plan.group, plan.part_count) * window_megapixels * speed
    return Estimate(seconds, speed, processes, basis)


def remaining(
    done: int, total: int, started: float | None, created: float, estimate: float | None, now: float
) -> float | None:
    """Seconds a running job has left (see the module docstring); ``None`` when unknown."""
    if total <= 0:
        return None
    if done > 0 and started is not None:
        return max(0.0, (now - started) * (total - done) / done)
    if estimate is None:
        return None
    return max(0.0, estimate - (now - (started or created)))


def refuse_too_long(found: Estimate, timeout: float, max_timeout: float) -> None:
    """Refuse a job whose estimated inference time exceeds its ``timeout``.

    Raises:
        JobTooLong: it does; the message gives the estimate and what would help.
    """
    if found.seconds <= timeout:
        return
    advice = (
        f"ask for a timeout of up to {max_timeout:.0f} s"
        if found.seconds <= max_timeout
        else "use a faster model (realesr-animevideov3), a smaller image, or more workers"
    )
    raise JobTooLong(
        f"this job needs about {found.seconds:.0f} s of inference on the {found.processes} "
        f"tile process(es) up ({BASIS_WORDS[found.basis]}), more than its timeout "
        f"of {timeout:.0f} s; {advice}",
        parameter="timeout",
        timeout=timeout,
        estimate=found.to_dict(),
        formula=FORMULA,
    )


# --- what a job would make: refused at submit rather than failed after every tile ---------

LOSSY_RATIO = 0.5
"""Encoded bytes per raw byte of JPEG (and lossy WebP) output at most, as assumed: at quality
95 with full chroma, even noise encodes to less than half its raw size."""

JPEG_INPUT_RATIO = 0.75
"""Lossless output of a JPEG input: its encoded size cannot be told from the input's (JPEG's
own ratio says nothing of PNG's), so three quarters of raw is assumed."""

MIN_LOSSLESS_RATIO = 0.15
"""The lowest lossless ratio assumed, however well the input compressed: resizing and the
model's texture make output less compressible than a flat input. Measured: a flat 64x64
16-bit RGBA PNG made a 16384x16384 PNG of 0.123 of its raw size."""

LOSSLESS_MARGIN = 2.0
"""How much worse than its input's the output's lossless ratio is assumed to be."""


def result_bytes(plan: JobPlan, upload_bytes: int, input_format: str, webp_quality: int) -> int:
    """The encoded size assumed for the plan's result, in bytes: an upper estimate.

    Raw bytes of the output (its width x height x channels x bytes per sample, 8-bit for
    JPEG and WebP) times a ratio: TIFF as raw (OpenCV's TIFF is near raw on resized data);
    JPEG and lossy WebP :data:`LOSSY_RATIO`; PNG and lossless WebP the input's own
    compression ratio (``upload_bytes`` over its raw size) times :data:`LOSSLESS_MARGIN`,
    within :data:`MIN_LOSSLESS_RATIO`..1 (:data:`JPEG_INPUT_RATIO` for a JPEG input).
    """
    eight_bit = plan.format in ("jpeg", "webp")
    sample = 1 if eight_bit or plan.dtype == "uint8" else 2
    channels = plan.channels
    if plan.format == "jpeg":
        channels = 1 if channels == 1 else 3
    elif plan.format == "webp":
        channels = 4 if channels == 4 else 3
    raw = plan.output_width * plan.output_height * channels * sample
    lossless_webp = plan.format == "webp" and webp_quality == 101
    if plan.format == "tiff":
        ratio = 1.0
    elif plan.format == "jpeg" or (plan.format == "webp" and not lossless_webp):
        ratio = LOSSY_RATIO
    elif input_format == "jpeg":
        ratio = JPEG_INPUT_RATIO
    else:
        input_sample = 2 if plan.dtype == "uint16" else 1
        input_raw = max(1, plan.width * plan.height * plan.channels * input_sample)
        ratio = min(1.0, max(MIN_LOSSLESS_RATIO, LOSSLESS_MARGIN * upload_bytes / input_raw))
    return math.ceil(raw * ratio) + 64 * 1024  # headers, metadata


def refuse_unfit(
    plan: JobPlan,
    *,
    upload_bytes: int,
    input_format: str,
    max_result_bytes: int,
    max_parts: int,
    webp_quality: int,
    max_side: int | None,
    resized: bool,
) -> None:
    """Refuse a plan that could not finish, before any of it is stored or run.

    ``max_side`` is the output format's largest width or height (WebP 16383, JPEG 65500);
    ``resized`` says the caller asked for ``resize_to`` (the parameter a refusal names).

    Raises:
        BadParameter: the pad is wider than the tile of a job of several tiles
            (``tile_pad``); more than
            ``max_parts`` tiles (``tile_size``); an output side over ``max_side``
            (``format``, or ``resize_to``); a result estimated over ``max_result_bytes``
            (:func:`result_bytes`; ``format``, or ``resize_to``).
    """
    if plan.pad > plan.tile and len(plan.tiles) > 1:  # one tile has no neighbours to pad from
        raise BadParameter(
            f"tile_pad {plan.pad} is wider than the tile ({plan.tile}): each tile would carry "
            f"more context than picture; use a tile_pad of at most {plan.tile}",
            parameter="tile_pad",
            value=plan.pad,
            limit=plan.tile,
        )
    if plan.part_count > max_parts:
        raise BadParameter(
            f"tile_size {plan.tile} cuts this image into {plan.part_count} tiles, over the "
            f"limit of {max_parts} per job; use larger tiles (or tile_size=auto)",
            parameter="tile_size",
            value=plan.tile,
            tiles=plan.part_count,
            limit=max_parts,
        )
    side = max(plan.output_width, plan.output_height)
    if max_side is not None and side > max_side:
        raise BadParameter(
            f"{plan.format} cannot hold an image of {plan.output_width}x{plan.output_height} "
            f"(at most {max_side} pixels a side); use png or tiff, or a smaller resize_to",
            parameter="resize_to" if resized else "format",
            format=plan.format,
            width=plan.output_width,
            height=plan.output_height,
            limit=max_side,
        )
    estimated = result_bytes(plan, upload_bytes, input_format, webp_quality)
    if estimated > max_result_bytes:
        raise BadParameter(
            f"the {plan.output_width}x{plan.output_height} {plan.format} result could take "
            f"up to {estimated} bytes, over the limit of {max_result_bytes} a result may "
            "take; ask for jpeg or webp, or a smaller scale or resize_to",
            parameter="resize_to" if resized else "format",
            format=plan.format,
            estimated_bytes=estimated,
            limit=max_result_bytes,
        )
