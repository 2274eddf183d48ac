"""The model routes: list every model; add and delete the cluster's (admin tokens only).

``PUT /models/<name>`` takes the ONNX file as the raw request body (``curl -T`` or
``--data-binary @file``), so a model of hundreds of MB is neither multipart-parsed nor
spooled: it is read once, up to ``SRCLUSTER_MODEL_MAX_BYTES``, after the admin token was
checked. Query parameters: ``description``, and ``replace=true`` to replace a cluster
model of that name (otherwise a 409).
"""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, Response, current_app, g, jsonify, request

from api.auth import admin_required, token_required
from api.errors import NotFound
from api.services import Services
from common.errors import BadParameter, ModelTooLarge
from common.models import BUILTIN_AND_ALIASES, ModelSpec

bp = Blueprint("models", __name__)

MAX_DESCRIPTION = 200
"""Characters of a model's description."""


def services() -> Services:
    return cast(Services, current_app.extensions["srcluster"])


def public(spec: ModelSpec) -> dict[str, Any]:
    """A model as ``GET /models`` lists it (``size``, ``sha256``, ``added_*``: cluster models)."""
    return {
        "name": spec.name,
        "scale": spec.scale,
        "source": spec.source,
        "description": spec.description,
        "default_pad": spec.default_pad,
        "size": spec.size,
        "sha256": spec.sha256,
        "added_by": spec.added_by,
        "added_at": spec.added_at,
    }


def _json(body: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


@bp.get("/models")
@token_required
def list_models() -> Response:
    return _json({"models": [public(spec) for spec in services().registry.specs()]})


def _flag(name: str) -> bool:
    raw = request.args.get(name, "false").strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadParameter(f"{name} must be true or false", parameter=name, value=raw)
    return raw in ("true", "1")


def _body(limit: int) -> bytes:
    """The request body, at most ``limit`` bytes.

    Raises:
        ModelTooLarge: it is longer (said by Content-Length, or found while reading).
        BadParameter: it is empty.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ModelTooLarge(
            f"the model is {declared} bytes; models may be at most {limit} bytes "
            "(SRCLUSTER_MODEL_MAX_BYTES)",
            size=declared,
            limit=limit,
        )
    request.max_content_length = limit + 1  # this route's own limit, not the image upload's
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise ModelTooLarge(
            f"the model is over {limit} bytes (SRCLUSTER_MODEL_MAX_BYTES)", limit=limit
        )
    if not data:
        raise BadParameter(
            "send the ONNX file as the request body (curl -T model.onnx ...)", parameter="file"
        )
    return data


@bp.put("/models/<name>")
@admin_required
def add_model(name: str) -> Response:
    svc = services()
    description = request.args.get("description", "").strip()
    if len(description) > MAX_DESCRIPTION:
        raise BadParameter(
            f"description must be at most {MAX_DESCRIPTION} characters", parameter="description"
        )
    replace = _flag("replace")
    entry, replaced = svc.models.add(
        name,
        _body(svc.settings.model_max_bytes),
        added_by=g.caller.name,
        max_bytes=svc.settings.model_max_bytes,
        label="the uploaded file",
        description=description,
        replace=replace,
    )
    current_app.logger.info("cluster model %s added by %s (%s)", name, g.caller.name, entry.sha256)
    response = _json({"model": public(svc.registry.get(entry.name))}, 200 if replaced else 201)
    response.headers["Location"] = f"/models/{entry.name}"
    return response


@bp.delete("/models/<name>")
@admin_required
def delete_model(name: str) -> Response:
    svc = services()
    if name in BUILTIN_AND_ALIASES:
        raise BadParameter(
            f"{name!r} is a built-in model; only cluster models can be deleted",
            parameter="name",
            value=name,
        )
    entry = svc.models.remove(name)
    if entry is None:
        raise NotFound(f"no cluster model named {name!r}")
    current_app.logger.info("cluster model %s deleted by %s", name, g.caller.name)
    return _json({"deleted": name, "sha256": entry.sha256})


# --- their part of the OpenAPI document (merged by api.openapi) --------------------


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the model's name: 1-64 of a-z, 0-9, `-`, `.`, `_`, starting with a letter "
    "or digit; not a built-in model's",
    "schema": {"type": "string"},
}

_ADMIN_ERRORS = {
    "401": _error("no token, or an unknown one (`unauthorized`)"),
    "403": _error("a user's token: this route needs one of SRCLUSTER_ADMIN_TOKENS (`forbidden`)"),
    "503": _error("Redis or the blob store does not answer (`unavailable`)"),
}


def openapi_paths(max_bytes: int) -> dict[str, Any]:
    """``/models`` and ``/models/{name}`` for an API whose model limit is ``max_bytes``."""
    return {
        "/models": {
            "get": {
                "summary": "Every model: built-ins, the cluster's and this host's",
                "operationId": "listModels",
                "responses": {
                    "200": _ok("the models", "ModelList"),
                    "401": _error("no token, or an unknown one (`unauthorized`)"),
                    "503": _error("Redis does not answer (`unavailable`)"),
                },
            }
        },
        "/models/{name}": {
            "parameters": [_NAME],
            "put": {
                "summary": "Add (or replace) a cluster model: admin tokens only",
                "operationId": "addModel",
                "description": "The ONNX file is the request body. It is checked before "
                "anything is stored: one float32 NCHW input with 3 channels and dynamic "
                "height and width, one output, a whole scale 1..8 found by two small runs. "
                "Stored once by sha256 for the whole cluster; each worker fetches it, checks "
                "its hash and caches it on first use.",
                "parameters": [
                    {
                        "name": "description",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": MAX_DESCRIPTION},
                    },
                    {
                        "name": "replace",
                        "in": "query",
                        "required": False,
                        "description": "`true`: replace a cluster model of that name",
                        "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary", "maxLength": max_bytes}
                        }
                    },
                },
                "responses": {
                    "201": _ok("added; `Location: /models/<name>`", "ModelReply"),
                    "200": _ok("replaced (`replace=true`)", "ModelReply"),
                    **_ADMIN_ERRORS,
                    "409": _error(
                        "the name is a built-in model's, or a cluster model's and `replace` is "
                        "not true (`model_exists`)"
                    ),
                    "413": _error(
                        f"the file is over SRCLUSTER_MODEL_MAX_BYTES ({max_bytes}) "
                        "(`model_too_large`)"
                    ),
                    "422": _error(
                        "a malformed name or query parameter (`bad_parameter`), or a file that is "
                        "not a usable model (`invalid_model`; `detail.check` says which check: "
                        "load, inputs, dtype, layout, fixed_size, probe, output, scale)"
                    ),
                },
            },
            "delete": {
                "summary": "Delete a cluster model: admin tokens only",
                "operationId": "deleteModel",
                "responses": {
                    "200": {
                        "description": "deleted; its bytes go unless another name uses them",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "deleted": {"type": "string"},
                                        "sha256": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    **_ADMIN_ERRORS,
                    "404": _error("no cluster model by that name (`not_found`)"),
                    "422": _error("a built-in model (`bad_parameter`)"),
                },
            },
        },
    }


def openapi_schemas() -> dict[str, Any]:
    nullable_int = {"type": ["integer", "null"]}
    model = {
        "type": "object",
        "required": ["name", "scale", "source", "description", "default_pad"],
        "properties": {
            "name": {"type": "string"},
            "scale": {"type": "integer", "description": "the model's own scale"},
            "source": {"type": "string", "enum": ["builtin", "cluster", "user"]},
            "description": {"type": "string"},
            "default_pad": {"type": "integer", "description": "tile context, input pixels"},
            "size": {**nullable_int, "description": "bytes of the ONNX file (cluster models)"},
            "sha256": {"type": ["string", "null"]},
            "added_by": {
                "type": ["string", "null"],
                "description": "the admin token's name (never the token), or `cli:user@host`",
            },
            "added_at": {"type": ["number", "null"], "description": "Unix seconds"},
        },
    }
    return {
        "Model": model,
        "ModelList": {
            "type": "object",
            "required": ["models"],
            "properties": {
                "models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}
            },
        },
        "ModelReply": {
            "type": "object",
            "required": ["model"],
            "properties": {"model": {"$ref": "#/components/schemas/Model"}},
        },
    }
