"""GET /metrics: the Prometheus text exposition of shared.adapters.metrics, computed at scrape time.

Who may scrape: `Authorization: Bearer <OFFSESSION_METRICS_TOKEN>` when that is set (give Prometheus
this one: it reads numbers and cannot move money), or the API token. Nothing is open by address: behind
a reverse proxy every request would come from loopback.
"""

from __future__ import annotations

import hmac

import redis
from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.adapters.metrics import OffsessionCollector, broker_redis_from_config, metrics_redis_from_config
from shared.config import Config
from web.errors import ApiError
from web.services import sessions

bp = Blueprint("metrics", __name__)

_CLIENTS_KEY = "offsession_metrics_redis"


def _authorized(config: Config) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    accepted = [t for t in (config.metrics_token, config.api_token) if t]
    # Every comparison runs, so the time taken does not tell which token came close.
    matches = [hmac.compare_digest(token.encode(), t.encode()) for t in accepted]
    return any(matches)


def _redis_clients(config: Config) -> tuple[redis.Redis | None, redis.Redis | None]:
    """(where workers record observations, the broker): one pair of connection pools per app."""
    clients = current_app.extensions.get(_CLIENTS_KEY)
    if clients is None:
        clients = (metrics_redis_from_config(config), broker_redis_from_config(config))
        current_app.extensions[_CLIENTS_KEY] = clients
    return clients


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    config: Config = current_app.config["OFFSESSION"]
    if not _authorized(config):
        raise ApiError(401, "unauthorized", "Send Authorization: Bearer <OFFSESSION_METRICS_TOKEN>.")
    metrics_redis, broker_redis = _redis_clients(config)
    # auto_describe off: describing would run every query once more at registration.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OffsessionCollector(sessions(), metrics_redis=metrics_redis, broker_redis=broker_redis))
    response = Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response
