"""The emulator application: one request in, one ``Response`` out, independent of the HTTP server.

Order for /v1 requests, chosen to match what Stripe saves under an idempotency key:
authentication and Stripe-Version -> rate limit (429, not executed) -> injected 5xx (not executed) ->
routing, parameter parsing and the endpoint's parameter contract (schema.py; nothing saved) ->
idempotency claim (replay / 409 / 400) -> latency -> execution under the store lock (validation errors
release the key, everything else is saved) -> drop-after-commit.
"""

from __future__ import annotations

import base64
import json
import random
import re
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from . import resources
from .events import EventRecord, WebhookDispatcher
from .faults import FaultError, Faults, FaultState
from .idempotency import Claim, IdempotencyStore, fingerprint
from .resources import Ctx
from .resources.payment_intents import authenticate_pi
from .resources.setup_intents import authenticate_si
from .schema import API_VERSION, check_version
from .store import PLATFORM, TABLES, Persistence, Store, new_id
from .wire import ApiError, Params, Response, invalid, nest, parse_pairs

_ACCOUNT_RE = re.compile(r"^acct_[A-Za-z0-9]+$")
_ADMIN_AUTH_RE = re.compile(r"^/_emulator/(payment_intents|setup_intents)/([^/]+)/authenticate$")
_THREE_DS_RE = re.compile(r"^/_emulator/3ds/((?:pi|seti)_[A-Za-z0-9]+)$")
_THREE_DS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>3-D Secure (Stripe emulator)</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 4em auto">
<h1>3-D Secure test page</h1>
<p>The Stripe emulator stands in for the card issuer here. Authenticate {obj_id}?</p>
<form method="get" style="display: inline"><input type="hidden" name="outcome" value="succeed">
<button type="submit" id="succeed">Complete authentication</button></form>
<form method="get" style="display: inline"><input type="hidden" name="outcome" value="fail">
<button type="submit" id="fail">Fail authentication</button></form>
</body></html>
"""
# Prune expired idempotency keys every this many API requests.
_PRUNE_EVERY = 5000


@dataclass
class Config:
    webhook_url: str | None = None
    webhook_secret: str = "whsec_emulator"
    state_file: Path | None = None
    faults: Faults = field(default_factory=Faults)
    webhook_max_attempts: int = 10
    webhook_base_delay_s: float = 0.5
    webhook_max_delay_s: float = 30.0
    save_interval_s: float = 2.0
    # The endpoint's enabled_events: "*" (every type) or exact event type names. Events of the other
    # types are still created (GET /v1/events lists them), they are only not delivered.
    webhook_events: tuple[str, ...] = ("*",)

    def subscribed(self, event_type: str) -> bool:
        return "*" in self.webhook_events or event_type in self.webhook_events


_EVENT_TYPE_RE = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


def parse_webhook_events(value: str) -> tuple[str, ...]:
    """A comma-separated enabled_events list, as Stripe takes it: "*" or exact event type names."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise ValueError("webhook events: give '*' or at least one event type")
    wrong = [name for name in names if name != "*" and not _EVENT_TYPE_RE.match(name)]
    if wrong:
        raise ValueError(f"webhook events: not an event type: {', '.join(wrong)} "
                         "(e.g. payment_intent.succeeded)")
    return names


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _admin_error(status: int, message: str, param: str | None = None) -> Response:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if param is not None:
        error["param"] = param
    return Response(status, _json({"error": error}))


class Emulator:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store()
        self.idem = IdempotencyStore()
        self.faults = FaultState(config.faults)
        self.dispatcher: WebhookDispatcher | None = None
        if config.webhook_url:
            self.dispatcher = WebhookDispatcher(
                config.webhook_url,
                config.webhook_secret,
                self.faults,
                max_attempts=config.webhook_max_attempts,
                base_delay_s=config.webhook_base_delay_s,
                max_delay_s=config.webhook_max_delay_s,
            )
            self.dispatcher.on_change.append(self._mark_dirty)
        self.persistence: Persistence | None = None
        if config.state_file is not None:
            self.persistence = Persistence(
                Path(config.state_file), self._dump, lambda: self.store.dirty, self._mark_clean,
                interval_s=config.save_interval_s,
            )
            saved = self.persistence.read()
            if saved is not None:
                self.store.load_json(saved)
                self.idem.load_json(saved.get("idempotency", []))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.start()
            # Events still undelivered when the state was saved are delivered after a restart.
            with self.store.lock:
                for data in self.store.accounts.values():
                    for rec in data.events.values():
                        if rec.pending_webhooks and rec.attempts < self.dispatcher.max_attempts:
                            self.dispatcher.enqueue(rec)
        if self.persistence is not None:
            self.persistence.start()

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.persistence is not None:
            self.persistence.close()

    def _mark_dirty(self) -> None:
        self.store.dirty = True

    def _mark_clean(self) -> None:
        self.store.dirty = False

    def _dump(self) -> str:
        # Serialized while the lock is held: handlers mutate these dicts in place.
        with self.store.lock:
            return json.dumps({**self.store.to_json(), "idempotency": self.idem.to_json()})

    # ------------------------------------------------------------------ events

    def _emit(self, ctx: Ctx, type_: str, obj: dict[str, Any], previous: dict[str, Any] | None) -> None:
        evt_id = new_id("evt_")
        delivered = self.dispatcher is not None and self.config.subscribed(type_)
        pending = 1 if delivered else 0
        event: dict[str, Any] = {"id": evt_id, "object": "event"}
        if ctx.account:
            event["account"] = ctx.account
        data: dict[str, Any] = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        event.update(
            api_version=API_VERSION,
            created=ctx.now,
            data=data,
            livemode=False,
            pending_webhooks=pending,
            request={"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
            type=type_,
        )
        # Serialized now, under the store lock: the payload is a snapshot of the object at this moment.
        rec = EventRecord(evt_id, type_, ctx.now, ctx.account, json.dumps(event), pending)
        ctx.data.events[evt_id] = rec
        if delivered:
            assert self.dispatcher is not None
            self.dispatcher.enqueue(rec)

    # ------------------------------------------------------------------ entry point

    def handle(self, method: str, target: str, body: bytes, headers: Mapping[str, str]) -> Response:
        path, _, query = target.partition("?")
        if path.startswith("/v1/"):
            return self._api(method, path, query, body, headers)
        if path.startswith("/_emulator/"):
            return self._admin(method, path, query, body, self._base_url(headers))
        return self._unrecognized(method, path, [])

    @staticmethod
    def _base_url(headers: Mapping[str, str]) -> str:
        return f"http://{headers.get('Host') or '127.0.0.1'}"

    @staticmethod
    def _unrecognized(method: str, path: str, headers: list[tuple[str, str]]) -> Response:
        err = invalid(f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or "
                      "we can help at https://support.stripe.com/.", status=404)
        return Response(404, err.body(), headers)

    # ------------------------------------------------------------------ /v1

    @staticmethod
    def _api_key(headers: Mapping[str, str]) -> str:
        auth = headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        if scheme.lower() == "basic":
            try:
                return base64.b64decode(value.strip()).decode().partition(":")[0]
            except (ValueError, UnicodeDecodeError):
                return ""
        return ""

    def _authenticate(self, headers: Mapping[str, str]) -> str:
        """The account the request acts for; raises a 401/403 ApiError otherwise."""
        key = self._api_key(headers)
        if not key:
            raise invalid("You did not provide an API key. You need to provide your API key in the "
                          "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                          "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                          "or we can help at https://support.stripe.com/.", status=401)
        if not key.startswith(("sk_test_", "rk_test_")):
            shown = key[:8] + "*" * 4 + key[-4:] if len(key) > 12 else key
            raise invalid(f"Invalid API Key provided: {shown}. The emulator only accepts test mode "
                          "secret keys (sk_test_...).", status=401)
        account = (headers.get("Stripe-Account") or "").strip()
        if account and not _ACCOUNT_RE.match(account):
            raise invalid(f"The provided key does not have access to account '{account}' (or that account "
                          "does not exist). Application access may have been revoked.",
                          code="account_invalid", status=403)
        return account or PLATFORM

    def _api(self, method: str, path: str, query: str, body: bytes, headers: Mapping[str, str]) -> Response:
        self.store.count("total")
        if self.store.requests["total"] % _PRUNE_EVERY == 0:
            self.idem.prune()
        request_id = new_id("req_", 14)
        out_headers = [("Request-Id", request_id), ("Stripe-Version", API_VERSION)]
        try:
            account = self._authenticate(headers)
            check_version(headers.get("Stripe-Version"))
        except ApiError as err:
            return Response(err.status, err.body(), out_headers)
        faults = self.faults.current
        latency = faults.latency_s()

        if not self.faults.allow(account):
            self.store.count("rate_limited")
            time.sleep(latency)
            err = invalid("Request rate limit exceeded. You can learn more about rate limits here "
                          "https://stripe.com/docs/rate-limits.", code="rate_limit", status=429)
            return Response(429, err.body(), out_headers)
        if faults.error_rate and random.random() < faults.error_rate:
            self.store.count("errors_injected")
            time.sleep(latency)
            body_500 = {"error": {"message": "Sorry, something went wrong. We've already been notified of "
                                             "the problem, but if you need any help, you can reach us at "
                                             "support.stripe.com/contact.", "type": "api_error"}}
            return Response(500, _json(body_500), out_headers)

        route = resources.match(method, path)
        if route is None:
            return self._unrecognized(method, path, out_headers)
        handler, contract, args = route
        try:
            raw = body.decode("utf-8") if method == "POST" else query
            pairs = parse_pairs(raw)
            data = nest(pairs)
            contract.check(data)
            params = Params(data)
        except UnicodeDecodeError:
            return Response(400, invalid("Request body is not valid UTF-8").body(), out_headers)
        except ApiError as err:
            return Response(err.status, err.body(), out_headers)

        key = headers.get("Idempotency-Key") if method == "POST" else None
        if key is not None:
            out_headers.append(("Idempotency-Key", key))
            early = self._claim(account, key, method, path, pairs, out_headers, latency)
            if early is not None:
                return early

        if latency:
            time.sleep(latency)
        with self.store.lock:
            ctx = Ctx(account, self.store.account(account), request_id, key, int(time.time()), self._emit,
                      self._base_url(headers))
            try:
                status, payload, saved = 200, _json(handler(ctx, params, args)), True
            except ApiError as err:
                status, payload, saved = err.status, err.body(), err.saved
                out_headers.extend(err.headers)
            except Exception:
                # A bug mid-execution answers like Stripe's own 500s, and is saved like them.
                traceback.print_exc(file=sys.stderr)
                status, saved = 500, True
                payload = _json({"error": {"message": "An unexpected error occurred in the emulator.",
                                           "type": "api_error"}})
            if saved and method != "GET":
                self.store.dirty = True
        if key is not None:
            if saved:
                self.idem.complete(account, key, status, payload, request_id)
            else:
                self.idem.release(account, key)
        if method == "POST" and saved and faults.response_delay_ms:
            time.sleep(faults.response_delay_ms / 1000.0)
        resp = Response(status, payload, out_headers)
        rate = faults.drop_after_commit_rate
        if method == "POST" and saved and rate and random.random() < rate:
            self.store.count("dropped_after_commit")
            resp.drop = True
        return resp

    def _claim(self, account: str, key: str, method: str, path: str, pairs: list[tuple[str, str]],
               out_headers: list[tuple[str, str]], latency: float) -> Response | None:
        """Claim the idempotency key; a Response when the request must not execute."""
        if not key or len(key) > 255:
            err = invalid("Invalid idempotency key: it must be 1 to 255 characters.",
                          param="Idempotency-Key")
            return Response(400, err.body(), out_headers)
        claim, rec = self.idem.claim(account, key, method, path, fingerprint(pairs))
        if claim is Claim.NEW:
            return None
        if claim is Claim.REPLAY:
            assert rec is not None and rec.status is not None
            time.sleep(latency)
            replay_headers = [("Request-Id", rec.request_id), ("Stripe-Version", API_VERSION),
                              ("Idempotency-Key", key), ("Idempotent-Replayed", "true"),
                              ("Original-Request", rec.request_id)]
            return Response(rec.status, rec.body, replay_headers)
        if claim is Claim.IN_USE:
            error = {"code": "idempotency_key_in_use",
                     "doc_url": "https://stripe.com/docs/error-codes/idempotency-key-in-use",
                     "message": "There is currently another in-progress request using this Idempotent Key "
                                "(that probably means you submitted twice, and the other request is still "
                                f"going through): {key}. Please try again later.",
                     "type": "idempotency_error"}
            return Response(409, _json({"error": error}), out_headers)
        assert rec is not None
        if claim is Claim.OTHER_ENDPOINT:
            message = ("Keys for idempotent requests can only be used for the same endpoint they were first "
                       f"used for ('{rec.method} {rec.path}' vs '{method} {path}'). Try using a key other "
                       f"than '{key}' if you meant to execute a different request.")
        else:
            message = ("Keys for idempotent requests can only be used with the same parameters they were "
                       f"first used with. Try using a key other than '{key}' if you meant to execute a "
                       "different request.")
        return Response(400, _json({"error": {"message": message, "type": "idempotency_error"}}), out_headers)

    # ------------------------------------------------------------------ /_emulator

    def _admin(self, method: str, path: str, query: str, body: bytes, base_url: str) -> Response:
        payload: Any = {}
        if body.strip():
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                return _admin_error(400, "Body must be JSON.")
        route = (method, path)
        if route == ("GET", "/_emulator/health"):
            return Response(200, _json({"status": "ok", "api_version": API_VERSION}))
        if route == ("GET", "/_emulator/faults"):
            return Response(200, _json(self.faults.current.to_dict()))
        if route == ("POST", "/_emulator/faults"):
            try:
                faults = self.faults.update(payload)
            except FaultError as err:
                return _admin_error(400, str(err), param=err.key or None)
            return Response(200, _json(faults.to_dict()))
        if route == ("GET", "/_emulator/state"):
            with self.store.lock:
                return Response(200, _json(self.state()))
        if route == ("POST", "/_emulator/reset"):
            self.reset()
            return Response(200, _json({"reset": True}))
        hit = _ADMIN_AUTH_RE.match(path)
        if hit and method == "POST":
            outcome = payload.get("outcome", "succeed") if isinstance(payload, dict) else None
            kind = "payment_intents" if hit.group(1) == "payment_intents" else "setup_intents"
            return self._authenticate_intent(kind, hit.group(2), outcome, base_url)
        page = _THREE_DS_RE.match(path)
        if page and method == "GET":
            return self._three_ds_page(page.group(1), query, base_url)
        return _admin_error(404, f"Unknown emulator endpoint: {method} {path}")

    def _three_ds_page(self, obj_id: str, query: str, base_url: str) -> Response:
        """What next_action URLs point at: the issuer's 3-D Secure step, then back to return_url."""
        outcome = dict(parse_pairs(query)).get("outcome")
        if outcome is None:
            html = _THREE_DS_PAGE.format(obj_id=obj_id)
            return Response(200, html.encode(), content_type="text/html; charset=utf-8")
        kind = "payment_intents" if obj_id.startswith("pi_") else "setup_intents"
        with self.store.lock:
            account = self.store.find_owner(obj_id)
            obj = self.store.account(account).table(kind).get(obj_id) if account is not None else None
            action = (obj or {}).get("next_action") or {}
            step = action.get("redirect_to_url") or action.get("use_stripe_sdk") or {}
            return_url = step.get("return_url")
            resp = self._authenticate_intent(kind, obj_id, outcome, base_url)
            if resp.status != 200 or not return_url or obj is None:
                return resp
            name = "payment_intent" if kind == "payment_intents" else "setup_intent"
            status = "succeeded" if obj["status"] == "succeeded" else "failed"
            params = urlencode({name: obj_id, f"{name}_client_secret": obj["client_secret"],
                                "redirect_status": status})
            location = f"{return_url}{'&' if '?' in return_url else '?'}{params}"
        return Response(302, b"", [("Location", location)], content_type="text/plain")

    def _authenticate_intent(self, kind: str, obj_id: str, outcome: Any, base_url: str) -> Response:
        """Complete or fail the 3-D Secure step a customer would do in Stripe.js."""
        if outcome not in ("succeed", "fail"):
            return _admin_error(400, "outcome must be 'succeed' or 'fail'", param="outcome")
        with self.store.lock:
            account = self.store.find_owner(obj_id)
            obj = self.store.account(account).table(kind).get(obj_id) if account is not None else None
            if account is None or obj is None:
                return _admin_error(404, f"No such {kind[:-1]}: '{obj_id}'")
            ctx = Ctx(account, self.store.account(account), None, None, int(time.time()), self._emit,
                      base_url)
            try:
                if kind == "payment_intents":
                    result = authenticate_pi(ctx, obj, outcome == "succeed")
                else:
                    result = authenticate_si(ctx, obj, outcome == "succeed")
            except ApiError as err:
                return Response(err.status, err.body())
            self.store.dirty = True
            return Response(200, _json(result))

    def state(self) -> dict[str, Any]:
        """Every object of every account; serialize it before releasing ``store.lock``."""
        out: dict[str, Any] = {name: [] for name in TABLES}
        out["events"] = []
        with self.store.lock:
            for name, data in self.store.accounts.items():
                acct = name or None
                for table in TABLES:
                    out[table].extend({**obj, "account": acct} for obj in data.table(table).values())
                out["events"].extend(rec.render() for rec in data.events.values())
            out["requests"] = dict(self.store.requests)
        webhooks: dict[str, Any] = {"url": self.config.webhook_url,
                                    "events": list(self.config.webhook_events)}
        if self.dispatcher is not None:
            webhooks.update(self.dispatcher.stats.to_dict(), queued=self.dispatcher.pending())
        out["webhooks"] = webhooks
        return out

    def reset(self) -> None:
        """Forget every object, key, counter and queued delivery; faults go back to their start values."""
        self.store.clear()
        self.idem.clear()
        self.faults.reset()
        if self.dispatcher is not None:
            self.dispatcher.clear()
