"""A correctly signed Stripe event changes a charge only when it is the charge's own: same mode as the
key, same account, the charge's PaymentIntent (a metadata match only while the charge has none, and
then Stripe's copy decides), its customer, currency and amount. Anything else is stored, flagged on
the Charges page and in /metrics, and changes nothing. The janitor and refunds follow the same rule.

The events are delivered through POST /webhooks/stripe signed with the real secret, as an attacker
holding a leaked secret, or another endpoint's events, would arrive."""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from shared.domain.models import ChargeAttempt, Client, Payment, WebhookEvent, utcnow
from shared.domain.payments import ChargeRequest
from shared.services.charging import run_attempt
from shared.services.janitor import NEEDS_OPERATOR, resolve_attempt
from shared.services.webhooks import process_event
from tests.support.emulator import emulator_state
from tests.support.signing import signed
from tests.support.web_app import (
    WEBHOOK_SECRET,
    Env,
    World,
    api,
    bearer,
    sign_in_admin,
)


def _charge(env: Env, invoice_id: int, card: str | None = None) -> str:
    """Charge the invoice through the worker code against the emulator; returns the attempt id."""
    http = env.app.test_client()
    queued = api(http, "POST", f"/api/invoices/{invoice_id}/charges")
    assert queued.status_code == 202, queued.json
    runtime = env.runtime
    charge_id = queued.json["id"]
    run_attempt(runtime.sessions, runtime.gateway, charge_id, lease_seconds=60, max_transient_retries=1)
    return str(queued.json["id"])


def _set_default_card(env: Env, client_id: int, token: str) -> None:
    http = env.app.test_client()
    card = api(http, "POST", f"/api/clients/{client_id}/cards", {"payment_method": token})
    assert card.status_code == 201, card.json
    made = api(http, "POST", f"/api/clients/{client_id}/cards/{card.json['id']}/default")
    assert made.status_code == 200, made.json


def _intent(env: Env, pi_id: str) -> dict[str, Any]:
    return next(pi for pi in emulator_state(env.emulator)["payment_intents"] if pi["id"] == pi_id)


def _event(obj: dict[str, Any], event_type: str = "payment_intent.succeeded", **top: Any) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:20]}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
        **top,
    }


def _deliver(env: Env, event: dict[str, Any]) -> str:
    """Through the endpoint, then processed as a worker would; returns the outcome in words."""
    payload, headers = signed(event, WEBHOOK_SECRET)
    answer = env.app.test_client().post("/webhooks/stripe", data=payload, headers=headers)
    assert answer.status_code == 200, answer.data
    with env.session() as s:
        row_id = s.scalar(select(WebhookEvent.id).where(WebhookEvent.stripe_event_id == event["id"]))
    assert row_id is not None
    return process_event(env.runtime.sessions, env.runtime.gateway, row_id)


def _money_state(env: Env) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every ledger row and every charge attempt as they are: a flagged event leaves them so."""
    snapshot = env.snapshot()
    return snapshot["payment"], snapshot["charge_attempt"]


def _assert_flagged(env: Env, event: dict[str, Any], reason: str) -> None:
    with env.session() as s:
        row = s.scalars(select(WebhookEvent).where(WebhookEvent.stripe_event_id == event["id"])).one()
        assert (row.flagged_reason, row.processed_at is not None, row.error) == (reason, True, None)
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    page = admin.get("/admin/charges").get_data(as_text=True)
    assert event["id"] in page and reason.replace("_", " ") in page
    metrics = env.app.test_client().get("/metrics", headers=bearer()).get_data(as_text=True)
    counted = re.search(rf'^offsession_webhook_events_flagged\{{reason="{reason}"\}} (\S+)$', metrics, re.M)
    assert counted and float(counted.group(1)) >= 1, metrics


def _waiting_for_authentication(env: Env, world: World) -> ChargeAttempt:
    """A charge with its PaymentIntent id stored and no money yet: the target of a forged success."""
    _set_default_card(env, world.a.client_id, "pm_card_authenticationRequired")
    attempt_id = _charge(env, world.a.invoice_id)
    with env.session() as s:
        attempt = s.get_one(ChargeAttempt, attempt_id)
        assert attempt.status == "requires_action" and attempt.payment_intent_id
        s.expunge(attempt)
    return attempt


def _forged_success(env: Env, attempt: ChargeAttempt, **changes: Any) -> dict[str, Any]:
    intent = _intent(env, str(attempt.payment_intent_id))
    return {**intent, "status": "succeeded", "amount_received": intent["amount"], **changes}


# ---- the four findings of the review -----------------------------------------------------------------


def test_another_payment_intent_carrying_the_charges_metadata_adds_nothing(env: Env, world: World) -> None:
    paid_id = _charge(env, world.a.invoice_id)
    with env.session() as s:
        paid = s.get_one(ChargeAttempt, paid_id)
        assert paid.status == "succeeded"
        customer = s.get_one(Client, world.a.client_id).stripe_customer_id
        card = paid.payment_method_id
    assert customer and card
    # Another PaymentIntent that money really moved for, copying the paid charge's metadata.
    other = env.runtime.gateway.create_offsession_payment_intent(
        ChargeRequest(
            amount=5000,
            currency="usd",
            customer_id=customer,
            payment_method_id=card,
            metadata={
                "invoice_id": str(world.a.invoice_id),
                "invoice_number": "ALICE-1",
                "charge_attempt_id": paid_id,
            },
            description="not Offsession's",
            idempotency_key=f"elsewhere:{uuid.uuid4()}",
        )
    )
    before = _money_state(env)
    event = _event(_intent(env, other.payment_intent_id))  # type: ignore[union-attr]

    outcome = _deliver(env, event)

    assert outcome.startswith("flagged (payment_intent_mismatch)"), outcome
    assert _money_state(env) == before  # still one payment on the paid invoice
    _assert_flagged(env, event, "payment_intent_mismatch")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"currency": "jpy", "amount": 999_999, "amount_received": 999_999}, "currency_mismatch"),
        ({"amount": 5_001, "amount_received": 5_001}, "amount_mismatch"),
        ({"amount_received": 50_000}, "amount_mismatch"),
    ],
    ids=["another currency", "a larger amount", "more received than charged"],
)
def test_a_success_in_another_currency_or_for_more_credits_nothing(
    env: Env, world: World, changes: dict[str, Any], reason: str
) -> None:
    attempt = _waiting_for_authentication(env, world)
    before = _money_state(env)
    event = _event(_forged_success(env, attempt, **changes))

    assert _deliver(env, event).startswith(f"flagged ({reason})")

    assert _money_state(env) == before
    _assert_flagged(env, event, reason)


def test_a_test_mode_event_does_not_touch_what_the_other_mode_charged(env: Env, world: World) -> None:
    # The deployment's key is a test key here: a live event is the other mode.
    attempt = _waiting_for_authentication(env, world)
    before = _money_state(env)
    event = _event(_forged_success(env, attempt, livemode=True), livemode=True)

    assert _deliver(env, event).startswith("flagged (livemode_mismatch)")

    assert _money_state(env) == before
    _assert_flagged(env, event, "livemode_mismatch")


def test_an_event_from_another_account_does_not_touch_the_platforms_charge(env: Env, world: World) -> None:
    attempt = _waiting_for_authentication(env, world)
    before = _money_state(env)
    event = _event(_forged_success(env, attempt), account="acct_1SomeoneElse00")

    assert _deliver(env, event).startswith("flagged (account_mismatch)")

    assert _money_state(env) == before
    _assert_flagged(env, event, "account_mismatch")


def test_the_genuine_success_still_lands_once(env: Env, world: World) -> None:
    # The control for the tests above: the charge's own success, as Stripe sends it, is applied.
    attempt = _waiting_for_authentication(env, world)
    event = _event(_forged_success(env, attempt))
    assert _deliver(env, event) == f"attempt {attempt.id}: succeeded"
    with env.session() as s:
        payments = s.scalars(select(Payment).where(Payment.invoice_id == attempt.invoice_id)).all()
        assert [(p.amount, p.stripe_payment_intent_id) for p in payments] == [
            (5000, attempt.payment_intent_id)
        ]
        assert s.scalars(select(WebhookEvent.flagged_reason)).all() == [None]


def test_a_metadata_match_is_checked_against_stripes_own_copy(env: Env, world: World) -> None:
    """A charge with no PaymentIntent id yet (queued) is named in an event's metadata: the PaymentIntent
    is retrieved from Stripe, and Stripe's copy (another customer, another amount) decides."""
    queued = api(env.app.test_client(), "POST", f"/api/invoices/{world.a.invoice_id}/charges")
    assert queued.status_code == 202
    with env.session() as s:
        customer_b = s.get_one(Client, world.b.client_id).stripe_customer_id
        card_b = next(c for c in s.get_one(Client, world.b.client_id).cards if c.is_default)
        pm_b = card_b.stripe_payment_method_id
    assert customer_b
    elsewhere = env.runtime.gateway.create_offsession_payment_intent(
        ChargeRequest(
            amount=1234,
            currency="usd",
            customer_id=customer_b,
            payment_method_id=pm_b,
            metadata={"invoice_id": "1", "invoice_number": "X", "charge_attempt_id": "someone-else"},
            description="another charge",
            idempotency_key=f"elsewhere:{uuid.uuid4()}",
        )
    )
    before = _money_state(env)
    # The event claims Alice's queued charge and the charge's own figures; Stripe's copy says otherwise.
    forged = {
        **_intent(env, elsewhere.payment_intent_id),  # type: ignore[union-attr]
        "amount": 5000,
        "amount_received": 5000,
        "metadata": {"charge_attempt_id": queued.json["id"]},
    }
    event = _event(forged)

    assert _deliver(env, event).startswith("flagged (payment_intent_mismatch)")

    assert _money_state(env) == before
    _assert_flagged(env, event, "payment_intent_mismatch")


# ---- refunds -----------------------------------------------------------------------------------------


def _refund_event(pi_id: str, *, amount: int, currency: str = "usd", **top: Any) -> dict[str, Any]:
    refund = {
        "id": f"re_{uuid.uuid4().hex[:20]}",
        "object": "refund",
        "amount": amount,
        "currency": currency,
        "payment_intent": pi_id,
        "status": "succeeded",
    }
    return _event(refund, "refund.created", **top)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"currency": "eur", "amount": 100}, "currency_mismatch"),
        ({"amount": 5_001}, "amount_mismatch"),
        ({"amount": 100, "account": "acct_1SomeoneElse00"}, "account_mismatch"),
    ],
    ids=["another currency", "more than was paid", "another account"],
)
def test_a_refund_takes_back_only_what_was_paid_in_its_currency_on_its_account(
    env: Env, world: World, changes: dict[str, Any], reason: str
) -> None:
    paid_id = _charge(env, world.a.invoice_id)
    with env.session() as s:
        pi_id = str(s.get_one(ChargeAttempt, paid_id).payment_intent_id)
    before = _money_state(env)
    event = _refund_event(pi_id, **changes)

    assert _deliver(env, event).startswith(f"flagged ({reason})")

    assert _money_state(env) == before
    _assert_flagged(env, event, reason)


def test_partial_refunds_add_up_to_the_payment_and_no_further(env: Env, world: World) -> None:
    paid_id = _charge(env, world.a.invoice_id)
    with env.session() as s:
        pi_id = str(s.get_one(ChargeAttempt, paid_id).payment_intent_id)
    assert _deliver(env, _refund_event(pi_id, amount=3000)).endswith("1 refund(s) recorded")
    assert _deliver(env, _refund_event(pi_id, amount=2000)).endswith("1 refund(s) recorded")
    third = _refund_event(pi_id, amount=1)
    assert _deliver(env, third).startswith("flagged (amount_mismatch)")
    with env.session() as s:
        amounts = s.scalars(select(Payment.amount).where(Payment.invoice_id == world.a.invoice_id)).all()
    assert sorted(amounts) == [-3000, -2000, 5000]


# ---- the janitor ---------------------------------------------------------------------------------------


def test_the_janitor_does_not_record_a_payment_intent_that_only_copies_the_metadata(
    env: Env, world: World
) -> None:
    """A charge lost its outcome long ago (no key replay any more); the customer's list at Stripe holds a
    PaymentIntent carrying its metadata for another amount: flagged for a person, nothing recorded."""
    queued = api(env.app.test_client(), "POST", f"/api/invoices/{world.a.invoice_id}/charges")
    attempt_id = queued.json["id"]
    with env.session() as s:
        attempt = s.get_one(ChargeAttempt, attempt_id)
        attempt.status = "unknown"
        attempt.transient_failures = 1
        attempt.created_at = utcnow() - timedelta(hours=25)
        customer, card = attempt.stripe_customer_id, attempt.payment_method_id
        s.commit()
    assert customer and card
    env.runtime.gateway.create_offsession_payment_intent(
        ChargeRequest(
            amount=4999,
            currency="usd",
            customer_id=customer,
            payment_method_id=card,
            metadata={
                "invoice_id": str(world.a.invoice_id),
                "invoice_number": "ALICE-1",
                "charge_attempt_id": attempt_id,
            },
            description="copied metadata",
            idempotency_key=f"elsewhere:{uuid.uuid4()}",
        )
    )
    before = env.snapshot()["payment"]

    runtime = env.runtime
    assert resolve_attempt(runtime.sessions, runtime.gateway, attempt_id, now=utcnow()) == NEEDS_OPERATOR

    with env.session() as s:
        attempt = s.get_one(ChargeAttempt, attempt_id)
        assert (attempt.status, attempt.failure_code, attempt.payment_intent_id) == (
            "unknown",
            NEEDS_OPERATOR,
            None,
        )
        assert "does not match" in (attempt.failure_message or "")
    assert env.snapshot()["payment"] == before
