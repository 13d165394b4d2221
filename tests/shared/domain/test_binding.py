"""shared/binding.py: a PaymentIntent is applied to a charge only when it is the charge's own."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.domain.binding import MismatchReason, payment_intent_mismatch
from shared.domain.payments import PaymentIntentView
from tests.support import factories


def charge_and_its_payment_intent():  # type: ignore[no-untyped-def]
    invoice = factories.invoice(total=5_000)
    invoice.id = 7
    attempt = factories.attempt(invoice, status="processing")
    attempt.invoice_id = 7
    attempt.stripe_customer_id = "cus_ours"
    attempt.payment_intent_id = "pi_ours"
    view = PaymentIntentView(
        id="pi_ours",
        status="succeeded",
        amount=5_000,
        amount_received=5_000,
        currency="usd",
        customer="cus_ours",
        payment_method="pm_1",
        metadata={"charge_attempt_id": attempt.id},
        latest_charge="ch_1",
        last_payment_error=None,
        created=0,
        client_secret=None,
        next_action_type=None,
        next_action_redirect_url=None,
        livemode=False,
    )
    return attempt, view


def test_the_charges_own_payment_intent_matches() -> None:
    attempt, view = charge_and_its_payment_intent()
    assert payment_intent_mismatch(attempt, view) is None
    assert payment_intent_mismatch(attempt, replace(view, currency="USD")) is None
    attempt.payment_intent_id = None  # not stored yet: matched by what it is, not by id
    assert payment_intent_mismatch(attempt, view) is None


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"id": "pi_other"}, MismatchReason.PAYMENT_INTENT, "is not charge"),
        ({"currency": "eur"}, MismatchReason.CURRENCY, "is in EUR; charge"),
        ({"currency": ""}, MismatchReason.CURRENCY, "is in no currency"),
        ({"amount": 5_001}, MismatchReason.AMOUNT, "is for 5001 (received 5000)"),
        ({"amount_received": 5_001}, MismatchReason.AMOUNT, "is for 5000 USD"),
        ({"customer": "cus_other"}, MismatchReason.CUSTOMER, "belongs to customer cus_other"),
    ],
)
def test_anything_else_is_a_mismatch_naming_the_charge(
    change: dict[str, object], reason: MismatchReason, words: str
) -> None:
    attempt, view = charge_and_its_payment_intent()
    mismatch = payment_intent_mismatch(attempt, replace(view, **change))  # type: ignore[arg-type]
    assert mismatch is not None
    assert mismatch.reason is reason
    assert words in mismatch.message and str(mismatch) == mismatch.message
    assert (mismatch.charge_attempt_id, mismatch.invoice_id) == (attempt.id, 7)


def test_a_charge_without_a_customer_is_not_held_to_one() -> None:
    attempt, view = charge_and_its_payment_intent()
    attempt.stripe_customer_id = None
    assert payment_intent_mismatch(attempt, replace(view, customer="cus_any")) is None
