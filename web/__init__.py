"""The web app (`gunicorn "web:create_app()"`): admin UI, Client Zone, JSON API, webhook endpoint.
An entry point over shared/ (its Runtime from shared.bootstrap); it never imports worker/ or cli/."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, redirect, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter, Map

from shared.adapters.logs import scrub_server_logs, setup_logging
from shared.bootstrap import Runtime, bootstrap
from shared.config import STRIPE_HOSTED_API_BASE, Config, check_safe
from web.services import RUNTIME_KEY

# Bigger bodies are refused with 413 before any view runs.
MAX_REQUEST_BYTES = 1024 * 1024


def create_app(config: Config | None = None, *, runtime: Runtime | None = None, **overrides: Any) -> Flask:
    """The web app over `runtime` (tests pass their own), else over one built from `config`, else from
    the environment (shared.bootstrap). Refuses an unsafe configuration (ConfigError)."""
    if runtime is None:
        runtime = bootstrap(config)
    cfg = runtime.config
    check_safe(cfg)
    https = cfg.public_base_url.startswith("https://")
    # Under gunicorn nothing has configured logging yet: lines go to stderr as JSON (or text). Under
    # pytest or a --log-config, logging is configured already and is left alone.
    setup_logging(cfg.log_format, cfg.log_secrets())
    scrub_server_logs(cfg.log_secrets())
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=cfg.secret_key,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        JSON_SORT_KEYS=False,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
        # On https the __Host- prefix makes browsers refuse the cookie unless it is Secure, for this exact
        # host and path / (no Domain): a sibling subdomain cannot plant or overwrite a session.
        SESSION_COOKIE_NAME="__Host-session" if https else "session",
        OFFSESSION=cfg,
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        CONTENT_SECURITY_POLICY=content_security_policy(cfg),
    )
    app.config.update(overrides)
    app.extensions[RUNTIME_KEY] = runtime

    from web import admin, api, client_zone, errors, health, metrics, pages, request_log, webhooks

    # Every <int:...> in a URL is a database id: beyond a 32-bit integer no row can match, and the
    # database would refuse the number (PostgreSQL) or overflow (SQLite) — a 404, not a 500.
    app.url_map.converters["int"] = DatabaseIdConverter
    request_log.register(app)
    errors.register(app)
    pages.register_template_helpers(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(client_zone.bp)
    app.add_url_rule("/", "index", lambda: redirect(url_for("client.login")))
    app.after_request(_security_headers)
    if https:
        app.after_request(_strict_transport_security)
    if cfg.trusted_proxies:
        # Behind N reverse proxies (OFFSESSION_TRUSTED_PROXIES), believe the last N X-Forwarded-* hops
        # only: request.remote_addr is then the real client (per-IP sign-in limits) and
        # request.is_secure follows the client's scheme. Further hops are the client's to forge.
        n = cfg.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)  # type: ignore[method-assign]
    return app


class DatabaseIdConverter(IntegerConverter):
    def __init__(self, url_map: Map, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("max", MAX_DATABASE_ID)
        super().__init__(url_map, *args, **kwargs)  # type: ignore[arg-type]


MAX_DATABASE_ID = 2**31 - 1

# Where a form of ours may lead (form-action also covers the redirect a form's answer makes): the bank's
# authentication page after "Complete authentication" (hooks.stripe.com), Checkout in setup mode and
# Connect OAuth; with STRIPE_API_BASE set (the emulator), that origin, which serves those pages.
STRIPE_FORM_TARGETS = (
    "https://hooks.stripe.com",
    "https://checkout.stripe.com",
    "https://connect.stripe.com",
)


# A year, the value browsers' preload lists ask for; sent only when PUBLIC_BASE_URL is https.
STRICT_TRANSPORT_SECURITY = "max-age=31536000; includeSubDomains"


def _strict_transport_security(response: Response) -> Response:
    response.headers.setdefault("Strict-Transport-Security", STRICT_TRANSPORT_SECURITY)
    return response


def content_security_policy(config: Config) -> str:
    """Scripts and styles come from this origin only (no inline script), nothing may frame the pages, and
    forms lead only here or to the Stripe pages the flows need."""
    targets = ["'self'", *STRIPE_FORM_TARGETS]
    if config.stripe_api_base and config.stripe_api_base != STRIPE_HOSTED_API_BASE:
        parts = urlsplit(config.stripe_api_base)
        targets.append(f"{parts.scheme}://{parts.netloc}")
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"form-action {' '.join(targets)}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    )


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", current_app.config["CONTENT_SECURITY_POLICY"])
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if request.path.startswith(("/admin", "/client", "/api")):
        response.headers.setdefault("Cache-Control", "no-store")
    return response
