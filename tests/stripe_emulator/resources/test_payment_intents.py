"""PaymentIntents (stripe_emulator/resources/payment_intents.py) through the stripe SDK: each test card
off session, authentication back on session, validation, update and confirm, lists and search."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from tests.support.emulator import (
    admin,
    charge,
    customer_with,
    emulator_state,
    event_types,
)

pytestmark = pytest.mark.integration


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


def test_confirming_dynamic_payment_methods_without_return_url_is_refused(
    client: stripe.StripeClient,
) -> None:
    customer = client.v1.customers.create({})
    for create in (
        lambda: client.v1.payment_intents.create(
            {"amount": 1000, "currency": "usd", "customer": customer.id, "payment_method": "pm_card_visa",
             "confirm": True}
        ),
        lambda: client.v1.setup_intents.create(
            {"customer": customer.id, "payment_method": "pm_card_visa", "confirm": True}
        ),
    ):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            create()
        assert str(caught.value.user_message).startswith("A return_url must be specified")
    # Card only, or no redirecting methods, or a return_url: then it confirms.
    for extra in (
        {"allowed_payment_method_types": ["card"]},
        {"automatic_payment_methods": {"enabled": True, "allow_redirects": "never"}},
        {"return_url": "https://shop.example/back"},
    ):
        intent = client.v1.setup_intents.create(
            {"customer": customer.id, "payment_method": "pm_card_visa", "confirm": True, **extra}
        )
        assert intent.status == "succeeded", extra
