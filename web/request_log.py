"""Request ids and one JSON log line per request.

Each request gets an id: the caller's X-Request-ID when it is a plausible id, else a fresh one. It is
bound to every line logged while the request runs, sent back as X-Request-ID, and carried to the
Celery tasks the request publishes (see shared.adapters.logs.add_request_id_header), so a charge can be
followed
from the click to the worker's last word on it.
"""

from __future__ import annotations

import contextlib
import logging
import time

from flask import Flask, Response, g, request
from flask.typing import ResponseReturnValue

from shared.adapters.logs import REQUEST_ID_HEADER, incoming_request_id
from shared.log_context import log_context

log = logging.getLogger("offsession.request")

# Scraped and probed every few seconds: their lines would drown the rest, so they are logged at DEBUG.
QUIET_PATHS = frozenset({"/metrics", "/healthz"})


def register(app: Flask) -> None:
    app.before_request(_bind_request_id)
    app.after_request(_log_and_echo)
    app.teardown_request(_unbind)


def _bind_request_id() -> ResponseReturnValue | None:
    request_id = incoming_request_id(request.headers.get(REQUEST_ID_HEADER))
    stack = contextlib.ExitStack()
    stack.enter_context(log_context(request_id=request_id))
    g.request_id = request_id
    g.request_log_stack = stack
    g.request_started = time.monotonic()
    return None


def _log_and_echo(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id is None:  # a request refused before our before_request ran
        return response
    response.headers[REQUEST_ID_HEADER] = request_id
    # The URL rule, not the path: a path may hold a credential (a Client Zone sign-in link's token).
    route = request.url_rule.rule if request.url_rule is not None else "(no route)"
    level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
    log.log(
        level,
        "%s %s %s",
        request.method,
        route,
        response.status_code,
        extra={
            "method": request.method,
            "route": route,
            "status": response.status_code,
            "duration_ms": round((time.monotonic() - g.get("request_started", time.monotonic())) * 1000, 1),
        },
    )
    return response


def _unbind(_error: BaseException | None) -> None:
    stack: contextlib.ExitStack | None = g.pop("request_log_stack", None)
    if stack is not None:
        stack.close()
