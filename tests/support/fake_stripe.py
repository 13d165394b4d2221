"""An in-memory Stripe with Stripe's semantics, behind the Stripe gateway's own methods.

`FakeStripe` has the public methods of shared.adapters.stripe_gateway.StripeGateway (the port
shared.services.ports.StripePort), with the same signatures, return values and exceptions; tests hand it
to the domain code wherever the gateway goes. Behind it, a `FakeStripeServer` keeps what Stripe keeps,
per account (the platform is ''):

- idempotency keys per (account, key), remembered 24 h on the server's clock: a replay gets the saved
  answer back unchanged (the snapshot of then, declines included); the same key with other parameters
  or on another endpoint is a 400 idempotency error; a request while the first with its key still
  executes is a 409 (idempotency_key_in_use). Validation errors (400) save nothing. Stripe:
  docs.stripe.com/api/idempotent_requests.
- test cards as Stripe's test mode treats them (stripe_emulator/cards.py holds that table: declines,
  authentication off-session, setup checks); a detached PaymentMethod cannot be charged again.
- faults, injected per request or at a rate: `5xx` (Stripe did not execute it), `429`, `lost` (Stripe
  executed and committed it, the answer never arrived), `crash` (Stripe committed it and then the caller
  died: a BaseException no handler catches), `crash_before` (the caller died before sending).
- events, kept in order of creation and handed out by the test: late, twice, out of order
  (`take_events`, `signed`); `verify_webhook` checks signatures against the server's clock.
- a clock (`FakeClock`) that follows the wall clock or stands still until moved.

Like the gateway, each FakeStripe call stands for the whole call, the SDK's own network retries included
(`max_network_retries`: connection errors, 409 and 5xx are sent again under the same key).

The server also records every request (`requests`) and every set of parameters each key was sent with
(`key_fingerprints`), so tests can check what reached Stripe and when.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from shared.adapters.stripe_accounts import account_view
from shared.adapters.stripe_checkout import card_setup_view
from shared.adapters.stripe_wire import (
    STRIPE_API_VERSION,
    card_details,
    payment_intent_create_params,
    unix_seconds,
)
from shared.domain.payments import (
    WEBHOOK_TOLERANCE_SECONDS,
    CardDetails,
    CardSetupDeclined,
    CardSetupRequiresAction,
    CardSetupView,
    ChargeOutcome,
    ChargeRequest,
    GatewayError,
    PaymentIntentView,
    PermanentStripeError,
    RefundView,
    RequiresAction,
    StripeAccountView,
    TransientStripeError,
    WebhookEndpointView,
    WebhookPayloadError,
    WebhookSignatureError,
    classify_payment_intent,
    payment_intent_view,
    refund_view,
)
from stripe_emulator import cards

__all__ = ["FakeClock", "FakeStripe", "FakeStripeServer", "RequestRecord", "WorkerCrashed"]

# Stripe keeps a key "at least 24 hours"; the fake forgets it after exactly that.
KEY_TTL = timedelta(hours=24)
# The SDK's backoff between its own retries (stripe.HTTPClient INITIAL_DELAY / MAX_DELAY), no jitter.
SDK_INITIAL_DELAY = 0.5
SDK_MAX_DELAY = 5.0
PLATFORM = ""
CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation", "requires_action")
CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")

FaultKind = Literal["5xx", "429", "lost", "crash", "crash_before", "latency"]


class WorkerCrashed(BaseException):
    """The process that made the call died (fault `crash` / `crash_before`). A BaseException: nothing in
    the product catches it, as nothing runs in a process that was killed."""


class FakeClock:
    """Stripe's clock and, in tests that patch it in, the product's. Follows the wall clock (plus what
    `advance` added) unless started `frozen`, when only `advance` moves it."""

    def __init__(self, start: datetime | None = None, *, frozen: bool = False) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError("use an aware datetime")
        self._frozen_at = start if frozen or start is not None else None
        if frozen and self._frozen_at is None:
            self._frozen_at = datetime.now(UTC)
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def now(self) -> datetime:
        with self._lock:
            base = self._frozen_at if self._frozen_at is not None else datetime.now(UTC)
            return base + self._offset

    def timestamp(self) -> int:
        return int(self.now().timestamp())

    def advance(self, by: float | timedelta) -> datetime:
        step = by if isinstance(by, timedelta) else timedelta(seconds=by)
        if step < timedelta(0):
            raise ValueError("time does not go back")
        with self._lock:
            self._offset += step
        return self.now()


@dataclass(frozen=True)
class RequestRecord:
    """One request as it reached the fake Stripe (an SDK retry is a request of its own)."""

    seq: int
    at: datetime
    account: str
    method: str
    path: str
    idempotency_key: str | None
    params: dict[str, Any]
    # What happened: ok, card_error, invalid_request, idempotency, in_use, 5xx, 429, lost, crash,
    # crash_before, authentication.
    outcome: str = ""

    @property
    def is_write(self) -> bool:
        return self.method == "post"


@dataclass
class _KeyRecord:
    endpoint: tuple[str, str]
    fingerprint: str
    created: datetime
    done: bool = False
    # ("ok", body) or ("card_error", error body): what a replay answers.
    answer: tuple[str, dict[str, Any]] | None = None


@dataclass
class _Account:
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    webhook_endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    payment_methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    setup_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkout_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    # PaymentMethods set up for off-session use (a SetupIntent with usage=off_session succeeded).
    set_up: set[str] = field(default_factory=set)
    # PaymentMethod id -> the test token it was made from.
    tokens: dict[str, str] = field(default_factory=dict)


class _ApiError(Exception):
    """An error answer of the fake API, before the gateway translates it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        saved: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type_, "message": message, **(extra or {})}
        if code is not None:
            self.body["code"] = code
        if param is not None:
            self.body["param"] = param
        self.saved = saved  # executed: the idempotency layer keeps it (a 402)


class _Retryable(Exception):
    """A try the SDK would send again (5xx, 409, connection error), already translated."""

    def __init__(self, error: TransientStripeError) -> None:
        super().__init__(error.message)
        self.error = error


def _fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def _sign(payload: str, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class FakeStripeServer:
    """What Stripe keeps, for every FakeStripe made over it, and the controls a test turns."""

    def __init__(self, clock: FakeClock | None = None, *, seed: int = 0) -> None:
        self.clock = clock or FakeClock()
        self.lock = threading.RLock()
        self.random = random.Random(seed)
        self._ids = itertools.count(1)
        self._accounts: dict[str, _Account] = {}
        self._keys: dict[tuple[str, str], _KeyRecord] = {}
        # Every fingerprint each (account, key) was ever sent with, forgotten never.
        self.key_fingerprints: dict[tuple[str, str], set[str]] = {}
        self.requests: list[RequestRecord] = []
        self.events: list[dict[str, Any]] = []
        self._undelivered: list[dict[str, Any]] = []
        # Scheduled faults: (operation or None for any, kind), consumed in order.
        self._scheduled: list[tuple[str | None, FaultKind]] = []
        self.faults: dict[str, Any] = {
            "error_rate": 0.0,
            "drop_after_commit_rate": 0.0,
            "rate_limit": None,
            "latency_ms": 0,
        }
        self.counters = {"errors_injected": 0, "rate_limited": 0, "dropped_after_commit": 0}
        # The status a new refund starts in ("pending" as pm_card_pendingRefund; settle_refund moves it).
        self.new_refund_status = "succeeded"
        self._rate_window: tuple[int, int] = (0, 0)  # (second, requests in it)
        # GET /v1/account: the key's own account, the connected accounts a Stripe-Account may name (any
        # other is refused with 403, as Stripe does), keys refused with 401, and OAuth codes not yet used.
        self.platform_account: dict[str, Any] = {
            "id": "acct_fakeplatform",
            "name": "Fake Platform Ltd",
            "charges_enabled": True,
        }
        self.connected_accounts: dict[str, dict[str, Any]] = {}
        self.refused_keys: set[str] = set()
        self.oauth_codes: dict[str, str] = {}
        # Called with every request as it arrives, before anything happens to it (tests check there
        # what the caller had committed by then). It may raise to stand for anything the caller does.
        self.on_request: Callable[[RequestRecord], None] | None = None

    # ---- ids, accounts, time ----------------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}fake"

    def account(self, stripe_account: str | None) -> _Account:
        return self._accounts.setdefault(stripe_account or PLATFORM, _Account())

    def now(self) -> int:
        return self.clock.timestamp()

    # ---- faults -------------------------------------------------------------------------------------

    def fail_next(self, kind: FaultKind, operation: str | None = None, *, times: int = 1) -> None:
        """The next `times` requests of `operation` (a gateway method name, or None for any request) meet
        `kind`. An SDK retry is a request of its own."""
        with self.lock:
            self._scheduled.extend([(operation, kind)] * times)

    def clear_faults(self) -> None:
        with self.lock:
            self._scheduled.clear()
            self.faults.update(error_rate=0.0, drop_after_commit_rate=0.0, rate_limit=None, latency_ms=0)

    def set_faults(self, **faults: Any) -> None:
        """The emulator's /_emulator/faults keys this fake knows (others are accepted and ignored)."""
        with self.lock:
            for name in ("error_rate", "drop_after_commit_rate", "rate_limit", "latency_ms"):
                if name in faults:
                    self.faults[name] = faults[name]

    def _take_fault(self, operation: str) -> FaultKind | None:
        for index, (wanted, kind) in enumerate(self._scheduled):
            if wanted is None or wanted == operation:
                del self._scheduled[index]
                return kind
        return None

    def _rate_limited(self) -> bool:
        limit = self.faults.get("rate_limit")
        if not limit:
            return False
        second = int(time.monotonic())
        start, count = self._rate_window
        count = count + 1 if start == second else 1
        self._rate_window = (second, count)
        return count > float(limit)

    # ---- the request pipeline -----------------------------------------------------------------------

    def handle(
        self,
        *,
        api_key: str,
        account: str | None,
        operation: str,
        method: str,
        path: str,
        params: dict[str, Any],
        idempotency_key: str | None,
        execute: Callable[[_Account], dict[str, Any]],
    ) -> dict[str, Any]:
        """One try of one request: returns the answer's body, or raises _ApiError / _Retryable /
        TransientStripeError (429) / WorkerCrashed."""
        acct = account or PLATFORM
        with self.lock:
            record = RequestRecord(
                next(self._ids), self.clock.now(), acct, method, path, idempotency_key, dict(params)
            )
            self.requests.append(record)
            index = len(self.requests) - 1
        if self.on_request is not None:
            self.on_request(record)

        def finish(outcome: str) -> None:
            with self.lock:
                self.requests[index] = RequestRecord(**{**record.__dict__, "outcome": outcome})

        with self.lock:
            fault = self._take_fault(operation)
            if (
                fault is None
                and self.faults["error_rate"]
                and self.random.random() < self.faults["error_rate"]
            ):
                fault = "5xx"
            if fault is None and self._rate_limited():
                fault = "429"
        if fault == "crash_before":
            finish("crash_before")
            raise WorkerCrashed(f"the caller died before {operation} was sent")
        if api_key in self.refused_keys or not (
            api_key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_"))
        ):
            finish("authentication")
            raise _ApiError(401, f"Invalid API Key provided: {api_key[:8]}***", type_="invalid_request_error")
        if fault == "5xx":
            with self.lock:
                self.counters["errors_injected"] += 1
            finish("5xx")
            raise _Retryable(
                TransientStripeError(
                    "An unknown error occurred (injected)", code=None, http_status=500, request_id=self._rid()
                )
            )
        if fault == "429":
            with self.lock:
                self.counters["rate_limited"] += 1
            finish("429")
            raise TransientStripeError(
                "Request rate limit exceeded.",
                code="rate_limit",
                http_status=429,
                request_id=self._rid(),
                rate_limited=True,
            )
        key_id = (acct, idempotency_key) if idempotency_key is not None else None
        digest = _fingerprint(params)
        if key_id is not None:
            with self.lock:
                self.key_fingerprints.setdefault(key_id, set()).add(digest)
                saved = self._keys.get(key_id)
                if saved is not None and saved.done and self.clock.now() - saved.created >= KEY_TTL:
                    del self._keys[key_id]
                    saved = None
                if saved is None:
                    self._keys[key_id] = _KeyRecord((method, path), digest, self.clock.now())
                elif not saved.done:
                    finish("in_use")
                    raise _Retryable(
                        TransientStripeError(
                            "There is currently another in-progress request using this Idempotent Key (that "
                            "probably means you submitted twice, and the other request is still going "
                            "through): " + idempotency_key,
                            code="idempotency_key_in_use",
                            http_status=409,
                            request_id=self._rid(),
                        )
                    )
                elif saved.endpoint != (method, path) or saved.fingerprint != digest:
                    finish("idempotency")
                    what = "endpoint" if saved.endpoint != (method, path) else "parameters"
                    raise _ApiError(
                        400,
                        f"Keys for idempotent requests can only be used with the same {what} they were first "
                        f"used with. Try using a key other than '{idempotency_key}' if you meant to execute "
                        "a different request.",
                        type_="idempotency_error",
                    )
                else:
                    finish("replay")
                    kind, body = saved.answer or ("ok", {})
                    answer = copy.deepcopy(body)
            if saved is not None:
                self._after_commit(answer, fault, finish, operation)
                if kind == "card_error":
                    raise _ApiError(402, answer["message"], type_="card_error", extra=answer)
                return answer
        latency = float(self.faults.get("latency_ms") or 0) / 1000 + (0.8 if fault == "latency" else 0.0)
        if latency:
            time.sleep(latency)  # the key stays claimed meanwhile: a second request with it gets a 409
        try:
            with self.lock:
                answer = execute(self.account(account))
                saved_answer: tuple[str, dict[str, Any]] = ("ok", copy.deepcopy(answer))
        except _ApiError as exc:
            with self.lock:
                if key_id is not None:
                    if exc.saved:
                        self._keys[key_id].done = True
                        self._keys[key_id].answer = ("card_error", copy.deepcopy(exc.body))
                    else:
                        self._keys.pop(key_id, None)  # failed validation: nothing saved
            finish("card_error" if exc.status == 402 else exc.body.get("type", "error"))
            if exc.saved:
                self._after_commit({}, fault, finish, operation)
            raise
        with self.lock:
            if key_id is not None:
                self._keys[key_id].done = True
                self._keys[key_id].answer = saved_answer
        finish("ok")
        return self._after_commit(answer, fault, finish, operation)

    def _after_commit(
        self,
        answer: dict[str, Any],
        fault: FaultKind | None,
        finish: Callable[[str], None],
        operation: str,
    ) -> dict[str, Any]:
        """The answer, unless the fault says the caller never got it (`lost`) or died (`crash`)."""
        drop = fault == "lost" or (
            fault is None
            and self.faults["drop_after_commit_rate"]
            and self.random.random() < self.faults["drop_after_commit_rate"]
        )
        if fault == "crash":
            finish("crash")
            raise WorkerCrashed(f"the caller died after Stripe committed {operation}")
        if drop:
            with self.lock:
                self.counters["dropped_after_commit"] += 1
            finish("lost")
            raise _Retryable(
                TransientStripeError(
                    "Request timed out: the answer was lost after Stripe committed the request",
                    code=None,
                    http_status=None,
                )
            )
        return answer

    def _rid(self) -> str:
        return self.new_id("req_")

    # ---- events -------------------------------------------------------------------------------------

    def emit(self, account: _Account, event_type: str, obj: dict[str, Any]) -> None:
        """Record an event whose data.object is a snapshot of `obj` now (callers hold the lock)."""
        acct = next((name for name, a in self._accounts.items() if a is account), PLATFORM)
        event: dict[str, Any] = {
            "id": self.new_id("evt_"),
            "object": "event",
            "api_version": STRIPE_API_VERSION,
            "created": self.now(),
            "data": {"object": self.rendered(obj)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        if acct:
            event["account"] = acct
        self.events.append(event)
        self._undelivered.append(event)

    def take_events(self) -> list[dict[str, Any]]:
        """The events not taken yet, oldest first. The test delivers them as it likes."""
        with self.lock:
            taken, self._undelivered = self._undelivered, []
            return taken

    def has_undelivered_events(self) -> bool:
        with self.lock:
            return bool(self._undelivered)

    def signed(self, event: dict[str, Any], secret: str, timestamp: int | None = None) -> tuple[bytes, str]:
        """The webhook request Stripe would send: (body, Stripe-Signature), signed at `timestamp`
        (default: the server's clock now)."""
        payload = json.dumps(event)
        return payload.encode(), _sign(payload, secret, self.now() if timestamp is None else timestamp)

    # ---- what a person does at Stripe (no gateway call of ours) --------------------------------------

    def complete_authentication(
        self, payment_intent_id: str, *, succeed: bool = True, stripe_account: str | None = None
    ) -> dict[str, Any]:
        """The cardholder finishes (or fails) 3-D Secure on the bank's page."""
        with self.lock:
            acct = self.account(stripe_account)
            pi = acct.payment_intents[payment_intent_id]
            if pi["status"] != "requires_action":
                raise ValueError(f"{payment_intent_id} is {pi['status']}, not requires_action")
            pm = acct.payment_methods[pi["payment_method"]]
            if not succeed:
                pi.update(
                    status="requires_payment_method",
                    payment_method=None,
                    next_action=None,
                    last_payment_error={
                        "type": "invalid_request_error",
                        "code": "payment_intent_authentication_failure",
                        "message": "The provided PaymentMethod has failed authentication.",
                    },
                )
                self.emit(acct, "payment_intent.payment_failed", pi)
                return copy.deepcopy(pi)
            spec = self.spec(acct, pm["id"])
            if spec.decline is not None:
                self._decline(acct, pi, pm, spec.decline)
            else:
                self._succeed(acct, pi)
            return copy.deepcopy(pi)

    def authenticate_setup_intent(self, setup_intent_id: str, *, stripe_account: str | None = None) -> None:
        with self.lock:
            acct = self.account(stripe_account)
            setup = acct.setup_intents[setup_intent_id]
            if setup["status"] != "requires_action":
                raise ValueError(f"{setup_intent_id} is {setup['status']}")
            self._setup_succeeds(acct, setup)

    def complete_checkout(
        self, session_id: str, token: str = "pm_card_visa", *, stripe_account: str | None = None
    ) -> dict[str, Any]:
        """A person saves a card on a setup-mode Checkout Session's hosted page (authenticating with
        their bank when the card asks). A declined card leaves the session open with nothing saved."""
        with self.lock:
            acct = self.account(stripe_account)
            session = acct.checkout_sessions[session_id]
            if session["status"] != "open":
                raise ValueError(f"{session_id} is {session['status']}, not open")
            setup = acct.setup_intents[session["setup_intent"]]
            pm = self.materialize(acct, token)
            setup["payment_method"] = pm["id"]
            decline = cards.setup_decline(self.spec(acct, pm["id"]))
            if decline is not None:
                setup.update(
                    status="requires_payment_method",
                    payment_method=None,
                    last_setup_error=self._card_error(decline),
                )
                self.emit(acct, "setup_intent.setup_failed", setup)
                return copy.deepcopy(session)
            self._setup_succeeds(acct, setup)
            self.emit(acct, "payment_method.attached", pm)
            self.emit(acct, "setup_intent.succeeded", setup)
            session.update(status="complete", url=None)
            self.emit(acct, "checkout.session.completed", session)
            return copy.deepcopy(session)

    def dashboard_refund(
        self, payment_intent_id: str, amount: int | None = None, *, stripe_account: str | None = None
    ) -> dict[str, Any]:
        """A refund made in Stripe's Dashboard: no key of ours, only its events tell us."""
        with self.lock:
            acct = self.account(stripe_account)
            return self._refund(acct, payment_intent_id, amount)

    # ---- reading what Stripe holds ------------------------------------------------------------------

    def payment_intents(self, stripe_account: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(pi) for pi in self.account(stripe_account).payment_intents.values()]

    def refunds(self, stripe_account: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(r) for r in self.account(stripe_account).refunds.values()]

    def all_payment_intents(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [
                (name, copy.deepcopy(pi))
                for name, acct in self._accounts.items()
                for pi in acct.payment_intents.values()
            ]

    def all_refunds(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [
                (name, copy.deepcopy(r))
                for name, acct in self._accounts.items()
                for r in acct.refunds.values()
            ]

    def state(self) -> dict[str, Any]:
        """The emulator's /_emulator/state shape, for the platform account."""
        with self.lock:
            acct = self.account(None)
            return copy.deepcopy(
                {
                    "customers": list(acct.customers.values()),
                    "payment_methods": list(acct.payment_methods.values()),
                    "payment_intents": list(acct.payment_intents.values()),
                    "refunds": list(acct.refunds.values()),
                    "requests": dict(self.counters),
                }
            )

    # ---- objects ------------------------------------------------------------------------------------

    def spec(self, acct: _Account, payment_method_id: str) -> cards.CardSpec:
        return cards.spec_for(acct.tokens.get(payment_method_id, "pm_card_visa"))

    def customer(self, acct: _Account, customer_id: str, param: str = "customer") -> dict[str, Any]:
        customer = acct.customers.get(customer_id)
        if customer is None:
            raise _ApiError(
                400 if param != "id" else 404,
                f"No such customer: '{customer_id}'",
                code="resource_missing",
                param=param if param != "id" else None,
            )
        return customer

    def payment_method(self, acct: _Account, reference: str, customer_id: str | None) -> dict[str, Any]:
        """A PaymentMethod the request names: a test token makes a fresh one, as on Stripe."""
        if cards.is_test_token(reference):
            return self.materialize(acct, reference)
        pm = acct.payment_methods.get(reference)
        if pm is None:
            raise _ApiError(
                400, f"No such PaymentMethod: '{reference}'", code="resource_missing", param="payment_method"
            )
        if pm["customer"] is None and pm.get("_detached"):
            raise _ApiError(
                400,
                "The provided PaymentMethod was previously used with a PaymentIntent without Customer "
                "attachment, shared with a connected account without Customer attachment, or was detached "
                "from a Customer. It may not be used again. To use a PaymentMethod multiple times, you must "
                "attach it to a Customer first.",
                param="payment_method",
            )
        if pm["customer"] is not None and customer_id is not None and pm["customer"] != customer_id:
            raise _ApiError(
                400,
                f"The provided PaymentMethod {reference} belongs to Customer {pm['customer']}, not to "
                f"{customer_id}.",
                param="payment_method",
            )
        return pm

    def materialize(self, acct: _Account, token: str) -> dict[str, Any]:
        spec = cards.spec_for(token)
        pm = {
            "id": self.new_id("pm_"),
            "object": "payment_method",
            "type": "card",
            "customer": None,
            "card": {
                "brand": spec.brand,
                "last4": spec.last4,
                "exp_month": 12,
                "exp_year": self.clock.now().year + 3,
                "funding": spec.funding,
                "country": spec.country,
                "fingerprint": spec.fingerprint,
            },
            "created": self.now(),
            "livemode": False,
        }
        acct.payment_methods[pm["id"]] = pm
        acct.tokens[pm["id"]] = token
        return pm

    def _card_error(self, decline: cards.Decline) -> dict[str, Any]:
        error: dict[str, Any] = {
            "type": "card_error",
            "code": decline.code,
            "decline_code": decline.decline_code,
            "message": decline.message,
        }
        if decline.advice_code:
            error["advice_code"] = decline.advice_code
        return error

    def _decline(
        self, acct: _Account, pi: dict[str, Any], pm: dict[str, Any], decline: cards.Decline
    ) -> _ApiError:
        error = self._card_error(decline)
        # A failed PaymentIntent goes back to requires_payment_method and lets go of its card.
        pi.update(
            status="requires_payment_method",
            payment_method=None,
            latest_charge=self.new_id("ch_"),
            last_payment_error={**error, "payment_method": {"id": pm["id"]}},
            next_action=None,
        )
        self.emit(acct, "payment_intent.payment_failed", pi)
        return _ApiError(
            402,
            decline.message,
            type_="card_error",
            extra={k: v for k, v in error.items() if k not in ("type", "message")}
            | {"payment_intent": self.rendered(pi)},
            saved=True,
        )

    def _succeed(self, acct: _Account, pi: dict[str, Any]) -> None:
        pi.update(
            status="succeeded",
            amount_received=pi["amount"],
            latest_charge=self.new_id("ch_"),
            next_action=None,
            last_payment_error=None,
        )
        pi["_amount_refunded"] = 0
        self.emit(acct, "payment_intent.succeeded", pi)

    def confirm(
        self,
        acct: _Account,
        pi: dict[str, Any],
        pm: dict[str, Any],
        *,
        off_session: bool,
        return_url: str | None,
    ) -> None:
        """Attempt the payment; raises the (saved) 402 of a decline."""
        spec = self.spec(acct, pm["id"])
        pi.update(payment_method=pm["id"], last_payment_error=None, next_action=None)
        if cards.needs_auth(spec, off_session=off_session, set_up=pm["id"] in acct.set_up):
            if off_session:
                raise self._decline(acct, pi, pm, cards.AUTH_REQUIRED)
            page = f"https://hooks.stripe.com/3d_secure_2/hosted?payment_intent={pi['id']}"
            pi.update(
                status="requires_action",
                next_action={
                    "type": "redirect_to_url",
                    "redirect_to_url": {"url": page, "return_url": return_url},
                },
            )
            self.emit(acct, "payment_intent.requires_action", pi)
            return
        if spec.decline is not None:
            raise self._decline(acct, pi, pm, spec.decline)
        self._succeed(acct, pi)

    def _setup_succeeds(self, acct: _Account, setup: dict[str, Any]) -> None:
        setup.update(status="succeeded", next_action=None, last_setup_error=None)
        pm = acct.payment_methods[setup["payment_method"]]
        if setup["customer"] and pm["customer"] is None:
            pm["customer"] = setup["customer"]
        acct.set_up.add(pm["id"])

    def _refund(
        self,
        acct: _Account,
        payment_intent_id: str,
        amount: int | None,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if reason is not None and reason not in ("duplicate", "fraudulent", "requested_by_customer"):
            raise _ApiError(
                400,
                "Invalid reason: must be one of duplicate, fraudulent or requested_by_customer",
                param="reason",
            )
        pi = acct.payment_intents.get(payment_intent_id)
        if pi is None:
            raise _ApiError(
                400,
                f"No such payment_intent: '{payment_intent_id}'",
                code="resource_missing",
                param="payment_intent",
            )
        if pi["status"] != "succeeded":
            raise _ApiError(
                400,
                f"This PaymentIntent ({payment_intent_id}) does not have a successful charge to refund.",
                param="payment_intent",
            )
        remaining = pi["amount_received"] - pi["_amount_refunded"]
        if remaining <= 0:
            raise _ApiError(
                400,
                f"Charge {pi['latest_charge']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = remaining if amount is None else amount
        if amount <= 0:
            raise _ApiError(400, "Invalid positive integer", param="amount")
        if amount > remaining:
            raise _ApiError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
                param="amount",
                code="amount_too_large",
            )
        refund = {
            "id": self.new_id("re_"),
            "object": "refund",
            "amount": amount,
            "charge": pi["latest_charge"],
            "created": self.now(),
            "currency": pi["currency"],
            "failure_reason": None,
            "metadata": dict(metadata or {}),
            "payment_intent": pi["id"],
            "reason": reason,
            "status": self.new_refund_status,
        }
        acct.refunds[refund["id"]] = refund
        pi["_amount_refunded"] += amount
        charge = {
            "id": pi["latest_charge"],
            "object": "charge",
            "amount": pi["amount"],
            "amount_refunded": pi["_amount_refunded"],
            "currency": pi["currency"],
            "customer": pi["customer"],
            "metadata": dict(pi["metadata"]),
            "payment_intent": pi["id"],
            "refunded": pi["_amount_refunded"] >= pi["amount"],
            "status": "succeeded",
        }
        self.emit(acct, "refund.created", refund)
        self.emit(acct, "charge.refunded", charge)
        return copy.deepcopy(refund)

    def settle_refund(self, refund_id: str, status: str, stripe_account: str | None = None) -> dict[str, Any]:
        """A refund's later step, as Stripe's: pending -> succeeded or failed, succeeded -> failed (the
        card was closed); a failed refund's amount is refundable again."""
        with self.lock:
            acct = self.account(stripe_account)
            refund = acct.refunds[refund_id]
            assert status in ("succeeded", "failed"), status
            refund["status"] = status
            if status == "failed":
                refund["failure_reason"] = "expired_or_canceled_card"
                acct.payment_intents[refund["payment_intent"]]["_amount_refunded"] -= refund["amount"]
                self.emit(acct, "refund.failed", refund)
            self.emit(acct, "refund.updated", refund)
            return copy.deepcopy(refund)

    def rendered(self, pi: dict[str, Any]) -> dict[str, Any]:
        """A PaymentIntent as the API renders it (without the fake's private fields)."""
        return {k: copy.deepcopy(v) for k, v in pi.items() if not k.startswith("_")}


class FakeStripe:
    """shared.adapters.stripe_gateway.StripeGateway's public methods over a FakeStripeServer (one is made
    if none is given). Several FakeStripes may share a server, e.g. with different retry settings."""

    def __init__(
        self,
        api_key: str = "sk_test_fake",
        webhook_secret: str | Sequence[str] = "whsec_fake",
        *,
        server: FakeStripeServer | None = None,
        clock: FakeClock | None = None,
        max_network_retries: int = 0,
        timeout_seconds: float = 30.0,
        before_request: Callable[[str | None], None] | None = None,
        before_request_max_seconds: float = 0.0,
        on_rate_limited: Callable[[str | None], None] | None = None,
        on_call: Callable[[str, str, float], None] | None = None,
    ) -> None:
        if server is not None and clock is not None and server.clock is not clock:
            raise ValueError("a shared server keeps its own clock")
        self.server = server or FakeStripeServer(clock)
        self.api_key = api_key
        self.api_base: str | None = None
        self.livemode = api_key.startswith(("sk_live_", "rk_live_"))
        self.max_network_retries = max_network_retries
        self.timeout_seconds = timeout_seconds
        self.before_request_max_seconds = before_request_max_seconds
        self._webhook_secrets = (
            (webhook_secret,) if isinstance(webhook_secret, str) else tuple(webhook_secret)
        )
        self._before_request = before_request
        self._on_rate_limited = on_rate_limited
        self._on_call = on_call

    @property
    def clock(self) -> FakeClock:
        return self.server.clock

    @property
    def webhook_secret(self) -> str:
        return self._webhook_secrets[0]

    @property
    def longest_call_seconds(self) -> float:
        tries = self.max_network_retries + 1
        return (
            self.before_request_max_seconds
            + tries * self.timeout_seconds
            + self.max_network_retries * SDK_MAX_DELAY
        )

    # ---- plumbing ----------------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        account: str | None,
        method: str,
        path: str,
        params: dict[str, Any],
        execute: Callable[[_Account], dict[str, Any]],
        *,
        idempotency_key: str | None = None,
        card_errors: bool = False,
    ) -> dict[str, Any]:
        """One gateway call: the SDK's tries, errors translated as shared.adapters.stripe_wire translates
        them. A 402 comes back as ("card_error", body) through _CardError when `card_errors`."""
        if self._before_request is not None:
            self._before_request(account)
        started = time.monotonic()
        outcome = "error"
        tries = 0
        try:
            while True:
                try:
                    result = self.server.handle(
                        api_key=self.api_key,
                        account=account,
                        operation=operation,
                        method=method,
                        path=path,
                        params=params,
                        idempotency_key=idempotency_key,
                        execute=execute,
                    )
                    outcome = "ok"
                    return result
                except _Retryable as retry:
                    if tries >= self.max_network_retries:
                        outcome = "transient"
                        raise retry.error from None
                    tries += 1
                    time.sleep(min(SDK_INITIAL_DELAY * 2 ** (tries - 1), SDK_MAX_DELAY))
                except TransientStripeError as exc:
                    outcome = "rate_limited" if exc.rate_limited else "transient"
                    if exc.rate_limited and self._on_rate_limited is not None:
                        self._on_rate_limited(account)
                    raise
                except _ApiError as exc:
                    if exc.status == 402:
                        outcome = "card_error"
                        if card_errors:
                            raise _CardError(exc.body) from None
                        raise self._permanent(exc, "card") from None
                    outcome = "permanent"
                    raise self._permanent(exc) from None
        finally:
            if self._on_call is not None:
                self._on_call(operation, outcome, time.monotonic() - started)

    def _permanent(self, exc: _ApiError, kind: str | None = None) -> PermanentStripeError:
        body = exc.body
        if kind is None:
            kind = {
                "idempotency_error": "idempotency",
                "card_error": "card",
                "invalid_request_error": "invalid_request",
            }.get(body["type"], "api")
            if exc.status == 401:
                kind = "authentication"
            elif exc.status == 403:
                kind = "permission"
        embedded = body.get("payment_intent")
        return PermanentStripeError(
            body["message"],
            kind=kind,  # type: ignore[arg-type]
            code=body.get("code"),
            param=body.get("param"),
            http_status=exc.status,
            request_id=self.server.new_id("req_"),
            payment_intent_id=embedded.get("id") if isinstance(embedded, dict) else None,
        )

    # ---- customers and cards -----------------------------------------------------------------------

    def ensure_customer(
        self,
        name: str,
        email: str,
        *,
        idempotency_key: str,
        existing_id: str | None = None,
        stripe_account: str | None = None,
    ) -> str:
        server = self.server
        key = idempotency_key
        if existing_id:
            try:
                customer = self._call(
                    "ensure_customer",
                    stripe_account,
                    "get",
                    f"/v1/customers/{existing_id}",
                    {},
                    lambda acct: server.customer(acct, existing_id, "id"),
                )
            except PermanentStripeError as exc:
                if exc.code != "resource_missing":
                    raise
                customer = {"deleted": True}
            if not customer.get("deleted"):
                return existing_id
            key = f"{idempotency_key}:replaces:{existing_id}"

        def create(acct: _Account) -> dict[str, Any]:
            customer = {
                "id": server.new_id("cus_"),
                "object": "customer",
                "name": name,
                "email": email,
                "created": server.now(),
                "invoice_settings": {"default_payment_method": None},
                "livemode": False,
            }
            acct.customers[customer["id"]] = customer
            return copy.deepcopy(customer)

        created = self._call(
            "ensure_customer",
            stripe_account,
            "post",
            "/v1/customers",
            {"name": name, "email": email},
            create,
            idempotency_key=key,
        )
        return str(created["id"])

    def attach_card(
        self,
        customer_id: str,
        payment_method_token: str,
        *,
        idempotency_key: str,
        make_default: bool = True,
        stripe_account: str | None = None,
    ) -> CardDetails:
        server = self.server
        params = {
            "customer": customer_id,
            "payment_method": payment_method_token,
            "allowed_payment_method_types": ["card"],
            "usage": "off_session",
            "confirm": True,
        }

        def create(acct: _Account) -> dict[str, Any]:
            server.customer(acct, customer_id)
            pm = server.payment_method(acct, payment_method_token, customer_id)
            setup = {
                "id": server.new_id("seti_"),
                "object": "setup_intent",
                "customer": customer_id,
                "payment_method": pm["id"],
                "usage": "off_session",
                "status": "requires_confirmation",
                "client_secret": None,
                "next_action": None,
                "last_setup_error": None,
            }
            setup["client_secret"] = f"{setup['id']}_secret_fake"
            acct.setup_intents[setup["id"]] = setup
            spec = server.spec(acct, pm["id"])
            if cards.setup_needs_auth(spec):
                setup.update(
                    status="requires_action",
                    next_action={
                        "type": "use_stripe_sdk",
                        "use_stripe_sdk": {"type": "three_d_secure_redirect"},
                    },
                )
                return copy.deepcopy(setup)
            decline = cards.setup_decline(spec)
            if decline is not None:
                error = server._card_error(decline)
                setup.update(status="requires_payment_method", payment_method=None, last_setup_error=error)
                raise _ApiError(
                    402,
                    decline.message,
                    type_="card_error",
                    extra={k: v for k, v in error.items() if k not in ("type", "message")}
                    | {"setup_intent": copy.deepcopy(setup)},
                    saved=True,
                )
            server._setup_succeeds(acct, setup)
            return copy.deepcopy(setup)

        try:
            setup = self._call(
                "attach_card",
                stripe_account,
                "post",
                "/v1/setup_intents",
                params,
                create,
                idempotency_key=idempotency_key,
                card_errors=True,
            )
        except _CardError as signal:
            error = signal.error
            embedded = error.get("setup_intent")
            raise CardSetupDeclined(
                error.get("message") or "The card was declined while saving it",
                code=error.get("code"),
                decline_code=error.get("decline_code"),
                setup_intent_id=embedded.get("id") if isinstance(embedded, dict) else None,
            ) from None
        return self._card_from_setup(setup, make_default=make_default, stripe_account=stripe_account)

    def attach_payment_method(
        self,
        customer_id: str,
        payment_method: str,
        *,
        idempotency_key: str,
        make_default: bool = True,
        stripe_account: str | None = None,
    ) -> CardDetails:
        server = self.server

        def attach(acct: _Account) -> dict[str, Any]:
            server.customer(acct, customer_id)
            pm = server.payment_method(acct, payment_method, customer_id)
            pm["customer"] = customer_id
            return server.rendered(pm)

        attached = self._call(
            "attach_payment_method",
            stripe_account,
            "post",
            f"/v1/payment_methods/{payment_method}/attach",
            {"customer": customer_id},
            attach,
            idempotency_key=idempotency_key,
        )
        if make_default:
            self.set_default_card(customer_id, attached["id"], stripe_account=stripe_account)
        return card_details(attached)

    def card_from_setup_intent(
        self, setup_intent_id: str, *, make_default: bool = True, stripe_account: str | None = None
    ) -> CardDetails:
        def retrieve(acct: _Account) -> dict[str, Any]:
            setup = acct.setup_intents.get(setup_intent_id)
            if setup is None:
                raise _ApiError(404, f"No such setupintent: '{setup_intent_id}'", code="resource_missing")
            return copy.deepcopy(setup)

        setup = self._call(
            "card_from_setup_intent",
            stripe_account,
            "get",
            f"/v1/setup_intents/{setup_intent_id}",
            {},
            retrieve,
        )
        return self._card_from_setup(setup, make_default=make_default, stripe_account=stripe_account)

    def _card_from_setup(
        self, setup: dict[str, Any], *, make_default: bool, stripe_account: str | None
    ) -> CardDetails:
        status = setup.get("status")
        if status == "requires_action":
            raise CardSetupRequiresAction(
                "The card issuer requires the cardholder to authenticate before the card can be saved",
                setup_intent_id=setup["id"],
                client_secret=setup.get("client_secret"),
                payment_method_id=setup.get("payment_method"),
                next_action_type=(setup.get("next_action") or {}).get("type"),
            )
        if status == "requires_payment_method":
            error = setup.get("last_setup_error") or {}
            raise CardSetupDeclined(
                error.get("message") or "The card could not be saved",
                code=error.get("code"),
                decline_code=error.get("decline_code"),
                setup_intent_id=setup["id"],
            )
        payment_method_id = setup.get("payment_method")
        if status != "succeeded" or not payment_method_id or not setup.get("customer"):
            raise PermanentStripeError(
                f"SetupIntent {setup.get('id')} is in status {status!r} without a card saved to a customer",
                kind="unexpected_response",
            )
        payment_method = self._call(
            "_card_from_setup",
            stripe_account,
            "get",
            f"/v1/payment_methods/{payment_method_id}",
            {},
            lambda acct: copy.deepcopy(acct.payment_methods[payment_method_id]),
        )
        if make_default:
            self.set_default_card(setup["customer"], payment_method_id, stripe_account=stripe_account)
        return card_details(payment_method)

    def set_default_card(
        self, customer_id: str, payment_method_id: str, *, stripe_account: str | None = None
    ) -> None:
        server = self.server

        def update(acct: _Account) -> dict[str, Any]:
            customer = server.customer(acct, customer_id, "id")
            customer["invoice_settings"] = {"default_payment_method": payment_method_id}
            return copy.deepcopy(customer)

        self._call(
            "set_default_card",
            stripe_account,
            "post",
            f"/v1/customers/{customer_id}",
            {"invoice_settings": {"default_payment_method": payment_method_id}},
            update,
        )

    def detach_card(self, payment_method_id: str, *, stripe_account: str | None = None) -> None:
        def detach(acct: _Account) -> dict[str, Any]:
            pm = acct.payment_methods.get(payment_method_id)
            if pm is None:
                raise _ApiError(404, f"No such PaymentMethod: '{payment_method_id}'", code="resource_missing")
            if pm["customer"] is None:
                # Stripe: 400, the payment method is not attached; the gateway then checks and counts it done.
                raise _ApiError(
                    400,
                    "The payment method you provided is not attached to a customer so detachment is "
                    "impossible.",
                    param="payment_method",
                )
            customer = acct.customers.get(pm["customer"])
            if (
                customer is not None
                and customer["invoice_settings"]["default_payment_method"] == payment_method_id
            ):
                customer["invoice_settings"] = {"default_payment_method": None}
            pm["customer"] = None
            pm["_detached"] = True
            return {k: v for k, v in pm.items() if not k.startswith("_")}

        try:
            self._call(
                "detach_card",
                stripe_account,
                "post",
                f"/v1/payment_methods/{payment_method_id}/detach",
                {},
                detach,
            )
        except PermanentStripeError as exc:
            if exc.kind != "invalid_request" or exc.code == "resource_missing":
                raise
            with self.server.lock:
                pm = self.server.account(stripe_account).payment_methods.get(payment_method_id)
                if pm is None or pm["customer"] is not None:
                    raise

    # ---- Checkout in setup mode --------------------------------------------------------------------

    def create_card_setup_session(
        self,
        customer_id: str,
        *,
        success_url: str,
        cancel_url: str,
        metadata: Mapping[str, str],
        idempotency_key: str,
        stripe_account: str | None = None,
    ) -> CardSetupView:
        server = self.server
        params = {
            "mode": "setup",
            "customer": customer_id,
            "allowed_payment_method_types": ["card"],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "metadata": dict(metadata),
            "setup_intent_data": {"metadata": dict(metadata)},
        }

        def create(acct: _Account) -> dict[str, Any]:
            server.customer(acct, customer_id)
            setup = {
                "id": server.new_id("seti_"),
                "object": "setup_intent",
                "customer": customer_id,
                "payment_method": None,
                "usage": "off_session",
                "status": "requires_payment_method",
                "metadata": dict(metadata),
                "next_action": None,
                "last_setup_error": None,
                "livemode": False,
            }
            acct.setup_intents[setup["id"]] = setup
            session_id = server.new_id("cs_test_")
            session = {
                "id": session_id,
                "object": "checkout.session",
                "mode": "setup",
                "customer": customer_id,
                "setup_intent": setup["id"],
                "status": "open",
                "success_url": success_url,
                "cancel_url": cancel_url,
                "metadata": dict(metadata),
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
                "livemode": False,
            }
            acct.checkout_sessions[session_id] = session
            return copy.deepcopy(session)

        session = self._call(
            "create_card_setup_session",
            stripe_account,
            "post",
            "/v1/checkout/sessions",
            params,
            create,
            idempotency_key=idempotency_key,
        )
        return card_setup_view(session, None)

    def retrieve_card_setup_session(
        self, session_id: str, *, stripe_account: str | None = None
    ) -> CardSetupView:
        def retrieve(acct: _Account) -> dict[str, Any]:
            session = acct.checkout_sessions.get(session_id)
            if session is None:
                raise _ApiError(404, f"No such checkout.session: '{session_id}'", code="resource_missing")
            answer = copy.deepcopy(session)
            answer["setup_intent"] = _expanded_setup(acct, session["setup_intent"])
            return answer

        session = self._call(
            "retrieve_card_setup_session",
            stripe_account,
            "get",
            f"/v1/checkout/sessions/{session_id}",
            {"expand": ["setup_intent.payment_method"]},
            retrieve,
        )
        return card_setup_view(session, session["setup_intent"])

    def retrieve_card_setup_intent(
        self, setup_intent_id: str, *, stripe_account: str | None = None
    ) -> CardSetupView:
        def retrieve(acct: _Account) -> dict[str, Any]:
            if setup_intent_id not in acct.setup_intents:
                raise _ApiError(404, f"No such setupintent: '{setup_intent_id}'", code="resource_missing")
            return _expanded_setup(acct, setup_intent_id)

        setup = self._call(
            "retrieve_card_setup_intent",
            stripe_account,
            "get",
            f"/v1/setup_intents/{setup_intent_id}",
            {"expand": ["payment_method"]},
            retrieve,
        )
        return card_setup_view(None, setup)

    # ---- charges -----------------------------------------------------------------------------------

    def create_offsession_payment_intent(self, request: ChargeRequest) -> ChargeOutcome:
        server = self.server
        params = payment_intent_create_params(request)

        def create(acct: _Account) -> dict[str, Any]:
            if isinstance(request.amount, bool) or request.amount <= 0:
                raise _ApiError(400, "This value must be greater than or equal to 1.", param="amount")
            server.customer(acct, request.customer_id)
            pm = server.payment_method(acct, request.payment_method_id, request.customer_id)
            pi_id = server.new_id("pi_")
            pi: dict[str, Any] = {
                "id": pi_id,
                "object": "payment_intent",
                "allowed_payment_method_types": ["card"],
                "amount": request.amount,
                "amount_received": 0,
                "client_secret": f"{pi_id}_secret_fake",
                "created": server.now(),
                "currency": request.currency.lower(),
                "customer": request.customer_id,
                "description": request.description,
                "last_payment_error": None,
                "latest_charge": None,
                "livemode": self.livemode,
                "metadata": dict(request.metadata),
                "next_action": None,
                "payment_method": pm["id"],
                "status": "requires_confirmation",
            }
            acct.payment_intents[pi_id] = pi
            server.emit(acct, "payment_intent.created", server.rendered(pi))
            server.confirm(acct, pi, pm, off_session=True, return_url=None)
            return server.rendered(pi)

        try:
            data = self._call(
                "create_offsession_payment_intent",
                request.stripe_account,
                "post",
                "/v1/payment_intents",
                params,
                create,
                idempotency_key=request.idempotency_key,
                card_errors=True,
            )
        except _CardError as signal:
            return signal.outcome()
        return classify_payment_intent(payment_intent_view(data))

    def retrieve_payment_intent(
        self, payment_intent_id: str, *, stripe_account: str | None = None
    ) -> PaymentIntentView:
        data = self._call(
            "retrieve_payment_intent",
            stripe_account,
            "get",
            f"/v1/payment_intents/{payment_intent_id}",
            {},
            lambda acct: self._pi(acct, payment_intent_id),
        )
        return payment_intent_view(data)

    def _pi(self, acct: _Account, payment_intent_id: str) -> dict[str, Any]:
        pi = acct.payment_intents.get(payment_intent_id)
        if pi is None:
            raise _ApiError(404, f"No such payment_intent: '{payment_intent_id}'", code="resource_missing")
        return self.server.rendered(pi)

    def confirm_on_session(
        self,
        payment_intent_id: str,
        payment_method_id: str,
        return_url: str,
        *,
        idempotency_key: str | None = None,
        stripe_account: str | None = None,
    ) -> ChargeOutcome:
        server = self.server

        def confirm(acct: _Account) -> dict[str, Any]:
            pi = acct.payment_intents.get(payment_intent_id)
            if pi is None:
                raise _ApiError(
                    404, f"No such payment_intent: '{payment_intent_id}'", code="resource_missing"
                )
            if pi["status"] not in CONFIRMABLE:
                raise _ApiError(
                    400,
                    f"You cannot confirm this PaymentIntent because it has a status of {pi['status']}.",
                    code="payment_intent_unexpected_state",
                    extra={"payment_intent": server.rendered(pi)},
                )
            pm = server.payment_method(acct, payment_method_id, pi["customer"])
            server.confirm(acct, pi, pm, off_session=False, return_url=return_url)
            return server.rendered(pi)

        try:
            data = self._call(
                "confirm_on_session",
                stripe_account,
                "post",
                f"/v1/payment_intents/{payment_intent_id}/confirm",
                {"payment_method": payment_method_id, "off_session": False, "return_url": return_url},
                confirm,
                idempotency_key=idempotency_key,
                card_errors=True,
            )
        except _CardError as signal:
            return signal.outcome()
        outcome = classify_payment_intent(payment_intent_view(data))
        if isinstance(outcome, RequiresAction) and outcome.payment_intent.next_action_redirect_url is None:
            raise PermanentStripeError(
                f"Stripe asked for an authentication step ({outcome.payment_intent.next_action_type}) that "
                "only Stripe.js can run, and gave no page to send the client to",
                kind="unexpected_response",
                payment_intent_id=outcome.payment_intent_id,
            )
        return outcome

    def cancel_payment_intent(
        self,
        payment_intent_id: str,
        *,
        idempotency_key: str | None = None,
        stripe_account: str | None = None,
    ) -> PaymentIntentView:
        server = self.server

        def cancel(acct: _Account) -> dict[str, Any]:
            pi = acct.payment_intents.get(payment_intent_id)
            if pi is None:
                raise _ApiError(
                    404, f"No such payment_intent: '{payment_intent_id}'", code="resource_missing"
                )
            if pi["status"] not in CANCELABLE:
                raise _ApiError(
                    400,
                    f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}.",
                    code="payment_intent_unexpected_state",
                    extra={"payment_intent": server.rendered(pi)},
                )
            pi.update(status="canceled", next_action=None, canceled_at=server.now())
            server.emit(acct, "payment_intent.canceled", server.rendered(pi))
            return server.rendered(pi)

        data = self._call(
            "cancel_payment_intent",
            stripe_account,
            "post",
            f"/v1/payment_intents/{payment_intent_id}/cancel",
            {},
            cancel,
            idempotency_key=idempotency_key,
        )
        return payment_intent_view(data)

    def _list(
        self,
        operation: str,
        params: dict[str, Any],
        stripe_account: str | None,
        keep: Callable[[dict[str, Any]], bool],
    ) -> list[PaymentIntentView]:
        def listing(acct: _Account) -> dict[str, Any]:
            rows = [self.server.rendered(pi) for pi in reversed(acct.payment_intents.values()) if keep(pi)]
            return {"object": "list", "data": rows, "has_more": False}

        page = self._call(operation, stripe_account, "get", "/v1/payment_intents", params, listing)
        return [payment_intent_view(row) for row in page["data"]]

    def find_attempt_payment_intents(
        self,
        customer_id: str,
        charge_attempt_id: str,
        *,
        created_gte: datetime,
        stripe_account: str | None = None,
    ) -> list[PaymentIntentView]:
        since = unix_seconds(created_gte)
        return [
            view
            for view in self._list(
                "list_payment_intents",
                {"customer": customer_id, "created": {"gte": since}},
                stripe_account,
                lambda pi: pi["customer"] == customer_id and pi["created"] >= since,
            )
            if view.metadata.get("charge_attempt_id") == charge_attempt_id
        ]

    def list_payment_intents_created(
        self, created_gte: datetime, created_lt: datetime, *, stripe_account: str | None = None
    ) -> Iterator[PaymentIntentView]:
        start, end = unix_seconds(created_gte), unix_seconds(created_lt)
        return iter(
            self._list(
                "list_payment_intents",
                {"created": {"gte": start, "lt": end}},
                stripe_account,
                lambda pi: start <= pi["created"] < end,
            )
        )

    def create_refund(
        self,
        payment_intent_id: str,
        *,
        idempotency_key: str,
        amount: int | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        stripe_account: str | None = None,
    ) -> RefundView:
        params: dict[str, Any] = {"payment_intent": payment_intent_id}
        if amount is not None:
            if amount <= 0:
                raise ValueError("a refund amount must be positive")
            params["amount"] = amount
        if reason is not None:
            params["reason"] = reason
        if metadata:
            params["metadata"] = dict(metadata)
        data = self._call(
            "create_refund",
            stripe_account,
            "post",
            "/v1/refunds",
            params,
            lambda acct: self.server._refund(acct, payment_intent_id, amount, reason, dict(metadata or {})),
            idempotency_key=idempotency_key,
        )
        return refund_view(data)

    def retrieve_refund(self, refund_id: str, *, stripe_account: str | None = None) -> RefundView:
        def read(acct: _Account) -> dict[str, Any]:
            refund = acct.refunds.get(refund_id)
            if refund is None:
                raise _ApiError(404, f"No such refund: '{refund_id}'", code="resource_missing", param="id")
            return copy.deepcopy(refund)

        return refund_view(
            self._call("retrieve_refund", stripe_account, "get", f"/v1/refunds/{refund_id}", {}, read)
        )

    # ---- the account, its webhook endpoints, Connect OAuth ------------------------------------------

    def retrieve_account(self, *, stripe_account: str | None = None) -> StripeAccountView:
        server = self.server

        def retrieve(acct: _Account) -> dict[str, Any]:
            if stripe_account is None:
                found = server.platform_account
            else:
                found = server.connected_accounts.get(stripe_account)
                if found is None:
                    raise _ApiError(
                        403,
                        "The provided key does not have access to account "
                        f"'{stripe_account}' (or that account does not exist).",
                        code="account_invalid",
                    )
            return {
                "id": found["id"],
                "object": "account",
                "business_profile": {"name": found["name"]},
                "charges_enabled": found["charges_enabled"],
                "capabilities": {"card_payments": "active" if found["charges_enabled"] else "inactive"},
            }

        answer = self._call("retrieve_account", stripe_account, "get", "/v1/account", {}, retrieve)
        return account_view(answer, self.livemode)

    def create_webhook_endpoint(
        self,
        url: str,
        enabled_events: Sequence[str],
        *,
        idempotency_key: str,
        connect: bool = False,
        description: str | None = None,
    ) -> WebhookEndpointView:
        server = self.server
        params: dict[str, Any] = {
            "url": url,
            "enabled_events": list(enabled_events),
            "api_version": STRIPE_API_VERSION,
        }
        if connect:
            params["connect"] = True
        if description:
            params["description"] = description

        def create(acct: _Account) -> dict[str, Any]:
            endpoint = {
                "id": server.new_id("we_"),
                "object": "webhook_endpoint",
                **params,
                "connect": connect,
                "status": "enabled",
                "secret": "whsec_" + server.new_id("fake"),
            }
            acct.webhook_endpoints[endpoint["id"]] = endpoint
            return copy.deepcopy(endpoint)

        created = self._call(
            "create_webhook_endpoint",
            None,
            "post",
            "/v1/webhook_endpoints",
            params,
            create,
            idempotency_key=idempotency_key,
        )
        return WebhookEndpointView(
            created["id"], created["url"], tuple(created["enabled_events"]), created["secret"]
        )

    def list_webhook_endpoints(self) -> list[WebhookEndpointView]:
        def listing(acct: _Account) -> dict[str, Any]:
            return {"object": "list", "data": copy.deepcopy(list(reversed(acct.webhook_endpoints.values())))}

        page = self._call(
            "list_webhook_endpoints", None, "get", "/v1/webhook_endpoints", {"limit": 100}, listing
        )
        return [
            WebhookEndpointView(row["id"], row["url"], tuple(row["enabled_events"]), None)
            for row in page["data"]
        ]

    def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        def delete(acct: _Account) -> dict[str, Any]:
            if acct.webhook_endpoints.pop(endpoint_id, None) is None:
                raise _ApiError(404, f"No such webhook endpoint: '{endpoint_id}'", code="resource_missing")
            return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}

        try:
            self._call(
                "delete_webhook_endpoint", None, "delete", f"/v1/webhook_endpoints/{endpoint_id}", {}, delete
            )
        except PermanentStripeError as exc:
            if exc.code != "resource_missing":
                raise

    def oauth_authorize_url(self, client_id: str, state: str, redirect_uri: str) -> str:
        query = urlencode(
            {
                "client_id": client_id,
                "response_type": "code",
                "scope": "read_write",
                "state": state,
                "redirect_uri": redirect_uri,
            }
        )
        return f"https://connect.stripe.com/oauth/authorize?{query}"

    def oauth_exchange_code(self, code: str) -> str:
        server = self.server

        def token(acct: _Account) -> dict[str, Any]:
            account = server.oauth_codes.pop(code, None)
            if account is None:
                raise _ApiError(400, f"Authorization code does not exist: {code}", code="invalid_grant")
            return {"stripe_user_id": account, "scope": "read_write", "livemode": self.livemode}

        return str(
            self._call(
                "oauth_exchange_code",
                None,
                "post",
                "/oauth/token",
                {"grant_type": "authorization_code"},
                token,
            )["stripe_user_id"]
        )

    def oauth_deauthorize(self, client_id: str, account_id: str) -> None:
        server = self.server

        def deauthorize(acct: _Account) -> dict[str, Any]:
            if server.connected_accounts.pop(account_id, None) is None:
                raise _ApiError(
                    400,
                    f"This application is not connected to stripe account {account_id}, or that account "
                    "does not exist.",
                    code="invalid_client",
                )
            return {"stripe_user_id": account_id}

        self._call(
            "oauth_deauthorize",
            None,
            "post",
            "/oauth/deauthorize",
            {"client_id": client_id, "stripe_user_id": account_id},
            deauthorize,
        )

    def find_refunds(
        self, payment_intent_id: str, metadata_key: str, value: str, *, stripe_account: str | None = None
    ) -> list[RefundView]:
        def listing(acct: _Account) -> dict[str, Any]:
            rows = [
                copy.deepcopy(r)
                for r in reversed(acct.refunds.values())
                if r["payment_intent"] == payment_intent_id
            ]
            return {"object": "list", "data": rows, "has_more": False}

        page = self._call(
            "find_refunds",
            stripe_account,
            "get",
            "/v1/refunds",
            {"payment_intent": payment_intent_id},
            listing,
        )
        return [refund_view(r) for r in page["data"] if (r.get("metadata") or {}).get(metadata_key) == value]

    # ---- webhooks ----------------------------------------------------------------------------------

    def verify_webhook(
        self,
        payload: bytes,
        sig_header: str | None,
        *,
        tolerance: int = WEBHOOK_TOLERANCE_SECONDS,
        also: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Stripe's scheme (HMAC-SHA256 of "t.body" under each v1), the timestamp checked against the
        server's clock."""
        try:
            body = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WebhookPayloadError("the webhook body is not UTF-8 text") from exc
        if not sig_header:
            raise WebhookSignatureError("No signatures found matching the expected signature for payload")
        parts = [part.split("=", 1) for part in sig_header.split(",") if "=" in part]
        timestamps = [value for name, value in parts if name == "t"]
        signatures = [value for name, value in parts if name == "v1"]
        if not timestamps or not timestamps[0].isdigit() or not signatures:
            raise WebhookSignatureError("Unable to extract timestamp and signatures from header")
        timestamp = int(timestamps[0])
        if not any(
            hmac.compare_digest(_sign(body, secret, timestamp).split("v1=", 1)[1], signature)
            for secret in (*self._webhook_secrets, *also)
            for signature in signatures
        ):
            raise WebhookSignatureError("No signatures found matching the expected signature for payload")
        if tolerance and timestamp < self.server.now() - tolerance:
            raise WebhookSignatureError("Timestamp outside the tolerance zone")
        try:
            event = json.loads(body)
        except json.JSONDecodeError as exc:
            raise WebhookPayloadError(f"the webhook body is not JSON: {exc}") from exc
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) or "type" not in event:
            raise WebhookPayloadError("the webhook body is not a Stripe event (no id/type)")
        return event


class _CardError(GatewayError):
    """A 402 on a call whose caller knows what a decline means for it."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message")))
        self.error = error

    def outcome(self) -> ChargeOutcome:
        """As shared.domain.payments reads a 402 on create/confirm: the PaymentIntent in its state after."""
        embedded = self.error.get("payment_intent")
        if isinstance(embedded, dict) and embedded.get("id"):
            return classify_payment_intent(payment_intent_view(embedded))
        raise AssertionError("a 402 on a PaymentIntent always embeds it")


def _expanded_setup(acct: _Account, setup_intent_id: str) -> dict[str, Any]:
    setup = copy.deepcopy(acct.setup_intents[setup_intent_id])
    if setup.get("payment_method"):
        pm = acct.payment_methods[setup["payment_method"]]
        setup["payment_method"] = {k: copy.deepcopy(v) for k, v in pm.items() if not k.startswith("_")}
    return setup
