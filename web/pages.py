"""What the admin pages and the Client Zone share: sign-in guards, CSRF, flash, formatting."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, abort, g, redirect, request, session, url_for

from shared.db import session_scope
from shared.models import AdminUser, Client
from shared.money import format_money
from shared.states import AttemptStatus
from web.csrf import FIELD, check_csrf, csrf_token

ADMIN_KEY = "admin_id"
CLIENT_KEY = "client_id"


def login_required_admin(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        admin_id = session.get(ADMIN_KEY)
        if admin_id is None:
            return redirect(url_for("admin.login", next=request.path))
        with session_scope() as db:
            admin = db.get(AdminUser, admin_id)
            if admin is None:
                session.pop(ADMIN_KEY, None)
                return redirect(url_for("admin.login"))
            g.admin_email = admin.email
        g.actor = f"admin:{g.admin_email}"
        return view(*args, **kwargs)

    return wrapper


def login_required_client(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        client_id = session.get(CLIENT_KEY)
        if client_id is None:
            return redirect(url_for("client.login"))
        with session_scope() as db:
            client = db.get(Client, client_id)
            if client is None:
                session.pop(CLIENT_KEY, None)
                abort(404)
            g.client_name = client.name
        g.client_id = int(client_id)
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
