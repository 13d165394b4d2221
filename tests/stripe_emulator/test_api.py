"""The request pipeline (stripe_emulator/api.py): authentication, Stripe-Version, idempotency as Stripe
keeps it, the switchable faults, Stripe-Account scoping and the bank's 3-D Secure page."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import stripe

from stripe_emulator import API_VERSION
from tests.support.emulator import (
    admin,
    charge,
    create_account,
    customer_with,
    emulator_state,
    raw,
    sdk_client,
    set_faults,
)

pytestmark = pytest.mark.integration


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


def test_keys_are_scoped_per_account(client: stripe.StripeClient, base: str) -> None:
    create_account(base, id="acct_A")
    create_account(base, id="acct_B")
    a = client.v1.customers.create(
        {"name": "A"}, options={"idempotency_key": "k-acct", "stripe_account": "acct_A"}
    )
    b = client.v1.customers.create(
        {"name": "B"}, options={"idempotency_key": "k-acct", "stripe_account": "acct_B"}
    )
    assert a.id != b.id and (a.name, b.name) == ("A", "B")


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
        "refund_failure_rate": 0.0,
        "settle_delay_ms": 1000,
    }
    updated = set_faults(base, error_rate=0.25, webhook_reorder=True)
    assert (updated["error_rate"], updated["webhook_reorder"], updated["latency_ms"]) == (0.25, True, 0)
    assert set_faults(base, latency_ms=5)["error_rate"] == 0.25  # partial updates merge
    assert set_faults(base, settle_delay_ms=None)["settle_delay_ms"] is None  # only when a test settles
    for bad in (
        {"nope": 1},
        {"error_rate": 2},
        {"rate_limit": -1},
        {"webhook_reorder": "yes"},
        {"latency_ms": True},
        {"refund_failure_rate": 1.5},
        {"settle_delay_ms": -1},
        {"settle_delay_ms": "soon"},
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


def test_stripe_account_scoping(client: stripe.StripeClient, base: str) -> None:
    create_account(base, id="acct_A")
    create_account(base, id="acct_B")
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


def test_the_emulator_announces_the_version_the_gateway_pins(client: stripe.StripeClient, base: str) -> None:
    assert stripe.api_version == API_VERSION  # the version the SDK is generated for (and the gateway pins)
    customer = client.v1.customers.create({"email": "version@example.com"})
    assert customer.last_response.headers["Stripe-Version"] == API_VERSION
    # No Stripe-Version header: the account's default, which is the same version.
    status, _, headers = raw(base, "GET", f"/v1/customers/{customer.id}")
    assert (status, headers["Stripe-Version"]) == (200, API_VERSION)
    # Events are rendered at that version.
    assert {event["api_version"] for event in emulator_state(base)["events"]} == {API_VERSION}


@pytest.mark.parametrize("version", ["2024-06-20", "2026-09-30.endive", "2099-01-01.zucchini", "latest"])
def test_a_version_it_does_not_implement_is_refused_loudly(base: str, version: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk_client(base, stripe_version=version).v1.customers.create({"email": "old@example.com"})
    assert caught.value.http_status == 400
    assert caught.value.param == "Stripe-Version"
    assert version in str(caught.value.user_message)
    # Refused before anything ran.
    assert all(c["email"] != "old@example.com" for c in emulator_state(base)["customers"])


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


def test_the_bank_page_is_reached_whichever_next_action_the_confirm_answers(
    client: stripe.StripeClient, base: str
) -> None:
    customer = client.v1.customers.create({})
    pages = []
    for sdk in (False, True):
        intent = client.v1.payment_intents.create(
            {"amount": 1500, "currency": "usd", "customer": customer.id,
             "payment_method": "pm_card_authenticationRequired", "allowed_payment_method_types": ["card"],
             "confirm": True, "return_url": "https://shop.example/back", "use_stripe_sdk": sdk}
        )
        action = intent.next_action
        assert action.type == ("use_stripe_sdk" if sdk else "redirect_to_url")
        url = action.use_stripe_sdk["stripe_js"] if sdk else action.redirect_to_url.url
        assert url == f"{base}/_emulator/3ds/{intent.id}"
        with urllib.request.urlopen(url, timeout=10) as page:
            pages.append(page.status)
        # Completing it sends the browser back to the return_url, as the Client Zone expects.
        connection = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=10)
        connection.request("GET", f"/_emulator/3ds/{intent.id}?outcome=succeed")
        answer = connection.getresponse()
        answer.read()
        connection.close()
        assert answer.status == 302
        assert (answer.getheader("Location") or "").startswith(
            f"https://shop.example/back?payment_intent={intent.id}&"
        )
        assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    assert pages == [200, 200]


def test_state_renders_every_kind_of_object(client: stripe.StripeClient, base: str) -> None:
    set_faults(base, settle_delay_ms=None)
    cus, pm = customer_with(client, "pm_card_createDispute")
    pi = charge(client, cus, pm)
    endpoint = client.v1.webhook_endpoints.create({"url": "https://x.example/hook", "enabled_events": ["*"]})
    session = client.v1.checkout.sessions.create({"mode": "setup", "currency": "usd",
                                                  "success_url": "https://x.example/ok"})
    state = emulator_state(base)
    assert [d["charge"] for d in state["disputes"]] == [pi.latest_charge]
    assert [(s["id"], s["status"]) for s in state["checkout_sessions"]] == [(session.id, "open")]
    assert [(w["id"], w["secret"], w["connect"]) for w in state["webhook_endpoints"]] == [
        (endpoint.id, endpoint.secret, False)]
    assert state["accounts"][0]["secret_keys"] == ["sk_test_emulator"]
    assert {"customers", "payment_methods", "setup_intents", "payment_intents", "charges", "refunds",
            "events", "requests", "webhooks"} <= set(state)
