"""The errors srcluster raises on purpose.

::

    SrclusterError                  root: anything we raise deliberately
    +-- InputError                  the caller's mistake (HTTP 4xx, CLI exit 2)
    |   +-- UnsupportedImage        not an image we can read (415)
    |   +-- ImageTooLarge           bytes or pixels over a configured limit (413)
    |   +-- ModelTooLarge           a model file over SRCLUSTER_MODEL_MAX_BYTES (413)
    |   +-- BadParameter            a parameter out of range or malformed (422)
    |       +-- UnknownModel        no model by that name (422)
    |       +-- UnknownField        a form field the API does not know (422)
    |       +-- AnimatedImage       an animated image or a multi-page TIFF (422)
    |       +-- JobTooLong          its estimated run time exceeds its timeout (422)
    |       +-- ModelNameTaken      a model name already in use, or a built-in's (409)
    |       +-- InvalidModel        a model offered for registration is unusable (422; also a ModelError)
    |   +-- QuotaExceeded           the token is over its jobs in flight or pixels per hour (429)
    +-- ModelError                  a model file we cannot use
    |   +-- ConversionError         an ncnn layer or weight format we do not understand
    |   +-- ModelUnavailable        a cluster model's bytes cannot be fetched, or fail their hash
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


class ModelTooLarge(InputError):
    """A model offered for registration is over ``SRCLUSTER_MODEL_MAX_BYTES``."""

    code = "model_too_large"
    http_status = 413


class ModelNameTaken(BadParameter):
    """A new model's name is a built-in model's, or another registered model's (and the
    caller did not ask to replace it)."""

    code = "model_exists"
    http_status = 409


class QuotaExceeded(InputError):
    """The token is over one of its limits for now (jobs in flight, input pixels per hour);
    ``detail["retry_after"]`` is the seconds to wait (the API's ``Retry-After``)."""

    code = "too_many_requests"
    http_status = 429


class ModelError(SrclusterError):
    """A model file exists but cannot be used."""

    code = "model_error"


class InvalidModel(BadParameter, ModelError):
    """A model offered for registration is not a usable super-resolution model: not ONNX,
    not one float32 NCHW RGB input with dynamic height and width, or no whole scale 1..8.
    The caller's mistake (422), and a :class:`ModelError` to code that checks files."""

    code = "invalid_model"
    http_status = 422


class ModelUnavailable(ModelError):
    """A cluster model's bytes are missing from the cluster's store, or do not match its
    recorded sha256: the worker cannot run it (the job fails, it is not retried)."""

    code = "model_unavailable"


class ConversionError(ModelError):
    """The ncnn files hold a layer, parameter or weight format we do not convert."""

    code = "conversion_error"


class ConfigError(SrclusterError):
    """A setting is missing or malformed; raised at start-up, naming the variable."""

    code = "config_error"
