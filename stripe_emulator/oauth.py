"""Connect OAuth for Standard accounts (docs.stripe.com/connect/oauth-standard-accounts,
docs.stripe.com/connect/oauth-reference), on the emulator's own host (the SDK's ``connect`` base address).

GET /oauth/authorize?response_type=code&client_id=ca_...&scope=read_write&state=...&redirect_uri=...
shows a page where a person signs in to an existing account (email and password), creates one, or
denies. Then the browser goes to redirect_uri with ``code`` (ac_..., single use), ``scope`` and
``state``, or with ``error=access_denied``. The platform exchanges the code: POST /oauth/token
(authorization_code -> stripe_user_id, a secret key for the account, its publishable key, a refresh
token; ``invalid_grant`` for an unknown or reused code); only then is the account connected, so a
Stripe-Account naming it works with the platform's key. POST /oauth/deauthorize disconnects it, revokes
the keys given to the platform and sends account.application.deauthorized to the platform's Connect
endpoints. Errors have OAuth's shape ({"error": ..., "error_description": ...}), which the stripe SDK
turns into stripe.oauth_error.* exceptions.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from . import schema
from .accounts import Grant, OAuthClient, password_matches
from .html import escape, form_fields, page, redirect, with_query
from .ids import new_id
from .resources import CompiledRoute, compile_routes
from .resources.base import Ctx, Handler, Route
from .wire import ApiError, Params, Response, parse_pairs

if TYPE_CHECKING:
    from .api import Emulator

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class OAuthError(ApiError):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(status, {"message": description, "type": "invalid_request_error", "code": error})


def error_body(err: ApiError) -> bytes:
    """An error in OAuth's shape; errors raised before a handler ran (authentication, parameters,
    faults) become invalid_client / invalid_request."""
    code = err.error.get("code")
    if not isinstance(err, OAuthError):
        code = "invalid_client" if err.status == 401 else "invalid_request"
    return json.dumps({"error": code, "error_description": err.error.get("message", "")}).encode()


# ---- POST /oauth/token and /oauth/deauthorize (through the API pipeline) ----------------------------


def token(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    registry = ctx.services.registry
    platform = ctx.key_account or ctx.account
    grant_type = p.str("grant_type")
    if grant_type == "authorization_code":
        code = p.str("code") or ""
        grant = registry.codes.get(code)
        if grant is None:
            raise OAuthError("invalid_grant", f"Authorization code does not exist: {code}")
        if registry.clients[grant.client_id].platform != platform:
            raise OAuthError("invalid_grant", f"Authorization code provided does not belong to you: {code}")
        if grant.used:
            raise OAuthError("invalid_grant", f"Authorization code has already been used: {code}")
        grant.used = True
        registry.connect(grant.account, platform, grant.client_id, grant.scope, ctx.now)
    elif grant_type == "refresh_token":
        refresh = p.str("refresh_token") or p.str("code") or ""
        grant = registry.refresh_tokens.get(refresh)
        if grant is None or registry.clients[grant.client_id].platform != platform:
            raise OAuthError("invalid_grant", f"Refresh token does not exist: {refresh}")
    else:
        raise OAuthError("unsupported_grant_type", f"Unsupported grant type: {grant_type}")
    account = registry.accounts[grant.account]
    access_token = registry.add_secret_key(account.id)
    registry.access_tokens[access_token] = Grant(grant.client_id, account.id, grant.scope)
    refresh_token = new_id("rt_", 40)
    registry.refresh_tokens[refresh_token] = Grant(grant.client_id, account.id, grant.scope)
    return {
        "access_token": access_token,
        "livemode": False,
        "refresh_token": refresh_token,
        "scope": grant.scope,
        "stripe_publishable_key": account.publishable_key,
        "stripe_user_id": account.id,
        "token_type": "bearer",
    }


def deauthorize(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    registry = ctx.services.registry
    platform = ctx.key_account or ctx.account
    client_id = p.str("client_id") or ""
    account_id = p.str("stripe_user_id") or ""
    client = registry.clients.get(client_id)
    if client is None or client.platform != platform:
        raise OAuthError("invalid_client", f"No such application: '{client_id}'")
    account = registry.accounts.get(account_id)
    if account is None or platform not in account.connections:
        raise OAuthError("invalid_client", f"This application is not connected to stripe account "
                                           f"{account_id}, or that account does not exist.")
    application_deauthorized(ctx.services, account_id, client, ctx.base_url)
    return {"stripe_user_id": account_id}


def application_deauthorized(emu: Any, account_id: str, client: OAuthClient, base_url: str) -> None:
    """The connection ends (from either side): the platform's Connect endpoints hear of it."""
    ctx = emu.context(account_id, base_url)
    application = {"id": client.id, "object": "application", "name": client.name}
    ctx.emit("account.application.deauthorized", application, None, platforms=[client.platform])
    emu.registry.disconnect(account_id, client.platform)


_ROUTES: list[Route] = [("POST", "/oauth/token", token), ("POST", "/oauth/deauthorize", deauthorize)]
ROUTES: list[CompiledRoute] = compile_routes((type("OAuthRoutes", (), {"ROUTES": _ROUTES}),))


def match(method: str, path: str) -> tuple[Handler, schema.Endpoint, tuple[str, ...]] | None:
    for m, regex, handler, contract in ROUTES:
        if m == method and regex.match(path):
            return handler, contract, ()
    return None


# ---- the authorize page ------------------------------------------------------------------------------


def authorize_page(emu: Emulator, method: str, query: str, body: bytes, base_url: str) -> Response:
    fields = form_fields(body) if method == "POST" else {}
    request = dict(parse_pairs(query)) if method == "GET" else {
        k[4:]: v for k, v in fields.items() if k.startswith("req_")}
    with emu.store.lock:
        client = emu.registry.clients.get(request.get("client_id", ""))
        if client is None:
            return _problem(f"No such application: '{request.get('client_id', '')}'. Check the client_id "
                            "of your platform's Connect settings.")
        registered = client.redirect_uris[0] if client.redirect_uris else ""
        redirect_uri = request.get("redirect_uri") or registered
        if not _redirect_allowed(client, redirect_uri):
            return _problem(f"Invalid redirect URI '{redirect_uri}'. Ensure this uri exactly matches one of "
                            "the uris specified in your application settings.")
        if request.get("response_type", "code") != "code":
            return redirect(_answer(redirect_uri, request, error="unsupported_response_type",
                                    description="Only response_type=code is supported."))
        scope = request.get("scope") or "read_only"
        if scope not in ("read_only", "read_write"):
            return redirect(_answer(redirect_uri, request, error="invalid_scope",
                                    description=f"Invalid scope: {scope}"))
        if method == "GET":
            return _ask(emu, client, request)
        action = fields.get("action")
        if action == "deny":
            return redirect(_answer(redirect_uri, request, error="access_denied",
                                    description="The user denied your request"), 303)
        now = int(time.time())
        if action == "sign_in":
            account = emu.registry.by_email(fields.get("email", ""))
            if account is None or not password_matches(account.password_hash, fields.get("password", "")):
                return _ask(emu, client, request, sign_in_error="Incorrect email or password.",
                            email=fields.get("email", ""))
        elif action == "create":
            email, password = fields.get("email", "").strip(), fields.get("password", "")
            name = fields.get("business_name", "").strip()
            problem = _new_account_problem(emu, name, email, password)
            if problem:
                return _ask(emu, client, request, create_error=problem, email=email, name=name)
            account = emu.registry.create_account(now, business_name=name, email=email, password=password)
            emu.mark_dirty()
        else:
            return _ask(emu, client, request)
        if account.id == client.platform:
            return _ask(emu, client, request, sign_in_error="This is the platform's own account: sign in "
                        "to the account to connect.", email=fields.get("email", ""))
        code = new_id("ac_", 32)
        emu.registry.codes[code] = Grant(client.id, account.id, scope)
        emu.mark_dirty()
        return redirect(_answer(redirect_uri, request, code=code, scope=scope), 303)


def _redirect_allowed(client: OAuthClient, uri: str) -> bool:
    if client.redirect_uris:
        return uri in client.redirect_uris
    parts = urlsplit(uri)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _answer(redirect_uri: str, request: dict[str, str], **result: str) -> str:
    params: dict[str, str] = {}
    if "code" in result:
        params.update(code=result["code"], scope=result["scope"])
    else:
        params.update(error=result["error"], error_description=result["description"])
    if request.get("state") is not None:
        params["state"] = request["state"]
    return with_query(redirect_uri, urlencode(params))


def _new_account_problem(emu: Emulator, name: str, email: str, password: str) -> str | None:
    if not name:
        return "Enter your business name."
    if not _EMAIL_RE.match(email):
        return "Enter a valid email address."
    if emu.registry.by_email(email) is not None:
        return "An account with this email already exists: sign in instead."
    if len(password) < 8:
        return "Your password must be at least 8 characters."
    return None


def _problem(message: str) -> Response:
    body = f'<h1>Something went wrong</h1><p class="error" role="alert">{escape(message)}</p>'
    return page("Connect", body, 400)


def _ask(emu: Emulator, client: OAuthClient, request: dict[str, str], sign_in_error: str | None = None,
         create_error: str | None = None, email: str = "", name: str = "") -> Response:
    platform = emu.registry.accounts[client.platform].business_name
    carried = "".join(f'<input type="hidden" name="req_{escape(k)}" value="{escape(v)}">'
                      for k, v in request.items())

    def alert(message: str | None) -> str:
        return f'<p class="error" role="alert">{escape(message)}</p>' if message else ""

    body = f"""<h1>Connect with {escape(platform)}</h1>
<p>{escape(client.name)} would like to connect to your Stripe account ({escape(request.get("scope") or
"read_only")} access). Stripe emulator: test mode.</p>
<h2>Sign in to your Stripe account</h2>{alert(sign_in_error)}
<form method="post" action="/oauth/authorize">{carried}<input type="hidden" name="action" value="sign_in">
<label for="signin-email">Email</label>
<input id="signin-email" name="email" type="email" autocomplete="username" value="{escape(email)}">
<label for="signin-password">Password</label>
<input id="signin-password" name="password" type="password" autocomplete="current-password">
<button type="submit" id="sign-in">Sign in and connect</button></form>
<h2>Or create a Stripe account</h2>{alert(create_error)}
<form method="post" action="/oauth/authorize">{carried}<input type="hidden" name="action" value="create">
<label for="create-name">Business name</label>
<input id="create-name" name="business_name" value="{escape(name)}">
<label for="create-email">Email address</label>
<input id="create-email" name="email" type="email" autocomplete="email">
<label for="create-password">Choose a password</label>
<input id="create-password" name="password" type="password" autocomplete="new-password">
<button type="submit" id="create">Create account and connect</button></form>
<form method="post" action="/oauth/authorize">{carried}<input type="hidden" name="action" value="deny">
<button type="submit" id="deny">Deny access</button></form>"""
    return page("Connect", body)
