"""krau/super-resolution-api's answers, for ``SRCLUSTER_API_COMPAT=krau``.

A krau client then runs unchanged: no ``model`` runs krau's default
(``x4_Anime_6B-Official``, our ``realesrgan-x4plus-anime``), ``POST /sr``
answers ``200``, a finished job's result has a ``path``, output is PNG unless
``format`` asks otherwise, ``resize_to`` means what krau's worker does with it
(:func:`parse_resize_to`, :func:`final_size`), some errors take krau's status
(:data:`STATUSES`) and pages of any origin may call the API (see
:meth:`common.settings.Settings.cors_origin_list`).

What stays ours, and why, is in the README's API section.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from api.errors import Gone, MissingImage, NotReady, TokenMissing
from common.errors import BadParameter, ImageTooLarge, SrclusterError, UnsupportedImage
from common.pipeline import JobPlan
from common.settings import Settings

KRAU = "krau"
"""The value of ``SRCLUSTER_API_COMPAT`` that turns this mode on."""

DEFAULT_MODEL = "x4_Anime_6B-Official"
"""krau's default model (an alias of ``realesrgan-x4plus-anime``, see ``common.models``)."""

DEFAULT_FORMAT = "png"
"""krau writes every result as PNG."""

DEFAULT_SCALE = 4
"""krau's ``scale`` when absent."""

STATUSES: dict[type[SrclusterError], int] = {
    TokenMissing: 422,  # FastAPI's answer to a missing required X-Token header
    MissingImage: 400,
    UnsupportedImage: 400,  # krau: "Invalid image format"
    NotReady: 400,  # download before success
    Gone: 404,  # krau's result key expired, or its file is gone
}
"""krau's status for errors where it differs from ours (codes and bodies stay ours)."""

_INT = re.compile(r"^\s*[+-]?\d{1,9}\s*$")


def enabled(settings: Settings) -> bool:
    return settings.api_compat == KRAU


@dataclass(frozen=True)
class KrauResize:
    """krau's ``resize_to``: a ``width`` (``WxH``, the height is ignored) or ``num/den`` of the input."""

    width: int | None = None
    num: int = 0
    den: int = 1


def _int(text: str, whole: str) -> int:
    if not _INT.match(text):
        # krau's int() raises and its job ends failed; refusing at once says why
        raise BadParameter(
            "resize_to must be WIDTHxHEIGHT (the width is used) or a ratio such as 1/2",
            parameter="resize_to",
            value=whole,
        )
    return int(text)


def parse_resize_to(text: str | None) -> KrauResize | None:
    """Read ``resize_to`` as krau's worker does; ``None``: krau ignores it.

    krau looks for a lowercase ``x`` first (and takes the integer before the first
    one), then for ``/`` (the integers before and after the first one). Anything
    with neither, ``1920X1080`` included, is ignored.

    Raises:
        BadParameter: a value krau would accept and then fail the job on (a number
            that does not parse, a zero denominator).
    """
    if not text:
        return None
    if "x" in text:
        return KrauResize(width=_int(text.split("x")[0], text))
    if "/" in text:
        num, den = (_int(part, text) for part in text.split("/")[:2])
        if den == 0:
            raise BadParameter(
                "resize_to ratio must have a non-zero denominator",
                parameter="resize_to",
                value=text,
            )
        return KrauResize(num=num, den=den)
    return None


def final_size(
    resize: KrauResize, width: int, height: int, scale: float | None, model_scale: int
) -> tuple[int, int]:
    """The size krau gives a ``width`` x ``height`` input for ``resize`` and ``scale``.

    ``WxH`` gives the width ``W`` and the input's aspect; ``a/b`` gives the INPUT's
    size times a/b (so ``1/2`` is half the input, the upscale thrown away). Either
    with a width of 0 drops every resize, ``scale``'s too: krau then returns what
    its model passes made (x4 for a scale up to 4, x16 for 5..8). Truncation and
    float arithmetic as krau's.

    Raises:
        BadParameter: a negative or zero side (krau's resize fails the job).
    """
    if resize.width is not None:
        target_w = resize.width
        target_h = int(height * resize.width / width)
    else:
        ratio = resize.num / resize.den
        target_w, target_h = int(width * ratio), int(height * ratio)
    if target_w == 0:
        wanted = DEFAULT_SCALE if scale is None else scale
        passes = 1
        if wanted > model_scale > 1:
            passes = math.ceil(math.log(wanted, model_scale) - 1e-9)
        factor = model_scale**passes
        return width * factor, height * factor
    if target_w < 0 or target_h <= 0:
        raise BadParameter(
            f"resize_to gives a {target_w}x{target_h} image",
            parameter="resize_to",
            value=str(resize),
        )
    return target_w, target_h


def resized(plan: JobPlan, size: tuple[int, int], settings: Settings) -> JobPlan:
    """``plan`` with the final size ``size``.

    Raises:
        ImageTooLarge: ``size`` is over ``settings.max_output_pixels``.
    """
    width, height = size
    limit = settings.max_output_pixels
    if width * height > limit:
        raise ImageTooLarge(
            f"the output would be {width}x{height}, over the limit of {limit} pixels",
            pixels=width * height,
            limit=limit,
        )
    return dataclasses.replace(plan, output_width=width, output_height=height)
