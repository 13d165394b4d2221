"""CSRF protection for every form of the pages: a per-session token, checked on every unsafe request.

The JSON API and the webhook are exempt: they authenticate by bearer token and by signature, never
by cookie, so a forged cross-site request carries nothing they accept.
"""

from __future__ import annotations

import hmac
import secrets

from flask import abort, request, session

FIELD = "csrf_token"
HEADER = "X-CSRF-Token"


def csrf_token() -> str:
    token = session.get(FIELD)
    if not token:
        token = secrets.token_urlsafe(32)
        session[FIELD] = token
    return str(token)


def check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    expected = session.get(FIELD)
    sent = request.form.get(FIELD) or request.headers.get(HEADER)
    # Compared as bytes: compare_digest refuses str with anything but ASCII (a 500, not a 400).
    if (
        not expected
        or not sent
        or not hmac.compare_digest(str(expected).encode(), str(sent).encode(errors="replace"))
    ):
        abort(
            400, description="The form expired or did not come from this site; reload the page and try again."
        )
