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
