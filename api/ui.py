"""The web page at ``/ui`` and the OpenAPI docs page at ``/docs``: HTML shells with static assets.

Both pages load only files this server serves, so each can send a strict
Content-Security-Policy with no inline code at all: the page's own script and
style live in ``api/static/`` (Flask's static folder, ``/static/...``), and the
docs page runs swagger-ui from the files the ``flask-swagger-ui`` package ships
(its ``dist/`` folder, served at ``/docs/assets/...``; only its files are used,
not its blueprint, whose template has inline script). The token never reaches
the server through these pages: the browser keeps it and sends it as
``X-Token`` with each ``fetch``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, render_template, request

UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
"""The page's Content-Security-Policy: its own files and requests to this origin, nothing inline."""

DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
"""The docs page's policy: swagger-ui's own files; its icons are ``data:`` images in its CSS."""

DOCS_ASSETS = "/docs/assets"
"""Where swagger-ui's files are served (a folder of this origin, so ``'self'`` covers them)."""

_HARDENED = {"static", "ui.page", "ui.docs", "docs_assets.static"}


def swagger_ui_dist() -> Path:
    """The folder of swagger-ui's built files inside the ``flask-swagger-ui`` package."""
    return Path(str(resources.files("flask_swagger_ui") / "dist"))


bp = Blueprint("ui", __name__)


def _page(template: str, csp: str) -> Response:
    html = render_template(template, version=current_app.extensions["srcluster"].version)
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = csp
    return response


@bp.get("/ui")
def page() -> Response:
    return _page("ui.html", UI_CSP)


@bp.get("/docs")
def docs() -> Response:
    return _page("docs.html", DOCS_CSP)


def _harden(response: Response) -> Response:
    if request.endpoint in _HARDENED:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


def register(app: Flask) -> None:
    """Serve the two pages and swagger-ui's files on ``app``."""
    app.register_blueprint(bp)
    app.register_blueprint(
        Blueprint(
            "docs_assets", __name__, static_folder=swagger_ui_dist(), static_url_path=DOCS_ASSETS
        )
    )
    app.after_request(_harden)
