"""What the admin pages and the Client Zone share: sign-in guards, CSRF, flash, formatting."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, flash, g, redirect, request, session, url_for

from shared.domain.models import AdminUser, Client
from shared.domain.money import format_money
from shared.domain.states import AttemptStatus
from web.csrf import FIELD, check_csrf, csrf_token
from web.services import session_scope

ADMIN_KEY = "admin_id"
CLIENT_KEY = "client_id"
# The session_version of the admin or client when the session began: moved on by signing out or a new
# password, which ends every cookie carrying the older one, copies included.
VERSION_KEY = "session_version"
# When the session was last used (Unix seconds), in the signed cookie itself: past the idle limit it is
# refused, even when someone kept a copy.
SEEN_KEY = "seen"
# A Client Zone session opened by an emailed link other than sign-in: only what that link is for.
SCOPE_KEY = "client_scope"
ADMIN_IDLE_SECONDS = 30 * 60
CLIENT_IDLE_SECONDS = 30 * 60
# The last-use time is written at most this often (each write is a new cookie).
SEEN_RESOLUTION_SECONDS = 60
# What pages poll on their own (live status): not a person using the session, so not activity.
POLLING_ENDPOINTS = frozenset({"admin.charge_status", "admin.batch_status", "client.charge_status"})
# What a scoped Client Zone session may open: the card page (the update-card email), or the invoice
# and the charge to authenticate (the authentication email).
CARD_ENDPOINTS = frozenset({"client.cards", "client.add_card", "client.make_default", "client.delete_card"})
CHARGE_ENDPOINTS = frozenset({"client.authenticate", "client.returned", "client.charge_status"})


def _now() -> int:
    return int(time.time())


def begin_session(key: str, user_id: int, version: int, scope: dict[str, Any] | None = None) -> None:
    """A fresh session (nothing carried over from before) for an admin (ADMIN_KEY) or a client."""
    session.clear()
    session[key] = user_id
    session[VERSION_KEY] = version
    session[SEEN_KEY] = _now()
    if scope is not None:
        session[SCOPE_KEY] = scope
    session.permanent = True


def signed_in_fully_as_client(client_id: int, version: int) -> bool:
    """This browser's session is a live, unscoped Client Zone session of this client (an emailed link of
    another purpose then leaves it as it is rather than narrowing it)."""
    seen = session.get(SEEN_KEY)
    return (
        session.get(CLIENT_KEY) == client_id
        and session.get(VERSION_KEY) == version
        and session.get(SCOPE_KEY) is None
        and isinstance(seen, int)
        and _now() - seen <= CLIENT_IDLE_SECONDS
    )


def _session_alive(idle_seconds: int) -> bool:
    """Not idle for too long; marks this request as activity (polling aside)."""
    seen = session.get(SEEN_KEY)
    now = _now()
    if not isinstance(seen, int) or now - seen > idle_seconds:
        return False
    if request.endpoint not in POLLING_ENDPOINTS and now - seen >= SEEN_RESOLUTION_SECONDS:
        session[SEEN_KEY] = now
    return True


def _ended(login_endpoint: str, why: str) -> Any:
    session.clear()
    flash(why, "error")
    if login_endpoint == "admin.login":
        return redirect(url_for(login_endpoint, next=request.path))
    return redirect(url_for(login_endpoint))


def login_required_admin(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        admin_id = session.get(ADMIN_KEY)
        if admin_id is None:
            return redirect(url_for("admin.login", next=request.path))
        if not _session_alive(ADMIN_IDLE_SECONDS):
            return _ended("admin.login", "You were signed out after 30 minutes without activity.")
        with session_scope() as db:
            admin = db.get(AdminUser, admin_id)
            if admin is None or admin.session_version != session.get(VERSION_KEY):
                return _ended("admin.login", "This session has ended: sign in again.")
            g.admin_email = admin.email
            g.admin_id = admin.id
        g.actor = f"admin:{g.admin_email}"
        return view(*args, **kwargs)

    return wrapper


def _scope_allows(scope: dict[str, Any] | None) -> bool:
    if scope is None:
        return True  # signed in with a sign-in link: the whole Client Zone
    endpoint, args = request.endpoint, request.view_args or {}
    if scope.get("purpose") == "update_card":
        return endpoint in CARD_ENDPOINTS
    if scope.get("purpose") == "authenticate":
        if endpoint == "client.invoice":
            return args.get("invoice_id") == scope.get("invoice_id")
        return endpoint in CHARGE_ENDPOINTS and args.get("charge_id") == scope.get("charge_id")
    return False


def login_required_client(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        client_id = session.get(CLIENT_KEY)
        if client_id is None:
            return redirect(url_for("client.login"))
        if not _session_alive(CLIENT_IDLE_SECONDS):
            return _ended("client.login", "You were signed out after 30 minutes without activity.")
        scope = session.get(SCOPE_KEY)
        if not _scope_allows(scope):
            # The emailed link opened one thing; the rest of the Client Zone wants a sign-in.
            flash("That emailed link opens only what it was sent for: sign in to see the rest.", "error")
            return redirect(url_for("client.login"))
        with session_scope() as db:
            client = db.get(Client, client_id)
            if client is None or client.session_version != session.get(VERSION_KEY):
                return _ended("client.login", "This session has ended: sign in again.")
            g.client_name = client.name
        g.client_id = int(client_id)
        g.client_scope = scope
        g.actor = f"client:{client_id}"
        return view(*args, **kwargs)

    return wrapper


def protect_with_csrf(bp: Blueprint) -> None:
    bp.before_request(check_csrf)


def _age(moment: datetime | None) -> str:
    if moment is None:
        return ""
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def register_template_helpers(app: Flask) -> None:
    app.jinja_env.globals.update(csrf_field=FIELD, csrf_token=csrf_token)
    app.jinja_env.filters["money"] = lambda amount, currency: format_money(int(amount), currency)
    app.jinja_env.filters["age"] = _age
    app.jinja_env.filters["when"] = lambda m: m.strftime("%Y-%m-%d %H:%M UTC") if m else ""
    app.jinja_env.filters["status_label"] = lambda s: AttemptStatus(s).label
    app.jinja_env.filters["words"] = lambda s: str(s).replace("_", " ")
