"""Every error answers in one shape, `{"error": code, "message": words}`, never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, make_response, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def error_response(status: int, code: str, message: str, **extra: object) -> ResponseReturnValue:
    if request.path.startswith(("/admin", "/client")) and request.accept_mimetypes.best != "application/json":
        # People get a page; programs (the API, webhooks, fetch calls) get the JSON shape.
        return render_template("error.html", status=status, message=message), status
    return jsonify({"error": code, "message": message, **extra}), status


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
}


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> ResponseReturnValue:
        return error_response(exc.status, exc.code, exc.message, **exc.extra)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        status = exc.code or 500
        code = HTTP_CODES.get(status, "error")
        response = make_response(error_response(status, code, exc.description or exc.name))
        # Keep the exception's own headers, such as the Allow of a 405 (RFC 9110), not its HTML type.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        return error_response(
            500,
            "internal_error",
            "Something went wrong on our side; nothing was lost. "
            "Try again, or ask an operator to look at the logs.",
        )
