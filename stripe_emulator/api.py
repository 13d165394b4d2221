"""The emulator application: one request in, one ``Response`` out, independent of the HTTP server.

Order for /v1 requests (and Connect's POST /oauth/token and /oauth/deauthorize), chosen to match what
Stripe saves under an idempotency key: authentication (the key's account, then Stripe-Account) and
Stripe-Version -> rate limit (429, not executed) -> injected 5xx (not executed) -> routing, parameter
parsing and the endpoint's parameter contract (schema.py; nothing saved) -> idempotency claim (replay /
409 / 400) -> latency -> execution under the store lock (validation errors release the key, everything
else is saved) -> drop-after-commit.

The pages a browser visits (hosted Checkout, the bank's 3-D Secure page, the Connect OAuth authorize page)
and the test hooks under /_emulator live in their own modules and call back into the Emulator.
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

from . import admin, bank_page, checkout_page, oauth, resources
from .accounts import ACCOUNT_ID_RE, DEFAULT_ACCOUNT, Registry, mask_key
from .events import CLI_ENDPOINT, EventRecord, WebhookDispatcher, check_webhook_url
from .faults import Faults, FaultState
from .idempotency import Claim, IdempotencyStore, fingerprint
from .resources import Ctx, disputes, refunds
from .resources.checkout_sessions import expire_session
from .scheduler import Scheduler
from .schema import API_VERSION, check_version
from .store import TABLES, Persistence, Store, new_id
from .wire import ApiError, Params, Response, invalid, nest, parse_pairs

# Prune expired idempotency keys every this many API requests.
_PRUNE_EVERY = 5000
_EVENT_TYPE_RE = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


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
    # The --webhook-url endpoint's enabled_events: "*" (every type) or exact event type names. Events
    # of the other types are still created (GET /v1/events lists them), they are only not delivered.
    webhook_events: tuple[str, ...] = ("*",)
    # More secret keys of the default account, beside sk_test_emulator (--api-key).
    api_keys: tuple[str, ...] = ()

    def subscribed(self, event_type: str) -> bool:
        return "*" in self.webhook_events or event_type in self.webhook_events


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


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def subscribed(enabled_events: list[str], event_type: str) -> bool:
    return "*" in enabled_events or event_type in enabled_events


class Emulator:
    def __init__(self, config: Config) -> None:
        if config.webhook_url:
            check_webhook_url(config.webhook_url)
        self.config = config
        self.store = Store()
        self.registry = self._fresh_registry()
        self.idem = IdempotencyStore()
        self._faults = FaultState(config.faults)
        self.scheduler = Scheduler(self._run_due_plan)
        self.dispatcher = WebhookDispatcher(
            self._endpoint_target, self._faults,
            max_attempts=config.webhook_max_attempts,
            base_delay_s=config.webhook_base_delay_s,
            max_delay_s=config.webhook_max_delay_s,
        )
        self.dispatcher.on_change.append(self.mark_dirty)
        self.persistence: Persistence | None = None
        if config.state_file is not None:
            self.persistence = Persistence(
                Path(config.state_file), self._dump, lambda: self.store.dirty, self._mark_clean,
                interval_s=config.save_interval_s,
            )
            saved = self.persistence.read()
            if saved is not None:
                self._load(saved)

    def _fresh_registry(self) -> Registry:
        registry = Registry(int(time.time()))
        for key in self.config.api_keys:
            registry.add_secret_key(DEFAULT_ACCOUNT, key)
        return registry

    def _load(self, saved: dict[str, Any]) -> None:
        self.store.load_json(saved, DEFAULT_ACCOUNT)
        self.idem.load_json([{**row, "account": row["account"] or DEFAULT_ACCOUNT}
                             for row in saved.get("idempotency", [])])
        if "registry" in saved:
            self.registry = Registry.from_json(saved["registry"])
            for key in self.config.api_keys:
                if key not in self.registry.keys:
                    self.registry.add_secret_key(DEFAULT_ACCOUNT, key)
        else:
            # A state file from before the registry: its connected accounts were created on first use.
            now = int(time.time())
            for name in self.store.accounts:
                if name != DEFAULT_ACCOUNT and ACCOUNT_ID_RE.match(name):
                    self.registry.create_account(now, account_id=name)
                    self.registry.connect(name, DEFAULT_ACCOUNT, "ca_emulator", "read_write", now)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.dispatcher.start()
        self.scheduler.start()
        with self.store.lock:
            for name, data in self.store.accounts.items():
                # Events still undelivered when the state was saved are delivered after a restart.
                for rec in data.events.values():
                    for endpoint, attempts in rec.pending.items():
                        if attempts < self.dispatcher.max_attempts:
                            self.dispatcher.enqueue(rec, endpoint)
                for obj_id, plan in data.plans.items():
                    if plan.get("due") is not None:
                        self.scheduler.at(plan["due"], name, obj_id)
        if self.persistence is not None:
            self.persistence.start()

    def close(self) -> None:
        self.scheduler.stop()
        self.dispatcher.stop()
        if self.persistence is not None:
            self.persistence.close()

    def mark_dirty(self) -> None:
        self.store.dirty = True

    def _mark_clean(self) -> None:
        self.store.dirty = False

    def _dump(self) -> str:
        # Serialized while the lock is held: handlers mutate these dicts in place.
        with self.store.lock:
            return json.dumps({**self.store.to_json(), "registry": self.registry.to_json(),
                               "idempotency": self.idem.to_json()})

    # ------------------------------------------------------------------ what handlers reach (Services)

    @property
    def faults(self) -> Faults:
        return self._faults.current

    @property
    def fault_state(self) -> FaultState:
        return self._faults

    def context(self, account: str, base_url: str, request_id: str | None = None,
                idempotency_key: str | None = None) -> Ctx:
        """A handler's context for ``account``; call with ``store.lock`` held."""
        return Ctx(account, self.store.account(account), request_id, idempotency_key, int(time.time()),
                   self, base_url)

    def emit(self, ctx: Ctx, type_: str, obj: dict[str, Any], previous: dict[str, Any] | None,
             platforms: list[str] | None = None) -> None:
        """The event for a change on ``ctx.account``, delivered to the endpoints that take it: the
        --webhook-url one, the account's own, and its platforms' Connect endpoints (``platforms``
        narrows those, for an event about one connection)."""
        evt_id = new_id("evt_")
        connected = platforms if platforms is not None else self.registry.platforms_of(ctx.account)
        targets = self._targets(ctx.account, connected, type_)
        event: dict[str, Any] = {"id": evt_id, "object": "event"}
        if connected:
            event["account"] = ctx.account
        data: dict[str, Any] = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        event.update(
            api_version=API_VERSION,
            created=ctx.now,
            data=data,
            livemode=False,
            pending_webhooks=len(targets),
            request={"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
            type=type_,
        )
        # Serialized now, under the store lock: the payload is a snapshot of the object at this moment.
        rec = EventRecord(evt_id, type_, ctx.now, ctx.account, json.dumps(event), dict.fromkeys(targets, 0))
        ctx.data.events[evt_id] = rec
        for target in targets:
            self.dispatcher.enqueue(rec, target)

    def _targets(self, account: str, platforms: list[str], type_: str) -> list[str]:
        targets = [CLI_ENDPOINT] if self.config.webhook_url and self.config.subscribed(type_) else []
        owners = [(account, False)] + [(p, True) for p in platforms]
        for owner, connect in owners:
            data = self.store.accounts.get(owner)
            if data is None:
                continue
            for we in data.webhook_endpoints.values():
                if (we["status"] == "enabled" and data.endpoint_private[we["id"]]["connect"] == connect
                        and subscribed(we["enabled_events"], type_)):
                    targets.append(we["id"])
        return targets

    def _endpoint_target(self, endpoint: str) -> tuple[str, str] | None:
        if endpoint == CLI_ENDPOINT:
            url = self.config.webhook_url
            return (url, self.config.webhook_secret) if url else None
        with self.store.lock:
            owner = self.store.find_owner(endpoint)
            if owner is None:
                return None
            data = self.store.accounts[owner]
            we = data.webhook_endpoints[endpoint]
            if we["status"] != "enabled":
                return None
            return we["url"], data.endpoint_private[endpoint]["secret"]

    def plan(self, ctx: Ctx, obj_id: str, action: dict[str, Any], at: float | None = None) -> None:
        if at is None:
            delay = self.faults.settle_delay_ms
            at = None if delay is None else time.time() + delay / 1000.0
        ctx.data.plans[obj_id] = {**action, "due": at}
        if at is not None:
            self.scheduler.at(at, ctx.account, obj_id)

    def _run_due_plan(self, account: str, obj_id: str) -> None:
        with self.store.lock:
            data = self.store.accounts.get(account)
            plan = data.plans.get(obj_id) if data is not None else None
            # Gone (a test settled it first) or moved (planned again, later): nothing to do now.
            if plan is None or plan.get("due") is None or plan["due"] > time.time() + 0.001:
                return
            self.run_plan(account, obj_id, {}, "http://127.0.0.1")

    def run_plan(self, account: str, obj_id: str, overrides: dict[str, Any], base_url: str) -> dict[str, Any]:
        """Carry out ``obj_id``'s plan now (with ``overrides``); the object as it is after. Raises
        ApiError when the object has nothing planned and ``overrides`` do not say what to do."""
        with self.store.lock:
            ctx = self.context(account, base_url)
            plan = {**ctx.data.plans.pop(obj_id, {}), **overrides}
            kind = obj_id.split("_", 1)[0]
            if kind == "re":
                result = refunds.settle(ctx, ctx.data.refunds[obj_id], plan)
            elif kind == "du":
                result = disputes.decide(ctx, ctx.data.disputes[obj_id], plan)
            elif kind == "cs":
                result = expire_session(ctx, ctx.data.checkout_sessions[obj_id])
            else:
                raise invalid(f"Nothing is planned for {obj_id}.")
            self.mark_dirty()
            return result

    # ------------------------------------------------------------------ entry point

    def handle(self, method: str, target: str, body: bytes, headers: Mapping[str, str]) -> Response:
        path, _, query = target.partition("?")
        base_url = self._base_url(headers)
        if path.startswith("/v1/"):
            return self.api(method, path, query, body, headers)
        if path in ("/oauth/token", "/oauth/deauthorize") and method == "POST":
            return self.api(method, path, query, body, headers)
        if path == "/oauth/authorize":
            return oauth.authorize_page(self, method, query, body, base_url)
        if path.startswith("/c/pay/"):
            return checkout_page.handle(self, method, path, query, body, base_url)
        if path.startswith("/_emulator/3ds/"):
            return bank_page.handle(self, method, path, query, body, base_url)
        if path.startswith("/_emulator/"):
            return admin.handle(self, method, path, query, body, base_url)
        return self._unrecognized(method, path, [])

    @staticmethod
    def _base_url(headers: Mapping[str, str]) -> str:
        return f"http://{headers.get('Host') or '127.0.0.1'}"

    @staticmethod
    def _unrecognized(method: str, path: str, headers: list[tuple[str, str]]) -> Response:
        err = invalid(f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or "
                      "we can help at https://support.stripe.com/.", status=404)
        return Response(404, err.body(), headers)

    # ------------------------------------------------------------------ /v1 and Connect's /oauth

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

    def authenticate(self, headers: Mapping[str, str]) -> tuple[str, str]:
        """(the key's account, the account the request acts for); raises Stripe's 401 / 403."""
        key = self._api_key(headers)
        if not key:
            raise invalid("You did not provide an API key. You need to provide your API key in the "
                          "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                          "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                          "or we can help at https://support.stripe.com/.", status=401)
        # Read without the store lock (single dict reads), so authentication never waits for a handler.
        owner = self.registry.keys.get(key)
        if owner is None:
            word = "Expired" if key in self.registry.revoked else "Invalid"
            raise invalid(f"{word} API Key provided: {mask_key(key)}", status=401)
        if key.startswith("pk_"):
            raise invalid("This API call cannot be made with a publishable API key. Please use a secret "
                          "API key. You can find a list of your API keys at "
                          "https://dashboard.stripe.com/account/apikeys.", status=401)
        account = (headers.get("Stripe-Account") or "").strip()
        if not account:
            return owner, owner
        if not ACCOUNT_ID_RE.match(account) or not self.registry.can_act_for(owner, account):
            raise invalid(f"The provided key '{mask_key(key)}' does not have access to account "
                          f"'{account}' (or that account does not exist). Application access may have "
                          "been revoked.", code="account_invalid", status=403)
        return owner, account

    def api(self, method: str, path: str, query: str, body: bytes, headers: Mapping[str, str]) -> Response:
        self.store.count("total")
        if self.store.requests["total"] % _PRUNE_EVERY == 0:
            self.idem.prune()
        is_oauth = path.startswith("/oauth/")
        request_id = new_id("req_", 14)
        out_headers = [("Request-Id", request_id), ("Stripe-Version", API_VERSION)]

        def answer(err: ApiError) -> Response:
            return Response(err.status, oauth.error_body(err) if is_oauth else err.body(), out_headers)

        try:
            key_account, account = self.authenticate(headers)
            check_version(headers.get("Stripe-Version"))
        except ApiError as err:
            return answer(err)
        faults = self.faults
        latency = faults.latency_s()

        if not self._faults.allow(account):
            self.store.count("rate_limited")
            time.sleep(latency)
            return answer(invalid("Request rate limit exceeded. You can learn more about rate limits here "
                                  "https://stripe.com/docs/rate-limits.", code="rate_limit", status=429))
        if faults.error_rate and random.random() < faults.error_rate:
            self.store.count("errors_injected")
            time.sleep(latency)
            body_500 = {"error": {"message": "Sorry, something went wrong. We've already been notified of "
                                             "the problem, but if you need any help, you can reach us at "
                                             "support.stripe.com/contact.", "type": "api_error"}}
            return Response(500, json_bytes(body_500), out_headers)

        route = oauth.match(method, path) if is_oauth else resources.match(method, path)
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
            return answer(invalid("Request body is not valid UTF-8"))
        except ApiError as err:
            return answer(err)

        key = headers.get("Idempotency-Key") if method == "POST" else None
        if key is not None:
            out_headers.append(("Idempotency-Key", key))
            early = self._claim(account, key, method, path, pairs, out_headers, latency)
            if early is not None:
                return early

        if latency:
            time.sleep(latency)
        with self.store.lock:
            ctx = self.context(account, self._base_url(headers), request_id, key)
            ctx.key_account = key_account
            try:
                status, payload, saved = 200, json_bytes(handler(ctx, params, args)), True
            except ApiError as err:
                status, saved = err.status, err.saved
                payload = oauth.error_body(err) if is_oauth else err.body()
                out_headers.extend(err.headers)
            except Exception:
                # A bug mid-execution answers like Stripe's own 500s, and is saved like them.
                traceback.print_exc(file=sys.stderr)
                status, saved = 500, True
                payload = json_bytes({"error": {"message": "An unexpected error occurred in the emulator.",
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
            return Response(409, json_bytes({"error": error}), out_headers)
        assert rec is not None
        if claim is Claim.OTHER_ENDPOINT:
            message = ("Keys for idempotent requests can only be used for the same endpoint they were first "
                       f"used for ('{rec.method} {rec.path}' vs '{method} {path}'). Try using a key other "
                       f"than '{key}' if you meant to execute a different request.")
        else:
            message = ("Keys for idempotent requests can only be used with the same parameters they were "
                       f"first used with. Try using a key other than '{key}' if you meant to execute a "
                       "different request.")
        return Response(400, json_bytes({"error": {"message": message, "type": "idempotency_error"}}),
                        out_headers)

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """Every object of every account; serialize it before releasing ``store.lock``."""
        out: dict[str, Any] = {name: [] for name in TABLES}
        out["events"] = []
        with self.store.lock:
            for name, data in self.store.accounts.items():
                # The default account's objects show account None, as objects without Stripe-Account.
                acct = None if name == DEFAULT_ACCOUNT else name
                for table in TABLES:
                    out[table].extend({**obj, "account": acct} for obj in data.table(table).values())
                out["events"].extend(rec.render() for rec in data.events.values())
                for we in out["webhook_endpoints"]:
                    if we["id"] in data.endpoint_private:
                        we.update(data.endpoint_private[we["id"]])
            out["accounts"] = self.registry.render()
            out["requests"] = dict(self.store.requests)
        webhooks: dict[str, Any] = {"url": self.config.webhook_url,
                                    "events": list(self.config.webhook_events)}
        webhooks.update(self.dispatcher.stats.to_dict(), queued=self.dispatcher.pending())
        out["webhooks"] = webhooks
        return out

    def reset(self) -> None:
        """Forget every object, key, account, counter, plan and queued delivery; faults go back to their
        start values and the registry to the default account."""
        with self.store.lock:
            self.store.clear()
            self.registry = self._fresh_registry()
        self.idem.clear()
        self._faults.reset()
        self.dispatcher.clear()
        self.scheduler.clear()
