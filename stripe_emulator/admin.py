"""Test hooks under /_emulator (JSON in and out), for tests and demos; no Stripe SDK reaches them.

    GET  /_emulator/health                     {"status": "ok", "api_version": ...}
    GET  /_emulator/faults, POST /_emulator/faults   the switchable faults (faults.py)
    GET  /_emulator/state                      every object, account and counter
    POST /_emulator/reset                      forget everything (the default account remains)
    POST /_emulator/{payment_intents|setup_intents}/{id}/authenticate   {"outcome": "succeed"|"fail"}
    GET  /_emulator/accounts                   the registry
    POST /_emulator/accounts                   create an account (connected to a platform by default)
    GET  /_emulator/accounts/{id}, POST /_emulator/accounts/{id}   read / change (account.updated)
    POST /_emulator/accounts/{id}/keys         another secret key for the account
    POST /_emulator/accounts/{id}/deauthorize  the account disconnects from its platform
    POST /_emulator/keys/revoke                {"key": ...}: later requests with it get 401
    POST /_emulator/oauth_clients              a platform's Connect application (client id)
    POST /_emulator/{refunds|disputes|checkout_sessions}/{id}/settle   run what was planned, now
    POST /_emulator/charges/{id}/dispute       the cardholder disputes a succeeded charge
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from . import bank_page
from .accounts import ACCOUNT_ID_RE, DEFAULT_ACCOUNT, Account, hash_password
from .faults import FaultError
from .oauth import application_deauthorized
from .resources.disputes import open_dispute
from .schema import API_VERSION
from .wire import ApiError, Response

if TYPE_CHECKING:
    from .api import Emulator

_AUTHENTICATE_RE = re.compile(r"^/_emulator/(payment_intents|setup_intents)/([^/]+)/authenticate$")
_ACCOUNT_RE = re.compile(r"^/_emulator/accounts/([^/]+)(/keys|/deauthorize)?$")
_SETTLE_RE = re.compile(r"^/_emulator/(refunds|disputes|checkout_sessions)/([^/]+)/settle$")
_DISPUTE_RE = re.compile(r"^/_emulator/charges/([^/]+)/dispute$")
_ACCOUNT_FIELDS = {"business_name": str, "email": str, "password": str, "country": str,
                   "default_currency": str, "charges_enabled": bool, "payouts_enabled": bool}


def _json(status: int, obj: Any) -> Response:
    return Response(status, json.dumps(obj).encode())


def error(status: int, message: str, param: str | None = None) -> Response:
    body: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if param is not None:
        body["param"] = param
    return _json(status, {"error": body})


def handle(emu: Emulator, method: str, path: str, query: str, body: bytes, base_url: str) -> Response:
    payload: Any = {}
    if body.strip():
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return error(400, "Body must be JSON.")
    if not isinstance(payload, dict) and path != "/_emulator/faults":
        return error(400, "Body must be a JSON object.")
    try:
        return _route(emu, method, path, payload, base_url)
    except ApiError as err:
        return Response(err.status, err.body())


def _route(emu: Emulator, method: str, path: str, payload: Any, base_url: str) -> Response:
    route = (method, path)
    if route == ("GET", "/_emulator/health"):
        return _json(200, {"status": "ok", "api_version": API_VERSION})
    if route == ("GET", "/_emulator/faults"):
        return _json(200, emu.faults.to_dict())
    if route == ("POST", "/_emulator/faults"):
        try:
            return _json(200, emu.fault_state.update(payload).to_dict())
        except FaultError as err:
            return error(400, str(err), param=err.key or None)
    if route == ("GET", "/_emulator/state"):
        return _json(200, emu.state())
    if route == ("POST", "/_emulator/reset"):
        emu.reset()
        return _json(200, {"reset": True})
    if route == ("GET", "/_emulator/accounts"):
        with emu.store.lock:
            return _json(200, {"data": emu.registry.render()})
    if route == ("POST", "/_emulator/accounts"):
        return _create_account(emu, payload)
    if route == ("POST", "/_emulator/keys/revoke"):
        with emu.store.lock:
            try:
                emu.registry.revoke_key(str(payload.get("key", "")))
            except KeyError:
                return error(404, "No such API key.", param="key")
            emu.mark_dirty()
        return _json(200, {"revoked": True})
    if route == ("POST", "/_emulator/oauth_clients"):
        return _create_client(emu, payload)
    hit = _AUTHENTICATE_RE.match(path)
    if hit and method == "POST":
        status, result = bank_page.authenticate(emu, hit.group(1), hit.group(2),
                                                payload.get("outcome", "succeed"), base_url)
        result.pop("_next_action", None)
        return _json(status, result)
    hit = _ACCOUNT_RE.match(path)
    if hit:
        return _account(emu, method, hit.group(1), hit.group(2), payload, base_url)
    hit = _SETTLE_RE.match(path)
    if hit and method == "POST":
        return _settle(emu, hit.group(2), payload, base_url)
    hit = _DISPUTE_RE.match(path)
    if hit and method == "POST":
        return _dispute(emu, hit.group(1), payload, base_url)
    return error(404, f"Unknown emulator endpoint: {method} {path}")


def _account_view(emu: Emulator, account: Account) -> dict[str, Any]:
    return next(a for a in emu.registry.render() if a["id"] == account.id)


def _create_account(emu: Emulator, payload: dict[str, Any]) -> Response:
    options: dict[str, Any] = {}
    for key, kind in (*_ACCOUNT_FIELDS.items(), ("id", str), ("secret_key", str)):
        if key in payload and payload[key] is not None:
            if not isinstance(payload[key], kind):
                return error(400, f"{key} must be a {kind.__name__}", param=key)
            options["account_id" if key == "id" else key] = payload[key]
    connect = payload.get("connect", True)
    platform = payload.get("platform") or DEFAULT_ACCOUNT
    with emu.store.lock:
        if connect and platform not in emu.registry.accounts:
            return error(400, f"No such platform account: {platform}", param="platform")
        try:
            account = emu.registry.create_account(int(time.time()), **options)
        except ValueError as err:
            return error(400, str(err))
        if connect:
            client = emu.registry.client_of(platform)
            emu.registry.connect(account.id, platform, client.id, "read_write", int(time.time()))
        emu.mark_dirty()
        return _json(200, _account_view(emu, account))


def _create_client(emu: Emulator, payload: dict[str, Any]) -> Response:
    platform = payload.get("platform") or DEFAULT_ACCOUNT
    uris = payload.get("redirect_uris") or []
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        return error(400, "redirect_uris must be a list of URLs", param="redirect_uris")
    with emu.store.lock:
        if platform not in emu.registry.accounts:
            return error(400, f"No such platform account: {platform}", param="platform")
        name = str(payload.get("name") or emu.registry.accounts[platform].business_name)
        client = emu.registry.add_client(platform, name, uris)
        emu.mark_dirty()
        return _json(200, {"client_id": client.id, "platform": platform, "name": name,
                           "redirect_uris": uris})


def _account(emu: Emulator, method: str, account_id: str, action: str | None, payload: dict[str, Any],
             base_url: str) -> Response:
    with emu.store.lock:
        account = emu.registry.accounts.get(account_id) if ACCOUNT_ID_RE.match(account_id) else None
        if account is None:
            return error(404, f"No such account: '{account_id}'")
        if method == "GET" and action is None:
            return _json(200, _account_view(emu, account))
        if method != "POST":
            return error(405, "Use POST.")
        if action == "/keys":
            try:
                key = emu.registry.add_secret_key(account_id, payload.get("secret_key"))
            except ValueError as err:
                return error(400, str(err), param="secret_key")
            emu.mark_dirty()
            return _json(200, {"secret_key": key})
        if action == "/deauthorize":
            platforms = [payload["platform"]] if payload.get("platform") else list(account.connections)
            for platform in platforms:
                connection = account.connections.get(platform)
                if connection is None:
                    return error(400, f"{account_id} is not connected to {platform}", param="platform")
                application_deauthorized(emu, account_id, emu.registry.clients[connection.client_id],
                                         base_url)
            emu.mark_dirty()
            return _json(200, _account_view(emu, account))
        return _update_account(emu, account, payload, base_url)


def _update_account(emu: Emulator, account: Account, payload: dict[str, Any], base_url: str) -> Response:
    before = account.render()
    for key, value in payload.items():
        kind = _ACCOUNT_FIELDS.get(key)
        if kind is None or not isinstance(value, kind):
            return error(400, f"Cannot set {key!r} here" if kind is None else f"{key} must be a "
                         f"{kind.__name__}", param=key)
    for key, value in payload.items():
        if key == "password":
            account.password_hash = hash_password(value)
        else:
            setattr(account, key, value)
    after = account.render()
    previous = {k: v for k, v in before.items() if after.get(k) != v}
    if previous:
        emu.context(account.id, base_url).emit("account.updated", after, previous)
    emu.mark_dirty()
    return _json(200, _account_view(emu, account))


def _settle(emu: Emulator, obj_id: str, payload: dict[str, Any], base_url: str) -> Response:
    overrides = {k: v for k, v in payload.items() if k in ("status", "failure_reason")}
    with emu.store.lock:
        account = emu.store.find_owner(obj_id)
        if account is None:
            return error(404, f"No such object: '{obj_id}'")
        plan = emu.store.accounts[account].plans.get(obj_id)
        if plan is None and "status" not in overrides and not obj_id.startswith("cs_"):
            return error(400, f"Nothing is planned for {obj_id}: say what it becomes ({{\"status\": ...}}).",
                         param="status")
        return _json(200, emu.run_plan(account, obj_id, overrides, base_url))


def _dispute(emu: Emulator, charge_id: str, payload: dict[str, Any], base_url: str) -> Response:
    reason = payload.get("reason", "fraudulent")
    if not isinstance(reason, str):
        return error(400, "reason must be a string", param="reason")
    with emu.store.lock:
        account = emu.store.find_owner(charge_id)
        if account is None:
            return error(404, f"No such charge: '{charge_id}'")
        ctx = emu.context(account, base_url)
        charge = ctx.data.charges[charge_id]
        if charge["status"] != "succeeded" or charge["disputed"]:
            return error(400, f"Charge {charge_id} cannot be disputed (status {charge['status']}, "
                              f"disputed {charge['disputed']}).")
        dispute = open_dispute(ctx, charge, reason, bool(payload.get("inquiry", False)))
        emu.mark_dirty()
        return _json(200, dispute)
