"""The HTTP API: ``create_app()`` for gunicorn and ``nofx api``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_smorest import Api

from nofx import __version__


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app: settings, errors, auth, then one blueprint per resource."""
    from nofx.api import artifacts, auth, dev, errors, health, metrics, requests, runs
    from nofx.config import get_settings

    settings = get_settings()
    app = Flask("nofx")
    app.config.update(
        API_TITLE="NOFX",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )
    app.config.update(config or {})
    api = Api(app, spec_kwargs={"info": {"description": "Submit plans, watch runs, get artifacts."}})
    errors.init_app(app)
    metrics.init_app(app)
    requests.init_app(app)
    auth.init_app(app, api)
    for module in (runs, artifacts, health, metrics, dev):
        api.register_blueprint(module.blp)
    return app
