"""The web app (`gunicorn "web:create_app()"`): admin UI, client zone, JSON API, webhook endpoint."""

from __future__ import annotations

from typing import Any

from flask import Flask

from shared.config import Config, get_config

# Bigger bodies are refused with 413 before any view runs.
MAX_REQUEST_BYTES = 1024 * 1024


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    cfg = config or get_config()
    cfg.check_safe()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=cfg.secret_key,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        JSON_SORT_KEYS=False,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cfg.public_base_url.startswith("https://"),
        OFFSESSION=cfg,
    )
    app.config.update(overrides)

    from web import api, errors, health, webhooks

    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    return app
