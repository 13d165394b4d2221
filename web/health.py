"""GET /healthz: 200 when the database and the broker answer, 503 otherwise."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from web.services import runtime

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    checks: dict[str, str] = {}
    try:
        with runtime().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        runtime().ensure_broker_connection(timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return jsonify(checks), 200 if healthy else 503
