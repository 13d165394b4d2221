"""The Stripe emulator driven through the unmodified stripe SDK over HTTP (design §7, issue 3)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import stripe
from shared.webhooks import EVENTS_WITH_WORK

from stripe_emulator.__main__ import build_parser, config_from_args
from tests.integration.emulator_fixture import (
    WEBHOOK_SECRET,
    admin,
    emulator_state,
    running_emulator,
    sdk_client,
    set_faults,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def base() -> Iterator[str]:
    with running_emulator() as url:
        yield url


@pytest.fixture
def client(base: str) -> stripe.StripeClient:
    return sdk_client(base)


def customer_with(client: stripe.StripeClient, token: str, **opts: Any) -> tuple[Any, Any]:
    """A customer with ``token`` attached as its default card."""
    options: Any = opts
    cus = client.v1.customers.create({"email": "a@example.com"}, options=options)
    pm = client.v1.payment_methods.attach(token, {"customer": cus.id}, options=options)
    client.v1.customers.update(
        cus.id, {"invoice_settings": {"default_payment_method": pm.id}}, options=options
    )
    return cus, pm


def charge(
    client: stripe.StripeClient,
    cus: Any,
    pm: Any,
    key: str | None = None,
    amount: int = 1234,
    metadata: dict[str, str] | None = None,
    **opts: Any,
) -> Any:
    options: Any = {"idempotency_key": key or str(uuid.uuid4()), **opts}
    return client.v1.payment_intents.create(
        {
            "amount": amount,
            "currency": "usd",
            "customer": cus.id,
            "payment_method": pm.id,
            "off_session": True,
            "confirm": True,
            "allowed_payment_method_types": ["card"],
            "metadata": metadata or {"charge_attempt_id": "att_1"},
        },
        options=options,
    )


def event_types(client: stripe.StripeClient, **opts: Any) -> list[str]:
    options: Any = opts
    return [e.type for e in client.v1.events.list({"limit": 100}, options=options).data]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# ---------------------------------------------------------------- test cards

DECLINES = [
    ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
    ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
    ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ("pm_card_chargeDeclinedLostCard", "card_declined", "lost_card"),
    ("pm_card_chargeDeclinedStolenCard", "card_declined", "stolen_card"),
    ("pm_card_chargeDeclinedFraudulent", "card_declined", "fraudulent"),
    ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
    ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error"),
    ("pm_card_chargeCustomerFail", "card_declined", "generic_decline"),
    ("pm_card_authenticationRequired", "authentication_required", "authentication_required"),
    ("pm_card_authenticationRequiredOnSetup", "authentication_required", "authentication_required"),
]


@pytest.mark.parametrize(("token", "code", "decline_code"), DECLINES)
def test_declining_card_off_session(
    client: stripe.StripeClient, token: str, code: str, decline_code: str
) -> None:
    cus, pm = customer_with(client, token)
    with pytest.raises(stripe.CardError) as info:
        charge(client, cus, pm)
    err = info.value
    assert err.http_status == 402
    assert err.code == code
    assert err.error.type == "card_error"
    assert err.error.decline_code == decline_code
    assert err.error.doc_url.startswith("https://stripe.com/docs/error-codes/")
    assert err.error.charge.startswith("ch_")
    assert err.error.payment_method.id == pm.id
    assert err.request_id.startswith("req_")
    embedded = err.error.payment_intent
    assert embedded.status == "requires_payment_method"
    assert embedded.last_payment_error.code == code
    assert embedded.last_payment_error.decline_code == decline_code
    assert embedded.latest_charge == err.error.charge
    # The declined PaymentIntent lives on, retrievable and listable, and its failure is an event.
    stored = client.v1.payment_intents.retrieve(embedded.id)
    assert stored.status == "requires_payment_method"
    assert stored.amount_received == 0
    assert stored.metadata["charge_attempt_id"] == "att_1"
    assert stored.last_payment_error.payment_method.id == pm.id
    assert [p.id for p in client.v1.payment_intents.list({"customer": cus.id}).data] == [embedded.id]
    ch = client.v1.charges.retrieve(err.error.charge)
    assert (ch.status, ch.failure_code, ch.outcome.reason) == ("failed", code, decline_code)
    types = event_types(client)
    assert "payment_intent.payment_failed" in types and "charge.failed" in types
    assert "payment_intent.succeeded" not in types


@pytest.mark.parametrize(
    ("token", "brand", "last4"),
    [
        ("pm_card_visa", "visa", "4242"),
        ("pm_card_mastercard", "mastercard", "4444"),
        ("pm_card_amex", "amex", "0005"),
        ("pm_card_authenticationRequiredSetupForOffSession", "visa", "0446"),
    ],
)
def test_succeeding_card_off_session(client: stripe.StripeClient, token: str, brand: str, last4: str) -> None:
    cus, pm = customer_with(client, token)
    assert (pm.card.brand, pm.card.last4) == (brand, last4)
    pi = charge(client, cus, pm, amount=5000)
    assert pi.status == "succeeded"
    assert pi.amount_received == 5000
    assert pi.latest_charge.startswith("ch_")
    assert pi.client_secret.startswith(f"{pi.id}_secret_")
    assert (pi.customer, pi.payment_method, pi.last_payment_error) == (cus.id, pm.id, None)
    assert pi.livemode is False and pi.object == "payment_intent"
    types = event_types(client)
    for wanted in ("payment_intent.created", "charge.succeeded", "payment_intent.succeeded"):
        assert wanted in types


def test_attach_token_creates_new_payment_method_and_default(client: stripe.StripeClient) -> None:
    cus = client.v1.customers.create({"email": "b@example.com", "metadata": {"user_id": "42"}})
    pm = client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    pm2 = client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    assert pm.id.startswith("pm_") and pm.id != "pm_card_visa" and pm.id != pm2.id
    assert pm.customer == cus.id
    assert pm.card.fingerprint == pm2.card.fingerprint
    assert isinstance(pm.card.exp_month, int) and pm.card.exp_year > 2000
    updated = client.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
    assert updated.invoice_settings.default_payment_method == pm.id
    expanded = client.v1.customers.retrieve(cus.id, {"expand": ["invoice_settings.default_payment_method"]})
    assert expanded.invoice_settings.default_payment_method.card.last4 == "4242"
    listed = client.v1.customers.payment_methods.list(cus.id, {"type": "card"})
    assert {p.id for p in listed.data} == {pm.id, pm2.id}
    by_param = client.v1.payment_methods.list({"customer": cus.id, "type": "card"})
    assert {p.id for p in by_param.data} == {pm.id, pm2.id}
    # A card of another customer cannot become the default.
    other = client.v1.customers.create({})
    foreign = client.v1.payment_methods.attach("pm_card_mastercard", {"customer": other.id})
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": foreign.id}})
    assert info.value.param == "invoice_settings[default_payment_method]"
    # Detaching the default card clears the default.
    detached = client.v1.payment_methods.detach(pm.id)
    assert detached.customer is None
    assert client.v1.customers.retrieve(cus.id).invoice_settings.default_payment_method is None
    types = event_types(client)
    assert types.count("payment_method.attached") == 3
    assert "payment_method.detached" in types and "customer.updated" in types
    deleted = client.v1.customers.delete(other.id)
    assert deleted.deleted is True
    assert client.v1.customers.retrieve(other.id).deleted is True


# ---------------------------------------------------------------- idempotency


def test_idempotent_replay_returns_identical_response(client: stripe.StripeClient, base: str) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    first = charge(client, cus, pm, key="k-1")
    again = charge(client, cus, pm, key="k-1")
    assert again.id == first.id
    assert again.last_response.body == first.last_response.body
    assert again.last_response.code == first.last_response.code == 200
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert again.last_response.headers["Request-Id"] == first.last_response.headers["Request-Id"]
    assert len(emulator_state(base)["payment_intents"]) == 1


def test_replayed_decline_is_saved(client: stripe.StripeClient, base: str) -> None:
    cus, pm = customer_with(client, "pm_card_chargeDeclined")
    bodies = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as info:
            charge(client, cus, pm, key="k-decline")
        bodies.append(info.value.http_body)
    assert bodies[0] == bodies[1]
    assert len(emulator_state(base)["payment_intents"]) == 1


def test_reused_key_with_other_params_or_endpoint(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    charge(client, cus, pm, key="k-2")
    with pytest.raises(stripe.IdempotencyError) as info:
        charge(client, cus, pm, key="k-2", amount=999)
    assert info.value.http_status == 400
    assert "same parameters" in str(info.value.user_message) and "k-2" in str(info.value.user_message)
    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.customers.create({}, options={"idempotency_key": "k-2"})
    assert "same endpoint" in str(info.value.user_message)


def test_validation_error_is_not_saved(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    with pytest.raises(stripe.InvalidRequestError) as info:
        charge(client, cus, pm, key="k-3", amount=10)
    assert (info.value.code, info.value.param) == ("amount_too_small", "amount")
    pi = charge(client, cus, pm, key="k-3", amount=1000)
    assert pi.status == "succeeded"


def test_concurrent_same_key_conflicts(client: stripe.StripeClient, base: str) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    set_faults(base, latency_ms=600)
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(charge(client, cus, pm, key="k-busy")))
    first.start()
    time.sleep(0.2)
    with pytest.raises(stripe.APIError) as info:
        charge(client, cus, pm, key="k-busy")
    first.join()
    assert info.value.http_status == 409
    assert info.value.error.code == "idempotency_key_in_use"
    assert info.value.error.type == "idempotency_error"
    set_faults(base, latency_ms=0)
    assert charge(client, cus, pm, key="k-busy").id == results[0].id


def test_keys_are_scoped_per_account(client: stripe.StripeClient) -> None:
    a = client.v1.customers.create(
        {"name": "A"}, options={"idempotency_key": "k-acct", "stripe_account": "acct_A"}
    )
    b = client.v1.customers.create(
        {"name": "B"}, options={"idempotency_key": "k-acct", "stripe_account": "acct_B"}
    )
    assert a.id != b.id and (a.name, b.name) == ("A", "B")


# ---------------------------------------------------------------- faults


def test_drop_after_commit_then_replay_leaves_one_charge(client: stripe.StripeClient, base: str) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    set_faults(base, drop_after_commit_rate=1.0)
    with pytest.raises(stripe.APIConnectionError):
        charge(client, cus, pm, key="k-drop", metadata={"charge_attempt_id": "att_drop"})
    set_faults(base, drop_after_commit_rate=0.0)
    pi = charge(client, cus, pm, key="k-drop", metadata={"charge_attempt_id": "att_drop"})
    assert pi.status == "succeeded"
    assert pi.last_response.headers["Idempotent-Replayed"] == "true"
    state = emulator_state(base)
    matching = [p for p in state["payment_intents"] if p["metadata"].get("charge_attempt_id") == "att_drop"]
    assert [p["id"] for p in matching] == [pi.id]
    assert len([c for c in state["charges"] if c["payment_intent"] == pi.id]) == 1
    assert state["requests"]["dropped_after_commit"] == 1


def test_rate_limit_answers_429_without_executing(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, rate_limit=1)
    client.v1.customers.create({"name": "first"})
    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.customers.create({"name": "limited"}, options={"idempotency_key": "k-rl"})
    assert info.value.http_status == 429
    assert info.value.error.code == "rate_limit"
    assert info.value.error.type == "invalid_request_error"
    set_faults(base, rate_limit=None)
    # Nothing was saved under the key: other parameters are accepted now.
    other = client.v1.customers.create({"name": "other"}, options={"idempotency_key": "k-rl"})
    assert other.name == "other"
    state = emulator_state(base)
    assert sorted(c["name"] for c in state["customers"]) == ["first", "other"]
    assert state["requests"]["rate_limited"] == 1


def test_injected_500_is_not_executed(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, error_rate=1.0)
    with pytest.raises(stripe.APIError) as info:
        client.v1.customers.create({"name": "x"}, options={"idempotency_key": "k-500"})
    assert info.value.http_status == 500
    assert info.value.error.type == "api_error"
    set_faults(base, error_rate=0.0)
    assert client.v1.customers.create({"name": "y"}, options={"idempotency_key": "k-500"}).name == "y"
    state = emulator_state(base)
    assert [c["name"] for c in state["customers"]] == ["y"]
    assert state["requests"]["errors_injected"] == 1


def test_faults_endpoint(base: str) -> None:
    status, faults = admin(base, "GET", "/_emulator/faults")
    assert status == 200
    assert faults == {
        "latency_ms": 0,
        "latency_jitter_ms": 0,
        "rate_limit": None,
        "error_rate": 0.0,
        "drop_after_commit_rate": 0.0,
        "webhook_duplicate_rate": 0.0,
        "webhook_reorder": False,
        "webhook_delay_ms": 0,
        "response_delay_ms": 0,
    }
    updated = set_faults(base, error_rate=0.25, webhook_reorder=True)
    assert (updated["error_rate"], updated["webhook_reorder"], updated["latency_ms"]) == (0.25, True, 0)
    assert set_faults(base, latency_ms=5)["error_rate"] == 0.25  # partial updates merge
    for bad in (
        {"nope": 1},
        {"error_rate": 2},
        {"rate_limit": -1},
        {"webhook_reorder": "yes"},
        {"latency_ms": True},
        [1, 2],
    ):
        status, body = admin(base, "POST", "/_emulator/faults", bad)
        assert status == 400, bad
        assert body["error"]["type"] == "invalid_request_error"
    assert admin(base, "GET", "/_emulator/faults")[1]["error_rate"] == 0.25
    status, _ = admin(base, "POST", "/_emulator/reset")
    assert status == 200
    assert admin(base, "GET", "/_emulator/faults")[1]["error_rate"] == 0.0
    health = admin(base, "GET", "/_emulator/health")
    assert health == (200, {"status": "ok", "api_version": stripe.api_version})


def test_latency_is_applied(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, latency_ms=150, latency_jitter_ms=50)
    started = time.monotonic()
    client.v1.customers.list()
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 1.0


# ---------------------------------------------------------------- webhooks


class Receiver:
    """A tiny webhook endpoint that answers 500 to its first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.deliveries: list[tuple[int, float, str, bytes]] = []  # (status, time, signature, body)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = 500 if len(receiver.deliveries) < receiver.fail_first else 200
                    receiver.deliveries.append(
                        (status, time.monotonic(), self.headers["Stripe-Signature"], body)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/stripe"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ok(self) -> list[tuple[int, float, str, bytes]]:
        with self.lock:
            return [d for d in self.deliveries if d[0] == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def test_webhook_signed_and_retried_until_accepted(receiver: Receiver) -> None:
    receiver.fail_first = 2
    with running_emulator(webhook_url=receiver.url, webhook_retry_base_s=0.05) as url:
        client = sdk_client(url)
        cus = client.v1.customers.create({"email": "w@example.com"}, options={"idempotency_key": "k-wh"})
        assert wait_until(lambda: len(receiver.ok()) == 1)
        assert [d[0] for d in receiver.deliveries] == [500, 500, 200]
        for _status, _at, signature, body in receiver.deliveries:
            event = stripe.Webhook.construct_event(body, signature, WEBHOOK_SECRET)
            assert event.type == "customer.created"
            assert event.data.object.id == cus.id
            assert event.request.idempotency_key == "k-wh"
            assert event.api_version == "2026-10-28.endive"
        _, _, signature, body = receiver.ok()[0]
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(
                body.replace(b"w@example.com", b"x@example.com"), signature, WEBHOOK_SECRET
            )
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body, signature, "whsec_other")
        # Once delivered, the event no longer counts as pending.
        assert wait_until(lambda: client.v1.events.list().data[0].pending_webhooks == 0)
        state = emulator_state(url)
        assert state["webhooks"]["delivered"] == 1 and state["webhooks"]["failed_attempts"] == 2


def test_webhook_gives_up_after_bounded_attempts(receiver: Receiver) -> None:
    receiver.fail_first = 100
    with running_emulator(webhook_url=receiver.url, webhook_retry_base_s=0.01, webhook_max_attempts=4) as url:
        sdk_client(url).v1.customers.create({})
        assert wait_until(lambda: emulator_state(url)["webhooks"]["gave_up"] == 1)
        assert len(receiver.deliveries) == 4
        assert emulator_state(url)["events"][0]["pending_webhooks"] == 1


def test_webhook_duplicates_delay_and_reorder(receiver: Receiver) -> None:
    with running_emulator(webhook_url=receiver.url, webhook_duplicate_rate=1.0, webhook_delay_ms=300) as url:
        client = sdk_client(url)
        started = time.monotonic()
        client.v1.customers.create({})
        assert wait_until(lambda: len(receiver.ok()) == 2)
        assert receiver.ok()[0][1] - started >= 0.3
        ids = {json.loads(d[3])["id"] for d in receiver.ok()}
        assert len(ids) == 1  # the same event, twice
    receiver.deliveries.clear()
    with running_emulator(webhook_url=receiver.url, webhook_reorder=True) as url:
        client = sdk_client(url)
        created = [client.v1.customers.create({"name": str(i)}).id for i in range(12)]
        assert wait_until(lambda: len(receiver.ok()) == 12)
        delivered = [json.loads(d[3])["data"]["object"]["id"] for d in receiver.ok()]
        assert sorted(delivered) == sorted(created)
        assert delivered != created


def test_webhook_endpoint_gets_only_its_enabled_events(receiver: Receiver) -> None:
    # Offsession's list (shared.webhooks.EVENTS_WITH_WORK): a charge and its refund, without the
    # customer, card, payment_intent.created and charge.succeeded events that would only be stored.
    with running_emulator(webhook_url=receiver.url, webhook_events=EVENTS_WITH_WORK) as url:
        client = sdk_client(url)
        cus, pm = customer_with(client, "pm_card_visa")
        pi = charge(client, cus, pm)
        client.v1.refunds.create({"payment_intent": pi.id, "amount": 400})
        wanted = ["payment_intent.succeeded", "refund.created", "charge.refunded"]
        assert wait_until(lambda: len(receiver.ok()) == len(wanted))
        time.sleep(0.2)  # nothing else follows
        assert sorted(json.loads(d[3])["type"] for d in receiver.deliveries) == sorted(wanted)
        state = emulator_state(url)
        assert state["webhooks"]["events"] == list(EVENTS_WITH_WORK)
        # The other events exist all the same (GET /v1/events), undelivered and not pending.
        others = [e for e in state["events"] if e["type"] not in wanted]
        stored_only = {"customer.created", "payment_intent.created", "charge.succeeded"}
        assert stored_only <= {e["type"] for e in others}
        assert all(e["pending_webhooks"] == 0 for e in others)


def test_webhook_events_flag_takes_star_or_exact_names() -> None:
    parser = build_parser()
    assert config_from_args(parser.parse_args([])).webhook_events == ("*",)
    flag = ["--webhook-events", "payment_intent.succeeded, charge.refunded"]
    chosen = config_from_args(parser.parse_args(flag))
    assert chosen.webhook_events == ("payment_intent.succeeded", "charge.refunded")
    assert chosen.subscribed("charge.refunded") and not chosen.subscribed("charge.succeeded")
    for wrong in ("refund.*", "", "succeeded"):
        with pytest.raises(SystemExit, match="webhook events"):
            config_from_args(parser.parse_args(["--webhook-events", wrong]))


def test_unreachable_webhook_does_not_block_api() -> None:
    with running_emulator(webhook_url="http://127.0.0.1:9/none") as url:
        client = sdk_client(url)
        started = time.monotonic()
        for _ in range(20):
            client.v1.customers.create({})
        assert time.monotonic() - started < 2.0
        assert len(emulator_state(url)["customers"]) == 20


# ---------------------------------------------------------------- accounts, lists, search, events


def test_stripe_account_scoping(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_visa", stripe_account="acct_A")
    pi = charge(client, cus, pm, stripe_account="acct_A")
    for account in ("acct_B", None):
        opts: Any = {"stripe_account": account} if account else {}
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.customers.retrieve(cus.id, options=opts)
        assert (info.value.http_status, info.value.code) == (404, "resource_missing")
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.payment_intents.retrieve(pi.id, options=opts)
        assert client.v1.payment_intents.list(options=opts).data == []
        assert client.v1.events.list(options=opts).data == []
    events = client.v1.events.list(options={"stripe_account": "acct_A"}).data
    assert events and all(e.account == "acct_A" for e in events)
    on_a = client.v1.payment_intents.retrieve(pi.id, options={"stripe_account": "acct_A"})
    assert on_a.status == "succeeded"
    with pytest.raises(stripe.PermissionError):
        client.v1.customers.list(options={"stripe_account": "not-an-account"})


def test_list_pagination_and_filters(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    ids = [charge(client, cus, pm, metadata={"charge_attempt_id": f"a{i}"}).id for i in range(5)]
    other, other_pm = customer_with(client, "pm_card_visa")
    charge(client, other, other_pm)
    page = client.v1.payment_intents.list({"customer": cus.id, "limit": 2})
    assert [p.id for p in page.data] == ids[::-1][:2] and page.has_more
    everything = [p.id for p in page.auto_paging_iter()]
    assert everything == ids[::-1]
    now = int(time.time())
    assert len(client.v1.payment_intents.list({"created": {"gte": now - 60}}).data) == 6
    assert client.v1.payment_intents.list({"created": {"gte": now + 60}}).data == []
    after = client.v1.payment_intents.list({"customer": cus.id, "starting_after": ids[2]})
    assert [p.id for p in after.data] == [ids[1], ids[0]] and not after.has_more


def test_search_by_metadata_status_and_customer(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    bad_cus, bad_pm = customer_with(client, "pm_card_chargeDeclined")
    wanted = charge(client, cus, pm, metadata={"charge_attempt_id": "att_9", "invoice_id": "inv_1"})
    charge(client, cus, pm, metadata={"charge_attempt_id": "att_10", "invoice_id": "inv_1"})
    with pytest.raises(stripe.CardError):
        charge(client, bad_cus, bad_pm, metadata={"charge_attempt_id": "att_9", "invoice_id": "inv_2"})
    search = client.v1.payment_intents.search
    found = search({"query": "metadata['charge_attempt_id']:'att_9' AND status:'succeeded'"})
    assert [p.id for p in found.data] == [wanted.id]
    assert found.object == "search_result" and found.has_more is False
    assert len(search({"query": "metadata['charge_attempt_id']:'att_9'"}).data) == 2
    assert len(search({"query": f'customer:\'{cus.id}\' AND metadata["invoice_id"]:"inv_1"'}).data) == 2
    assert len(search({"query": "status:'requires_payment_method'"}).data) == 1
    paged = search({"query": "amount>100", "limit": 2})
    assert paged.has_more and paged.next_page
    assert len(search({"query": "amount>100", "limit": 2, "page": paged.next_page}).data) == 1
    with pytest.raises(stripe.InvalidRequestError) as info:
        search({"query": "colour:'red'"})
    assert info.value.param == "query"


def test_events_list_retrieve_and_snapshot(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    pi = charge(client, cus, pm, key="k-evt")
    created = client.v1.events.list({"type": "payment_intent.created"}).data
    assert len(created) == 1
    evt = client.v1.events.retrieve(created[0].id)
    assert evt.object == "event" and evt.livemode is False and evt.id.startswith("evt_")
    assert evt.api_version == "2026-10-28.endive"
    assert evt.request.idempotency_key == "k-evt" and evt.request.id.startswith("req_")
    # data.object is the object as it was when the event happened.
    assert evt.data.object.id == pi.id and evt.data.object.status == "requires_confirmation"
    assert not hasattr(evt, "account") or evt.account is None
    wild = client.v1.events.list({"type": "payment_intent.*"}).data
    assert {e.type for e in wild} == {"payment_intent.created", "payment_intent.succeeded"}
    several = client.v1.events.list({"types": ["charge.succeeded", "customer.created"]}).data
    assert sorted(e.type for e in several) == ["charge.succeeded", "customer.created"]
    newest_first = client.v1.events.list().data
    assert [e.created for e in newest_first] == sorted((e.created for e in newest_first), reverse=True)
    assert newest_first[0].type == "payment_intent.succeeded"


# ---------------------------------------------------------------- refunds, on-session, setup intents


def test_refunds_emit_charge_refunded(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    pi = charge(client, cus, pm, amount=1000)
    part = client.v1.refunds.create({"payment_intent": pi.id, "amount": 400})
    assert (part.status, part.amount, part.charge) == ("succeeded", 400, pi.latest_charge)
    ch = client.v1.charges.retrieve(pi.latest_charge)
    assert (ch.amount_refunded, ch.refunded) == (400, False)
    rest = client.v1.refunds.create({"payment_intent": pi.id})
    assert rest.amount == 600
    assert client.v1.charges.retrieve(pi.latest_charge).refunded is True
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.refunds.create({"payment_intent": pi.id, "amount": 1})
    assert info.value.code == "charge_already_refunded"
    assert {r.id for r in client.v1.refunds.list({"payment_intent": pi.id}).data} == {part.id, rest.id}
    assert client.v1.refunds.retrieve(part.id).amount == 400
    refunded = client.v1.events.list({"type": "charge.refunded"}).data
    assert len(refunded) == 2 and refunded[0].data.object.refunded is True
    assert refunded[0].data.previous_attributes.amount_refunded == 400
    assert len(client.v1.events.list({"type": "refund.created"}).data) == 2


def test_on_session_authentication_flow(client: stripe.StripeClient, base: str) -> None:
    cus, pm = customer_with(client, "pm_card_authenticationRequired")
    with pytest.raises(stripe.CardError) as info:
        charge(client, cus, pm)
    failed_id = info.value.error.payment_intent.id
    # Bring the customer back on session: confirm the same PaymentIntent with the same card.
    pi = client.v1.payment_intents.confirm(failed_id, {"payment_method": pm.id, "off_session": False})
    assert pi.status == "requires_action"
    assert pi.next_action.type == "use_stripe_sdk"
    assert pi.latest_charge == info.value.error.charge
    status, body = admin(
        base, "POST", f"/_emulator/payment_intents/{pi.id}/authenticate", {"outcome": "succeed"}
    )
    assert (status, body["status"]) == (200, "succeeded")
    done = client.v1.payment_intents.retrieve(pi.id)
    assert (done.status, done.amount_received, done.next_action) == ("succeeded", 1234, None)
    types = event_types(client)
    assert "payment_intent.requires_action" in types and "payment_intent.succeeded" in types
    # A failed authentication sends the PaymentIntent back for another payment method.
    second = client.v1.payment_intents.create(
        {
            "amount": 2000,
            "currency": "eur",
            "customer": cus.id,
            "payment_method": pm.id,
            "confirm": True,
            "allowed_payment_method_types": ["card"],
        }
    )
    assert second.status == "requires_action"
    status, body = admin(
        base, "POST", f"/_emulator/payment_intents/{second.id}/authenticate", {"outcome": "fail"}
    )
    assert status == 200
    assert body["status"] == "requires_payment_method"
    assert body["last_payment_error"]["code"] == "payment_intent_authentication_failure"
    assert (
        admin(base, "POST", f"/_emulator/payment_intents/{second.id}/authenticate", {"outcome": "maybe"})[0]
        == 400
    )
    canceled = client.v1.payment_intents.cancel(second.id, {"cancellation_reason": "abandoned"})
    assert canceled.status == "canceled" and "payment_intent.canceled" in event_types(client)
    with pytest.raises(stripe.InvalidRequestError) as info2:
        client.v1.payment_intents.confirm(canceled.id)
    assert info2.value.code == "payment_intent_unexpected_state"


def test_return_url_redirects_through_emulator_3ds_page(client: stripe.StripeClient, base: str) -> None:
    cus, pm = customer_with(client, "pm_card_authenticationRequired")
    pi = client.v1.payment_intents.create(
        {
            "amount": 1500,
            "currency": "usd",
            "customer": cus.id,
            "payment_method": pm.id,
            "confirm": True,
            "off_session": False,
            "return_url": "https://shop.example/pay/done?invoice=7",
            "allowed_payment_method_types": ["card"],
        }
    )
    assert pi.status == "requires_action" and pi.next_action.type == "redirect_to_url"
    page = pi.next_action.redirect_to_url.url
    assert page == f"{base}/_emulator/3ds/{pi.id}"
    assert pi.next_action.redirect_to_url.return_url == "https://shop.example/pay/done?invoice=7"
    with urllib.request.urlopen(page, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/html")
        html = resp.read()
        assert b'name="outcome" value="succeed"' in html and b"Complete authentication</button>" in html
    conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=5)
    conn.request("GET", f"/_emulator/3ds/{pi.id}?outcome=succeed")
    answer = conn.getresponse()
    answer.read()
    conn.close()
    assert answer.status == 302
    location = answer.getheader("Location") or ""
    assert location.startswith("https://shop.example/pay/done?invoice=7&payment_intent=" + pi.id)
    assert "payment_intent_client_secret=" in location and location.endswith("redirect_status=succeeded")
    assert client.v1.payment_intents.retrieve(pi.id).status == "succeeded"


def test_setup_intents(client: stripe.StripeClient, base: str) -> None:
    cus = client.v1.customers.create({})
    si = client.v1.setup_intents.create(
        {
            "customer": cus.id,
            "payment_method": "pm_card_visa",
            "usage": "off_session",
            "confirm": True,
            "allowed_payment_method_types": ["card"],
        }
    )
    assert si.status == "succeeded" and si.usage == "off_session"
    assert client.v1.payment_methods.retrieve(si.payment_method).customer == cus.id
    assert "setup_intent.succeeded" in event_types(client)
    # 3155: needs 3-D Secure at setup; once set up, off-session charges go through.
    setup = client.v1.setup_intents.create(
        {
            "customer": cus.id,
            "payment_method": "pm_card_authenticationRequiredOnSetup",
            "confirm": True,
            "allowed_payment_method_types": ["card"],
        }
    )
    assert setup.status == "requires_action"
    status, body = admin(base, "POST", f"/_emulator/setup_intents/{setup.id}/authenticate", {})
    assert (status, body["status"]) == (200, "succeeded")
    pm = client.v1.payment_methods.retrieve(setup.payment_method)
    assert charge(client, cus, pm).status == "succeeded"
    # A declining card fails its setup check, with the SetupIntent embedded in the error.
    with pytest.raises(stripe.CardError) as info:
        client.v1.setup_intents.create(
            {
                "customer": cus.id,
                "payment_method": "pm_card_chargeDeclined",
                "confirm": True,
                "allowed_payment_method_types": ["card"],
            }
        )
    assert info.value.error.setup_intent.status == "requires_payment_method"
    assert info.value.error.decline_code == "generic_decline"
    # chargeCustomerFail passes setup and declines only when charged.
    ok = client.v1.setup_intents.create(
        {
            "customer": cus.id,
            "payment_method": "pm_card_chargeCustomerFail",
            "allowed_payment_method_types": ["card"],
        }
    )
    assert ok.status == "requires_confirmation"
    assert client.v1.setup_intents.confirm(ok.id).status == "succeeded"
    assert client.v1.setup_intents.retrieve(ok.id).status == "succeeded"


# ---------------------------------------------------------------- wire format and errors


def test_auth_and_request_ids(base: str) -> None:
    with pytest.raises(stripe.AuthenticationError) as info:
        stripe.StripeClient("sk_live_nope", base_addresses={"api": base}).v1.customers.list()
    assert info.value.http_status == 401
    req = urllib.request.Request(base + "/v1/customers")
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=5)
    assert http.value.code == 401
    assert json.loads(http.value.read())["error"]["type"] == "invalid_request_error"
    assert http.value.headers["Request-Id"].startswith("req_")
    ok = sdk_client(base).v1.customers.list()
    assert ok.last_response.headers["Request-Id"].startswith("req_") and ok.object == "list"


def test_invalid_requests(client: stripe.StripeClient, base: str) -> None:
    cus, pm = customer_with(client, "pm_card_visa")
    params: Any = {
        "amount": 1000,
        "currency": "usd",
        "customer": cus.id,
        "payment_method": pm.id,
        "confirm": True,
        "allowed_payment_method_types": ["card"],
    }
    cases: list[tuple[dict[str, Any], str | None, str | None]] = [
        ({"idempotency_key": "oops"}, "idempotency_key", "parameter_unknown"),  # the options=/params gotcha
        ({"amount": 49}, "amount", "amount_too_small"),
        ({"amount": "ten"}, "amount", "parameter_invalid_integer"),
        ({"currency": "xxx"}, "currency", None),
        ({"customer": "cus_missing"}, "customer", "resource_missing"),
        ({"payment_method": "pm_missing"}, "payment_method", "resource_missing"),
        ({"confirm": False, "off_session": True}, "off_session", None),
        ({"statement_descriptor": "SHOP"}, "statement_descriptor", None),
    ]
    for change, param, code in cases:
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.payment_intents.create({**params, **change})
        assert info.value.http_status == 400, change
        assert (info.value.param, info.value.code) == (param, code), change
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.retrieve("pi_missing")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")
    # Without explicit card types the latest API enables redirecting methods, which need a return_url.
    with pytest.raises(stripe.InvalidRequestError) as redirect:
        client.v1.payment_intents.create(
            {k: v for k, v in params.items() if k != "allowed_payment_method_types"}
        )
    assert "return_url" in str(redirect.value.user_message)
    never = client.v1.payment_intents.create(
        {
            **{k: v for k, v in params.items() if k != "allowed_payment_method_types"},
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        }
    )
    assert never.status == "succeeded"
    # None of the failed requests left an object behind.
    assert [p["id"] for p in emulator_state(base)["payment_intents"]] == [never.id]


def test_update_and_confirm_payment_intent(client: stripe.StripeClient) -> None:
    cus, pm = customer_with(client, "pm_card_chargeDeclined")
    good = client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
    with pytest.raises(stripe.CardError) as info:
        charge(client, cus, pm)
    pi_id = info.value.error.payment_intent.id
    updated = client.v1.payment_intents.update(pi_id, {"payment_method": good.id, "metadata": {"retry": "1"}})
    assert (updated.status, updated.last_payment_error) == ("requires_confirmation", None)
    assert updated.metadata["retry"] == "1" and updated.metadata["charge_attempt_id"] == "att_1"
    done = client.v1.payment_intents.confirm(
        pi_id, {"off_session": True, "expand": ["latest_charge", "payment_method"]}
    )
    assert done.status == "succeeded"
    assert done.latest_charge.status == "succeeded" and done.payment_method.id == good.id


# ---------------------------------------------------------------- persistence and command line


def test_state_file_survives_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "emulator.json"
    with running_emulator(state_file=state_file) as url:
        client = sdk_client(url)
        cus, pm = customer_with(client, "pm_card_visa", stripe_account="acct_P")
        pi = charge(client, cus, pm, key="k-persist", stripe_account="acct_P")
    assert state_file.exists()
    with running_emulator(state_file=state_file) as url:
        client = sdk_client(url)
        opts: Any = {"stripe_account": "acct_P"}
        restored = client.v1.customers.retrieve(cus.id, options=opts)
        assert restored.invoice_settings.default_payment_method == pm.id
        replay = charge(client, cus, pm, key="k-persist", stripe_account="acct_P")
        assert replay.id == pi.id and replay.last_response.headers["Idempotent-Replayed"] == "true"
        assert client.v1.payment_intents.list({"customer": cus.id}, options=opts).data[0].id == pi.id
        assert len(client.v1.events.list(options=opts).data) > 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_command_line_saves_state_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    state_file = tmp_path / "cli.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_emulator",
            "--port",
            str(port),
            "--state-file",
            str(state_file),
            "--latency-ms",
            "1",
            "--error-rate",
            "0",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _port_open(port), timeout=15)
        assert admin(base, "GET", "/_emulator/faults")[1]["latency_ms"] == 1
        cus = sdk_client(base).v1.customers.create({"name": "cli"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = json.loads(state_file.read_text())
    assert [c["id"] for c in saved["accounts"][""]["customers"]] == [cus.id]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_payment_intents_of_a_created_window_page_by_page(client: stripe.StripeClient) -> None:
    """What the daily reconciliation asks: created[gte]/[lt], limit, starting_after and has_more."""
    cus, pm = customer_with(client, "pm_card_visa")
    made = [charge(client, cus, pm) for _ in range(5)]
    start, end = made[0].created, made[-1].created + 1
    window = {"created": {"gte": start, "lt": end}, "limit": 2}
    first = client.v1.payment_intents.list(window)
    assert [p.id for p in first.data] == [p.id for p in made[::-1][:2]] and first.has_more
    rest = client.v1.payment_intents.list({**window, "starting_after": first.data[-1].id})
    assert [p.id for p in rest.data] == [p.id for p in made[::-1][2:4]] and rest.has_more
    assert [p.id for p in first.auto_paging_iter()] == [p.id for p in made[::-1]]
    assert client.v1.payment_intents.list({"created": {"lt": start}}).data == []
    assert client.v1.payment_intents.list({"created": {"gte": end}}).data == []
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.payment_intents.list({"created": {"lt": "soon"}})
    assert info.value.param == "created[lt]"
