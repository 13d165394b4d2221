"""Whether what Stripe reports belongs to the charge it would change.

An event, a PaymentIntent or a refund changes a charge attempt only when it is the attempt's own: its
mode and account, its PaymentIntent, customer, currency and amount. What does not match raises Mismatch
and changes nothing (shared.services.charging.apply_outcome, shared.services.webhooks), so that a leaked
signing secret,
another account's event or a PaymentIntent that merely copies our metadata can never credit the ledger.
"""

from __future__ import annotations

from enum import StrEnum

from shared.domain.models import ChargeAttempt
from shared.domain.payments import PaymentIntentView


class MismatchReason(StrEnum):
    """Why something Stripe reported was not applied (a label of /metrics, words on the Charges page)."""

    LIVEMODE = "livemode_mismatch"
    ACCOUNT = "account_mismatch"
    PAYMENT_INTENT = "payment_intent_mismatch"
    CUSTOMER = "customer_mismatch"
    CURRENCY = "currency_mismatch"
    AMOUNT = "amount_mismatch"
    REFUND = "refund_mismatch"


class Mismatch(Exception):
    """What Stripe reports (an event, a PaymentIntent, a refund) does not belong to the charge it would
    change: another PaymentIntent, account, mode, customer, currency or amount. It changes nothing; the
    caller flags it for a person."""

    def __init__(self, reason: MismatchReason, message: str, *, attempt: ChargeAttempt | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.charge_attempt_id = attempt.id if attempt is not None else None
        self.invoice_id = attempt.invoice_id if attempt is not None else None


def payment_intent_mismatch(attempt: ChargeAttempt, view: PaymentIntentView) -> Mismatch | None:
    """Why this PaymentIntent is not the attempt's to apply, or None when it is: its own PaymentIntent
    (once known), for the attempt's customer, in its currency, for its amount and no more."""
    if attempt.payment_intent_id is not None and view.id != attempt.payment_intent_id:
        return Mismatch(
            MismatchReason.PAYMENT_INTENT,
            f"PaymentIntent {view.id} is not charge {attempt.id}'s ({attempt.payment_intent_id}).",
            attempt=attempt,
        )
    if view.currency.lower() != attempt.currency:
        return Mismatch(
            MismatchReason.CURRENCY,
            f"PaymentIntent {view.id} is in {view.currency.upper() or 'no currency'}; charge {attempt.id} "
            f"is in {attempt.currency.upper()}.",
            attempt=attempt,
        )
    if view.amount != attempt.amount or view.amount_received > attempt.amount:
        return Mismatch(
            MismatchReason.AMOUNT,
            f"PaymentIntent {view.id} is for {view.amount} (received {view.amount_received}); charge "
            f"{attempt.id} is for {attempt.amount} {attempt.currency.upper()}.",
            attempt=attempt,
        )
    if attempt.stripe_customer_id is not None and view.customer != attempt.stripe_customer_id:
        return Mismatch(
            MismatchReason.CUSTOMER,
            f"PaymentIntent {view.id} belongs to customer {view.customer}; charge {attempt.id} to "
            f"{attempt.stripe_customer_id}.",
            attempt=attempt,
        )
    return None
