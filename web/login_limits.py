"""What the sign-in views need from the login throttle (shared.services.login_throttle): who is asking, and
the
429 answer with its Retry-After."""

from __future__ import annotations

import math

from flask import Response, jsonify, make_response, render_template, request

from shared.services.login_throttle import ADMIN_FAILURES_PER_IP, Verdict


def client_ip() -> str:
    """The address the request came from. X-Forwarded-For is read only for the hops of the reverse
    proxies OFFSESSION_TRUSTED_PROXIES counts (create_app's ProxyFix): behind them this is the client's
    address, not the proxy's (else every client would share one per-IP count)."""
    return request.remote_addr or "unknown"


def wait_words(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{seconds} seconds" if seconds < 60 else f"{minutes} minute{'s' if minutes != 1 else ''}"


def admin_refusal_message(verdict: Verdict) -> str:
    who = "from your network" if verdict.refused_by == ADMIN_FAILURES_PER_IP else "for this email"
    return (
        f"Too many failed sign-ins {who}. Wait {wait_words(verdict.retry_after)}, then try again; "
        "until then no password is checked."
    )


def too_many_attempts(verdict: Verdict, message: str, template: str, **context: object) -> Response:
    """429 with Retry-After: the sign-in page with the message for people, the JSON error for programs."""
    if request.accept_mimetypes.best == "application/json":
        response = make_response(jsonify({"error": "too_many_requests", "message": message}), 429)
    else:
        response = make_response(render_template(template, error=message, **context), 429)
    response.headers["Retry-After"] = str(verdict.retry_after)
    return response
