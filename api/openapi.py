"""The OpenAPI 3.1 description served at ``/openapi.json``, written by hand to match :mod:`api.routes`."""

from __future__ import annotations

from typing import Any

from api import models
from common.cluster.store import JobStatus
from common.models import DEFAULT_MODEL
from common.params import MAX_PAD, MAX_SCALE, MIN_SCALE
from common.settings import Settings
from common.tiling import MAX_TILE, MIN_TILE

_ERROR = {"$ref": "#/components/schemas/Error"}
_NO_AUTH: list[dict[str, list[str]]] = []


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _ok(description: str, schema_name: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        },
    }


_UNAUTHORIZED = _error("no token, or an unknown one (`unauthorized`)")
_NOT_FOUND = _error(
    "no such job for this token: malformed, missing, expired or another token's (`not_found`)"
)
_UNAVAILABLE = _error(
    "Redis or the task queue does not answer, or Redis refuses writes (full): "
    "`unavailable`, with `Retry-After`"
)

_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`wait=N` (RFC 7240): hold the answer until the job ends or N seconds "
    "pass, then answer as `GET /result/{task_id}` would. N is whole seconds; over 60 it is "
    "clamped to 60; a malformed value is a 422 naming `Prefer`. Other preferences are ignored. "
    "When every wait slot of the API process is taken, the request is answered at once "
    "without `Preference-Applied`.",
    "schema": {"type": "string", "examples": ["wait=30"]},
}

_APPLIED = {
    "Preference-Applied": {
        "description": "`wait=N`: the wait applied (absent when the request did not wait)",
        "schema": {"type": "string"},
    }
}

_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "the `task_id` returned by `POST /sr`: 32 lowercase hex digits",
    "schema": {"type": "string"},
}


def document(version: str, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document for an API running with ``settings``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "srcluster",
            "version": version,
            "description": "Distributed image super-resolution (Real-ESRGAN). Submit an image to "
            "`POST /sr`, poll `GET /result/{task_id}`, fetch `GET /result/{task_id}/download`. "
            "Every error is JSON `{code, message, detail}`.",
        },
        "security": [{"token": []}, {"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness: whether Redis answers",
                    "operationId": "healthz",
                    "security": _NO_AUTH,
                    "responses": {
                        "200": _ok("Redis answers", "Health"),
                        "503": _ok("Redis does not answer, or refuses writes", "Health"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics: jobs, tiles, latencies, queue depths, workers",
                    "operationId": "metrics",
                    "description": "Prometheus text format, read from Redis on each scrape; "
                    "README, section Metrics, lists the names.",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "Service information: version, models and worker processes",
                    "operationId": "info",
                    "responses": {
                        "200": _ok("service information", "Info"),
                        "401": _UNAUTHORIZED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/sr": {
                "post": {
                    "summary": "Submit an image to upscale",
                    "operationId": "submit",
                    "parameters": [_PREFER],
                    "requestBody": {
                        "required": True,
                        "content": {"multipart/form-data": {"schema": _submit_schema(settings)}},
                    },
                    "responses": {
                        "200": {
                            "description": "with `Prefer: wait`: the job ended within the wait; "
                            "`result` is its final status",
                            "headers": {
                                "Location": {
                                    "description": "`/result/{task_id}`",
                                    "schema": {"type": "string"},
                                },
                                **_APPLIED,
                            },
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Submitted"}
                                }
                            },
                        },
                        "202": {
                            "description": "the job is queued (with `Prefer: wait`: still "
                            "unfinished after the wait, and `result` says where it is)",
                            "headers": {
                                "Location": {
                                    "description": "`/result/{task_id}`",
                                    "schema": {"type": "string"},
                                },
                                **_APPLIED,
                            },
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Submitted"}
                                }
                            },
                        },
                        "400": _error(
                            "a malformed multipart or chunked body, or one that stopped "
                            "arriving (`bad_request`)"
                        ),
                        "401": _UNAUTHORIZED,
                        "413": _error(
                            f"the file (over {settings.max_bytes} bytes) or its pixels are over a limit, or its "
                            "structure over a decode bound: PNG chunks, JPEG scans (`too_large`)"
                        ),
                        "415": _error(
                            "not an image we read, damaged, or empty (`unsupported_image`)"
                        ),
                        "422": _error(
                            "a parameter is malformed or out of range, neither or both of file and url, "
                            "an unknown model, a refused url or callback_url (`bad_parameter`, "
                            "`unknown_model`); a malformed `Prefer: wait` (`detail.parameter` is "
                            "`Prefer`); a field this API does not know (`unknown_field`, "
                            "`detail.fields`) or one given twice, two file parts; an animated image "
                            "or a multi-page TIFF (`animated_image`: refused, not cut to one frame); "
                            "a job whose estimated inference time exceeds its timeout "
                            "(`job_too_long`, `detail.estimate` and `detail.formula`); `tile_pad` "
                            "over the tile, too many tiles, an output side over the format's "
                            "limit or a result estimated over the size limit (`bad_parameter`, "
                            "`detail.limit`). `detail.parameter` names the field"
                        ),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/result/{task_id}": {
                "parameters": [_TASK_ID],
                "get": {
                    "summary": "A job's status and progress",
                    "operationId": "result",
                    "parameters": [_PREFER],
                    "responses": {
                        "200": {**_ok("the job", "ResultReply"), "headers": _APPLIED},
                        "422": _error("a malformed `Prefer: wait` (`bad_parameter`)"),
                        "401": _UNAUTHORIZED,
                        "404": _NOT_FOUND,
                        "503": _UNAVAILABLE,
                    },
                },
                "delete": {
                    "summary": "Cancel an unfinished job, or delete a finished job's result",
                    "operationId": "cancel",
                    "description": "An unfinished job ends `cancelled` and its queued tiles are revoked; "
                    "a finished job keeps its status (readable until it expires) but its result is deleted.",
                    "responses": {
                        "200": _ok("the job after cancelling or deleting", "ResultReply"),
                        "401": _UNAUTHORIZED,
                        "404": _NOT_FOUND,
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/result/{task_id}/download": {
                "parameters": [_TASK_ID],
                "get": {
                    "summary": "The upscaled image",
                    "operationId": "download",
                    "responses": {
                        "200": {
                            "description": "the image; `Content-Disposition` names it `<task_id>.<ext>`",
                            "content": {
                                f"image/{kind}": {"schema": {"type": "string", "format": "binary"}}
                                for kind in ("png", "jpeg", "webp", "tiff")
                            },
                        },
                        "401": _UNAUTHORIZED,
                        "404": _NOT_FOUND,
                        "409": _error(
                            "the job has not succeeded (yet); `detail.status` says where it is (`not_ready`)"
                        ),
                        "410": _error("the result was deleted or has expired (`gone`)"),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            **models.openapi_paths(settings.model_max_bytes),
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "security": _NO_AUTH,
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/ui": _page(
                "ui", "The web page: submit images, follow progress, compare and download"
            ),
            "/docs": _page("docs", "This document, rendered by swagger-ui"),
        },
        "webhooks": {"jobEnded": _webhook()},
        "components": {
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "X-Token"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {**_schemas(), **models.openapi_schemas()},
        },
    }


def _page(operation_id: str, summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "operationId": operation_id,
            "security": _NO_AUTH,
            "responses": {
                "200": {
                    "description": "HTML; its scripts and styles are files of this server",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    }


def _submit_schema(settings: Settings) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Exactly one of `file` and `url`. Each field at most once; any other field "
        "is refused (422 `unknown_field`), never ignored.",
        "additionalProperties": False,
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "a still image (png, jpeg, webp, tiff, bmp); an animated webp, png "
                "or gif, or a tiff of several pages, is refused (422 `animated_image`)",
            },
            "url": {
                "type": "string",
                "format": "uri",
                "description": "http(s) address of the image; private and loopback addresses are refused",
            },
            "model": {
                "type": "string",
                "default": DEFAULT_MODEL,
                "description": "a name from `GET /`",
            },
            "scale": {
                "type": "number",
                "minimum": MIN_SCALE,
                "maximum": MAX_SCALE,
                "description": "default: the model's",
            },
            "tile_size": {
                "oneOf": [
                    {"type": "integer", "minimum": MIN_TILE, "maximum": MAX_TILE},
                    {"type": "string", "enum": ["auto"]},
                ],
                "default": "auto",
            },
            "tile_pad": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_PAD,
                "description": "default: the model's",
            },
            "skip_alpha": {
                "type": "boolean",
                "default": False,
                "description": "resize alpha instead of inferring it",
            },
            "resize_to": {
                "type": "string",
                "pattern": r"^\s*(\d{1,6}\s*[xX*]\s*\d{1,6}|\d{1,4}\s*/\s*\d{1,4})\s*$",
                "description": "final size `WIDTHxHEIGHT` (0 keeps the aspect) or a ratio such as `1/2`",
            },
            "format": {
                "type": "string",
                "description": "png, jpg (jpeg), webp or tiff (tif), any case; default: the input's "
                "(png for bmp). JPEG has no alpha: a translucent image is flattened over white, "
                "and the job's `notes` say so",
            },
            "timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": settings.max_timeout,
                "default": settings.timeout,
                "description": "seconds before the job ends `failed`; a job estimated to need "
                "more is refused at once (422 `job_too_long`)",
            },
            "callback_url": {
                "type": "string",
                "format": "uri",
                "maxLength": 2048,
                "description": "http(s) address to POST the job's status to when it ends "
                "(success, failed, cancelled, timeout): see the `jobEnded` webhook. The `url` "
                "field's rules apply (private and loopback addresses are refused); refused "
                "when the service has no `SRCLUSTER_WEBHOOK_SECRET`",
            },
        },
    }


def _webhook() -> dict[str, Any]:
    signed = "Standard Webhooks signature: `v1,` + base64 of HMAC-SHA256 over "
    return {
        "post": {
            "summary": "A job ended: its status, posted to the job's `callback_url`",
            "description": "Sent once per job by a worker, retried with backoff (5 s, then 4x "
            "longer each time, 7 attempts by default) until the receiver answers 2xx. The body "
            "is what `GET /result/{task_id}` answers, less its `callback` member. Verify it with "
            "any Standard Webhooks library and the service's `SRCLUSTER_WEBHOOK_SECRET`.",
            "operationId": "jobEnded",
            "parameters": [
                {
                    "name": "webhook-id",
                    "in": "header",
                    "required": True,
                    "description": "the job's `task_id`; the same on every attempt",
                    "schema": {"type": "string"},
                },
                {
                    "name": "webhook-timestamp",
                    "in": "header",
                    "required": True,
                    "description": "Unix seconds when this attempt was signed",
                    "schema": {"type": "string"},
                },
                {
                    "name": "webhook-signature",
                    "in": "header",
                    "required": True,
                    "description": signed + "`{webhook-id}.{webhook-timestamp}.{body}`",
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ResultReply"}}
                },
            },
            "responses": {
                "2XX": {"description": "delivered; anything else is retried"},
            },
        }
    }


def _schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["code", "message", "detail"],
            "properties": {
                "code": {"type": "string", "description": "stable, for programs"},
                "message": {"type": "string", "description": "for people"},
                "detail": {"type": "object", "description": "e.g. `parameter` naming a bad field"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}},
        },
        "Info": {
            "type": "object",
            "required": ["message", "version", "models", "workers"],
            "properties": {
                "message": {"type": "string"},
                "version": {"type": "string"},
                "models": {"type": "array", "items": {"type": "string"}},
                "model_details": {
                    "type": "array",
                    "description": "each model of `models`, in the same order",
                    "items": {
                        "type": "object",
                        "required": ["name", "scale", "description"],
                        "properties": {
                            "name": {"type": "string"},
                            "scale": {"type": "integer", "description": "the model's own scale"},
                            "description": {"type": "string", "description": "one line"},
                        },
                    },
                },
                "workers": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "tile processes up now",
                },
                "engines": {
                    "type": "object",
                    "description": "worker name -> what its processes run, e.g. "
                    "'openvino fp32 on CPU (AMD EPYC), 2 threads'",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "Submitted": {
            "type": "object",
            "required": ["task_id", "message"],
            "properties": {
                "task_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "message": {"type": "string"},
                "result": {
                    "$ref": "#/components/schemas/Result",
                    "description": "with `Prefer: wait` only: the job after the wait",
                },
            },
        },
        "ResultReply": {
            "type": "object",
            "required": ["result"],
            "properties": {"result": {"$ref": "#/components/schemas/Result"}},
        },
        "Result": {
            "type": "object",
            "required": ["task_id", "status", "progress", "model", "created"],
            "properties": {
                "task_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "status": {"type": "string", "enum": [s.value for s in JobStatus]},
                "progress": {
                    "type": "object",
                    "required": ["done", "total"],
                    "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}},
                },
                "model": {"type": ["string", "null"]},
                "created": {"type": "number"},
                "started": {"type": "number"},
                "finished": {"type": "number"},
                "size": {"type": "integer", "description": "bytes of the result (success)"},
                "width": {"type": "integer"},
                "height": {"type": "integer"},
                "format": {"type": "string"},
                "content_type": {"type": "string"},
                "notes": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "what was done that the request did not ask for, e.g. "
                    "transparency flattened over white for JPEG",
                },
                "estimated_seconds": {
                    "type": "number",
                    "description": "inference time estimated at submit (tiles x measured "
                    "seconds per tile on the workers up)",
                },
                "eta_seconds": {
                    "type": ["number", "null"],
                    "description": "while unfinished: seconds left, from the tiles done and the "
                    "time since the first started (before any: the estimate less the time since)",
                },
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                },
                "callback": {
                    "type": "object",
                    "description": "only for a job with a `callback_url`: its delivery",
                    "required": ["status", "attempts"],
                    "properties": {
                        "status": {
                            "type": "string",
                            "enum": ["waiting", "pending", "delivered", "failed"],
                            "description": "waiting: the job runs; pending: being delivered "
                            "or retried; delivered: a 2xx came back; failed: attempts used up, "
                            "or the address was refused at delivery",
                        },
                        "attempts": {"type": "integer", "minimum": 0},
                        "error": {"type": "string", "description": "the last attempt's failure"},
                    },
                },
            },
        },
    }
