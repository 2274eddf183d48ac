"""The errors srcluster raises on purpose.

::

    SrclusterError                  root: anything we raise deliberately
    +-- InputError                  the caller's mistake (HTTP 4xx, CLI exit 2)
    |   +-- UnsupportedImage        not an image we can read (415)
    |   +-- ImageTooLarge           bytes or pixels over a configured limit (413)
    |   +-- BadParameter            a parameter out of range or malformed (422)
    |       +-- UnknownModel        no model by that name (422)
    |       +-- UnknownField        a form field the API does not know (422)
    |       +-- AnimatedImage       an animated image or a multi-page TIFF (422)
    |       +-- JobTooLong          its estimated run time exceeds its timeout (422)
    +-- ModelError                  a model file we cannot use
    |   +-- ConversionError         an ncnn layer or weight format we do not understand
    +-- ConfigError                 a setting is missing or malformed (fails at start-up)

Every error carries a short ``message`` for people and an optional ``detail``
dict for programs; the API turns them into ``{"code", "message", "detail"}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SrclusterError(Exception):
    """Root of srcluster's deliberate errors."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail: dict[str, Any] = detail

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "detail": self.detail}


class InputError(SrclusterError):
    """The request or the file given was wrong; nothing else was changed."""

    code = "bad_input"
    http_status = 400


class UnsupportedImage(InputError):
    """The bytes are not an image in a format we read, or are damaged."""

    code = "unsupported_image"
    http_status = 415


class ImageTooLarge(InputError):
    """The file or its pixel count is over a configured limit."""

    code = "too_large"
    http_status = 413


class BadParameter(InputError):
    """A parameter is malformed or out of range; ``detail["parameter"]`` names it."""

    code = "bad_parameter"
    http_status = 422


class UnknownModel(BadParameter):
    """No model is registered under that name."""

    code = "unknown_model"


class UnknownField(BadParameter):
    """A request names a field the API does not know (a misspelling is never run at defaults)."""

    code = "unknown_field"


class AnimatedImage(BadParameter):
    """An animated image (WebP, APNG, GIF) or a multi-page TIFF: srcluster upscales stills only.

    Refused rather than upscaled frame by frame or cut to its first frame, so no
    caller gets one frame back believing it got the animation.
    """

    code = "animated_image"


class JobTooLong(BadParameter):
    """A job's estimated run time (:mod:`common.estimate`) exceeds its timeout: refused at
    submit rather than failed an hour later; ``detail["estimate"]`` holds the facts."""

    code = "job_too_long"


class ModelError(SrclusterError):
    """A model file exists but cannot be used."""

    code = "model_error"


class ConversionError(ModelError):
    """The ncnn files hold a layer, parameter or weight format we do not convert."""

    code = "conversion_error"


class ConfigError(SrclusterError):
    """A setting is missing or malformed; raised at start-up, naming the variable."""

    code = "config_error"
