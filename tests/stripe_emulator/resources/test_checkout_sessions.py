"""Checkout Sessions in setup mode (stripe_emulator/resources/checkout_sessions.py) and their hosted page
(stripe_emulator/checkout_page.py), driven with plain HTTP form posts as a browser sends them. The same
flows in Chromium are in tests/stripe_emulator/test_checkout_page.py."""

from __future__ import annotations

import html
import re
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import stripe

from tests.support.emulator import admin, charge, create_account, emulator_state, raw, visit

pytestmark = pytest.mark.integration

SUCCESS = "https://shop.example/cards/done?session={CHECKOUT_SESSION_ID}"
CANCEL = "https://shop.example/cards"


def new_session(client: stripe.StripeClient, options: Any = None) -> tuple[Any, Any]:
    """A customer and a setup-mode session for it, as the Client Zone's "Add a card" makes them."""
    customer = client.v1.customers.create({"email": "client@example.com"})
    params: Any = {"mode": "setup", "customer": customer.id, "currency": "usd", "success_url": SUCCESS,
                   "cancel_url": CANCEL, "metadata": {"client_id": "42"}}
    return customer, client.v1.checkout.sessions.create(params, options=options or {})


def card(number: str, exp: str = "12 / 34", cvc: str = "123", name: str = "Jo Client") -> dict[str, str]:
    return {"cardnumber": number, "exp-date": exp, "cvc": cvc, "billing-name": name}


def alert(page: str) -> str:
    found = re.search(r'role="alert"[^>]*>([^<]*)<', page)
    return html.unescape(found.group(1)) if found else ""


def test_create_as_stripe_does_in_setup_mode(client: stripe.StripeClient, base: str) -> None:
    customer, session = new_session(client, options={"idempotency_key": "c-1"})
    replay = client.v1.checkout.sessions.create(
        {"mode": "setup", "customer": customer.id, "currency": "usd", "success_url": SUCCESS,
         "cancel_url": CANCEL, "metadata": {"client_id": "42"}}, options={"idempotency_key": "c-1"})
    assert replay.last_response.body == session.last_response.body
    assert session.object == "checkout.session" and session.id.startswith("cs_test_")
    assert (session.mode, session.status, session.payment_status) == ("setup", "open", "no_payment_required")
    assert (session.customer, session.currency, session.metadata["client_id"]) == (customer.id, "usd", "42")
    assert session.url == f"{base}/c/pay/{session.id}"
    assert session.success_url == SUCCESS and session.cancel_url == CANCEL
    assert 23 * 3600 < session.expires_at - session.created <= 24 * 3600
    setup = client.v1.setup_intents.retrieve(session.setup_intent)
    assert setup.status == "requires_payment_method"
    assert (setup.usage, setup.customer) == ("off_session", customer.id)
    # Checkout's SetupIntent is Checkout's: it is not confirmed or canceled through the API.
    for call in (lambda: client.v1.setup_intents.confirm(setup.id, {"payment_method": "pm_card_visa"}),
                 lambda: client.v1.setup_intents.cancel(setup.id)):
        with pytest.raises(stripe.InvalidRequestError, match="expire the Checkout Session"):
            call()
    listed = client.v1.checkout.sessions.list({"customer": customer.id, "status": "open"}).data
    assert [s.id for s in listed] == [session.id]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"mode": None}, "mode"),
        ({"mode": "payment"}, "mode"),
        ({"currency": None}, "currency"),
        ({"currency": "xyz"}, "currency"),
        ({"customer": "cus_missing"}, "customer"),
        ({"success_url": "not a url"}, "success_url"),
        ({"expires_at": "now+60"}, "expires_at"),
        ({"payment_method_types": ["card"]}, "payment_method_types"),
        ({"line_items": [{"price": "price_1", "quantity": 1}]}, "line_items"),
        ({"ui_mode": "embedded_page"}, "ui_mode"),
        ({"customer_email": "x@example.com"}, "customer_email"),
    ],
)
def test_what_stripe_refuses(client: stripe.StripeClient, change: dict[str, Any], param: str) -> None:
    customer = client.v1.customers.create({})
    params: dict[str, Any] = {"mode": "setup", "customer": customer.id, "currency": "usd",
                              "success_url": SUCCESS}
    for key, value in change.items():
        if value == "now+60":
            value = int(time.time()) + 60
        if value is None:
            params.pop(key)
        else:
            params[key] = value
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.checkout.sessions.create(params)  # type: ignore[arg-type]
    assert (caught.value.http_status, caught.value.param) == (400, param)


def test_currency_is_not_needed_with_card_only(client: stripe.StripeClient) -> None:
    session = client.v1.checkout.sessions.create({"mode": "setup", "success_url": SUCCESS,
                                                  "allowed_payment_method_types": ["card"]})
    assert session.currency is None and session.allowed_payment_method_types == ["card"]


def test_the_plain_visa_is_saved_and_the_browser_goes_to_success_url(client: stripe.StripeClient) -> None:
    customer, session = new_session(client)
    status, _, page = visit(session.url)
    assert status == 200 and "Card number" in page and "<script" not in page
    assert f'href="{CANCEL}"' in page
    status, location, _ = visit(session.url, card("4242 4242 4242 4242", name="Jo Client"))
    assert status == 303 and location == SUCCESS.replace("{CHECKOUT_SESSION_ID}", session.id)
    done = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["setup_intent.payment_method"]})
    assert (done.status, done.url) == ("complete", None)
    assert done.customer_details.email == "client@example.com" and done.customer_details.name == "Jo Client"
    pm = done.setup_intent.payment_method
    assert done.setup_intent.status == "succeeded"
    assert (pm.customer, pm.card.brand, pm.card.last4, pm.card.exp_month, pm.card.exp_year) == (
        customer.id, "visa", "4242", 12, 2034)
    assert pm.billing_details.name == "Jo Client" and pm.card.fingerprint
    event_types = [e.type for e in client.v1.events.list({"limit": 20}).data]
    assert event_types[:3] == ["checkout.session.completed", "setup_intent.succeeded",
                               "payment_method.attached"]
    completed = client.v1.events.list({"type": "checkout.session.completed"}).data[0]
    assert completed.data.object.id == session.id and completed.data.object.metadata["client_id"] == "42"
    # A completed session's page sends the browser on to success_url again.
    assert visit(session.url)[:2] == (303, SUCCESS.replace("{CHECKOUT_SESSION_ID}", session.id))
    assert client.v1.payment_methods.retrieve(pm.id).customer == customer.id
    # Charged off session afterwards, like any saved card.
    assert charge(client, customer, pm).status == "succeeded"


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("4000000000000002", "Your card was declined."),
        ("4000000000009995", "Your card has insufficient funds."),
        ("4000000000000069", "Your card has expired."),
    ],
)
def test_a_decline_is_shown_and_nothing_is_saved(client: stripe.StripeClient, number: str,
                                                 message: str) -> None:
    customer, session = new_session(client)
    status, location, page = visit(session.url, card(number))
    assert (status, location, alert(page)) == (200, None, message)
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert client.v1.customers.payment_methods.list(customer.id).data == []
    failed = client.v1.events.list({"type": "setup_intent.setup_failed"}).data
    assert failed[0].data.object.last_setup_error.message == message
    # Another card on the same page then works.
    status, location, _ = visit(session.url, card("5555555555554444"))
    assert status == 303 and client.v1.checkout.sessions.retrieve(session.id).status == "complete"
    assert [p.card.last4 for p in client.v1.customers.payment_methods.list(customer.id).data] == ["4444"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (card(""), "Your card number is incomplete."),
        (card("4242 4242 4242 4241"), "Your card number is invalid."),
        (card("4242424242424242", exp="13 / 30"), "Your card's expiration date is invalid."),
        (card("4242424242424242", exp="01 / 20"), "Your card's expiration year is in the past."),
        (card("4242424242424242", exp="12"), "Your card's expiration date is incomplete."),
        (card("4242424242424242", cvc="12"), "Your card's security code is incomplete."),
        (card("4111111111111111"), "Your card was declined. Your request was in test mode, but used a non "
                                   "test (live) card. For a list of valid test cards, visit: "
                                   "https://stripe.com/docs/testing."),
    ],
)
def test_the_card_form_checks_before_anything_is_sent(client: stripe.StripeClient, fields: dict[str, str],
                                                      message: str) -> None:
    _, session = new_session(client)
    status, _, page = visit(session.url, fields)
    assert (status, alert(page)) == (200, message)
    setup = client.v1.setup_intents.retrieve(session.setup_intent)
    assert (setup.status, setup.last_setup_error) == ("requires_payment_method", None)


def test_authentication_at_setup_goes_through_the_bank_page(client: stripe.StripeClient) -> None:
    customer, session = new_session(client)
    status, bank, _ = visit(session.url, card("4000 0025 0000 3155"))
    assert status == 303 and bank is not None and "/_emulator/3ds/seti_" in bank
    status, back, _ = visit(bank, {"outcome": "succeed"})
    assert status == 303 and back is not None and back.startswith(f"{session.url}/return?setup_intent=")
    assert dict(parse_qsl(urlsplit(back).query))["redirect_status"] == "succeeded"
    # Complete on Stripe's side already: a person who closes the tab now still has the card saved
    # (checkout.session.completed says so).
    assert client.v1.checkout.sessions.retrieve(session.id).status == "complete"
    assert client.v1.events.list({"type": "checkout.session.completed"}).data[0].data.object.id == session.id
    status, location, _ = visit(back)
    assert status == 303 and location == SUCCESS.replace("{CHECKOUT_SESSION_ID}", session.id)
    setup = client.v1.setup_intents.retrieve(session.setup_intent)
    pm = client.v1.payment_methods.retrieve(setup.payment_method)
    assert pm.customer == customer.id and pm.card.last4 == "3155"
    # Set up with authentication, the card is then charged off session without it.
    assert charge(client, customer, pm).status == "succeeded"


def test_a_failed_authentication_leaves_the_session_open(client: stripe.StripeClient) -> None:
    customer, session = new_session(client)
    _, bank, _ = visit(session.url, {"test_card": "4000002760003184"})
    _, back, _ = visit(bank or "", {"outcome": "fail"})
    status, location, page = visit(back or "")
    assert (status, location) == (200, None)
    assert alert(page).startswith("We are unable to authenticate your payment method.")
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert client.v1.customers.payment_methods.list(customer.id).data == []
    # 3184 set up after authenticating is saved, but off-session charges still need authentication.
    _, bank, _ = visit(session.url, {"test_card": "4000002760003184"})
    _, back, _ = visit(bank or "", {"outcome": "succeed"})
    assert visit(back or "")[0] == 303
    pm = client.v1.customers.payment_methods.list(customer.id).data[0]
    with pytest.raises(stripe.CardError) as caught:
        charge(client, customer, pm)
    assert caught.value.code == "authentication_required"


def test_a_card_that_fails_every_charge_is_still_saved(client: stripe.StripeClient) -> None:
    customer, session = new_session(client)
    assert visit(session.url, {"test_card": "4000000000000341"})[0] == 303
    pm = client.v1.customers.payment_methods.list(customer.id).data[0]
    with pytest.raises(stripe.CardError) as caught:
        charge(client, customer, pm)
    assert caught.value.error.decline_code == "generic_decline"


def test_expire_through_the_api_and_by_time(client: stripe.StripeClient, base: str) -> None:
    _, session = new_session(client)
    expired = client.v1.checkout.sessions.expire(session.id)
    assert (expired.status, expired.url) == ("expired", None)
    assert client.v1.setup_intents.retrieve(session.setup_intent).status == "canceled"
    assert client.v1.events.list({"type": "checkout.session.expired"}).data[0].data.object.id == session.id
    assert visit(session.url)[0] == 410
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(session.id)
    _, later = new_session(client)
    status, by_time = admin(base, "POST", f"/_emulator/checkout_sessions/{later.id}/settle", {})
    assert (status, by_time["status"]) == (200, "expired")


def test_a_session_on_a_connected_account(client: stripe.StripeClient, base: str) -> None:
    create_account(base, id="acct_1Shop")
    on_shop: Any = {"stripe_account": "acct_1Shop"}
    customer = client.v1.customers.create({"email": "c@shop.example"}, options=on_shop)
    session = client.v1.checkout.sessions.create(
        {"mode": "setup", "customer": customer.id, "currency": "eur", "success_url": SUCCESS}, options=on_shop
    )
    assert visit(session.url, card("4242424242424242"))[0] == 303
    done = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["setup_intent.payment_method"]},
                                                options=on_shop)
    assert done.setup_intent.payment_method.customer == customer.id
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.retrieve(session.id)  # not on the platform
    events = client.v1.events.list({"type": "checkout.session.completed"}, options=on_shop).data
    assert events[0].account == "acct_1Shop"
    state = emulator_state(base)
    assert [(s["id"], s["account"], s["status"]) for s in state["checkout_sessions"]] == [
        (session.id, "acct_1Shop", "complete")]


def test_a_session_created_with_a_raw_request_takes_brackets_like_stripe(base: str) -> None:
    status, body, _ = raw(base, "POST", "/v1/checkout/sessions",
                          "mode=setup&currency=usd&success_url=https%3A%2F%2Fx.example%2Fok"
                          "&setup_intent_data[metadata][client]=7&client_reference_id=client-7")
    assert status == 200 and body["client_reference_id"] == "client-7"
    status, setup, _ = raw(base, "GET", f"/v1/setup_intents/{body['setup_intent']}")
    assert setup["metadata"] == {"client": "7"}
