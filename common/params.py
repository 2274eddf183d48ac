"""What a caller may ask of one upscale, parsed and checked in one place.

The CLI and the HTTP API both build :class:`UpscaleParams` through
:func:`parse_params`, so a value accepted by one is accepted by the other and a
bad one gets the same :class:`~common.errors.BadParameter` (naming the
parameter) from both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from common.errors import BadParameter
from common.tiling import MAX_TILE, MIN_TILE

MIN_SCALE = 2.0
MAX_SCALE = 8.0
MAX_PAD = 128


@dataclass(frozen=True)
class ResizeTo:
    """Final size request: an exact ``width`` x ``height`` (0 keeps the aspect), or a ``ratio``."""

    width: int = 0
    height: int = 0
    ratio: Fraction | None = None

    def apply(self, width: int, height: int) -> tuple[int, int]:
        """Return the final size for an upscaled image of ``width`` x ``height``."""
        if self.ratio is not None:
            return max(1, round(width * self.ratio)), max(1, round(height * self.ratio))
        if self.width and self.height:
            return self.width, self.height
        if self.width:
            return self.width, max(1, round(height * self.width / width))
        return max(1, round(width * self.height / height)), self.height

    def __str__(self) -> str:
        if self.ratio is not None:
            return f"{self.ratio.numerator}/{self.ratio.denominator}"
        return f"{self.width}x{self.height}"


_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX*]\s*(\d{1,6})\s*$")
_RATIO = re.compile(r"^\s*(\d{1,4})\s*/\s*(\d{1,4})\s*$")


def parse_resize_to(text: str) -> ResizeTo:
    """Parse ``"1920x1080"`` (either side may be 0 to keep the aspect) or ``"1/2"``.

    A ratio scales the upscaled image (``1/2`` after a x4 model gives x2 overall).

    Raises:
        BadParameter: malformed, both sides 0, a zero denominator, or a ratio of 0.
    """
    if m := _SIZE.match(text):
        width, height = int(m[1]), int(m[2])
        if width == 0 and height == 0:
            raise BadParameter(
                "resize_to needs at least one non-zero side", parameter="resize_to", value=text
            )
        return ResizeTo(width=width, height=height)
    if m := _RATIO.match(text):
        num, den = int(m[1]), int(m[2])
        if den == 0 or num == 0:
            raise BadParameter(
                "resize_to ratio must be positive, e.g. 1/2", parameter="resize_to", value=text
            )
        return ResizeTo(ratio=Fraction(num, den))
    raise BadParameter(
        "resize_to must be WIDTHxHEIGHT (e.g. 1920x1080, 0 keeps the aspect) or a ratio (e.g. 1/2)",
        parameter="resize_to",
        value=text,
    )


@dataclass(frozen=True)
class UpscaleParams:
    """One upscale request. ``None`` means "the model's default" (scale, tile, pad) or "the input's" (format)."""

    model: str
    scale: float | None = None
    tile_size: int | None = None
    tile_pad: int | None = None
    skip_alpha: bool = False
    resize_to: ResizeTo | None = None
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "scale": self.scale,
            "tile_size": self.tile_size,
            "tile_pad": self.tile_pad,
            "skip_alpha": self.skip_alpha,
            "resize_to": None if self.resize_to is None else str(self.resize_to),
            "format": self.format,
        }


def _number(name: str, value: Any, kind: type[int] | type[float]) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadParameter(f"{name} must be a number", parameter=name, value=value)
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise BadParameter(
            f"{name} must be {'an integer' if kind is int else 'a number'}",
            parameter=name,
            value=str(value),
        ) from None
    if kind is float and number != number:  # NaN
        raise BadParameter(f"{name} must be a number", parameter=name, value=str(value))
    return number


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None or value == "":
        return False
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise BadParameter(f"{name} must be true or false", parameter=name, value=str(value))


def parse_params(
    *,
    model: str,
    scale: Any = None,
    tile_size: Any = None,
    tile_pad: Any = None,
    skip_alpha: Any = False,
    resize_to: Any = None,
    format: Any = None,
) -> UpscaleParams:
    """Check raw values (strings from a form or the command line, or numbers).

    The model name is not looked up here (the registry does that); formats are
    normalized by :func:`common.imageio.normalize_format`.

    Raises:
        BadParameter: a value out of range or malformed, or a ``tile_pad`` over the
            ``tile_size`` given; ``detail["parameter"]`` names it.
    """
    from common.imageio import normalize_format

    scale_value = _number("scale", scale, float)
    if scale_value is not None and not MIN_SCALE <= scale_value <= MAX_SCALE:
        raise BadParameter(
            f"scale must be within {MIN_SCALE:g}..{MAX_SCALE:g}",
            parameter="scale",
            value=scale_value,
        )
    auto = isinstance(tile_size, str) and tile_size.strip().lower() == "auto"
    tile_value = None if auto else _number("tile_size", tile_size, int)
    if tile_value is not None and not MIN_TILE <= tile_value <= MAX_TILE:
        raise BadParameter(
            f"tile_size must be 'auto' or within {MIN_TILE}..{MAX_TILE}",
            parameter="tile_size",
            value=tile_value,
        )
    pad_value = _number("tile_pad", tile_pad, int)
    if pad_value is not None and not 0 <= pad_value <= MAX_PAD:
        raise BadParameter(
            f"tile_pad must be within 0..{MAX_PAD}", parameter="tile_pad", value=pad_value
        )
    if tile_value is not None and pad_value is not None and pad_value > tile_value:
        raise BadParameter(
            f"tile_pad {pad_value} is wider than tile_size {tile_value}: each tile would carry "
            f"more context than picture; use a tile_pad of at most {tile_value}",
            parameter="tile_pad",
            value=pad_value,
            limit=tile_value,
        )
    resize = None
    if resize_to is not None and str(resize_to).strip() != "":
        resize = resize_to if isinstance(resize_to, ResizeTo) else parse_resize_to(str(resize_to))
    fmt = None if format is None or str(format).strip() == "" else normalize_format(str(format))
    if not model or not isinstance(model, str):
        raise BadParameter("model must be a model name", parameter="model")
    return UpscaleParams(
        model=model.strip(),
        scale=scale_value,
        tile_size=tile_value,
        tile_pad=pad_value,
        skip_alpha=_flag("skip_alpha", skip_alpha),
        resize_to=resize,
        format=fmt,
    )
