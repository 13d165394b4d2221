"""Bearer-token authentication for /api."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, g, request

from web.errors import ApiError


def require_api_token(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        expected = current_app.config["OFFSESSION"].api_token
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        # Compared as bytes: compare_digest refuses str with anything but ASCII (a 500, not a 401).
        if (
            scheme.lower() != "bearer"
            or not token
            or not hmac.compare_digest(token.strip().encode(errors="replace"), expected.encode())
        ):
            raise ApiError(401, "unauthorized", "Send Authorization: Bearer <OFFSESSION_API_TOKEN>.")
        g.actor = "api"
        return view(*args, **kwargs)

    return wrapper
