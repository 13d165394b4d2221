"""Refunds and disputes: Stripe's states, which move may follow which, and how much of a card payment
may still be refunded.

Refund states are Stripe's (docs.stripe.com/api/refunds/object: pending, requires_action, succeeded,
failed, canceled). A card refund that succeeded may still fail later (the card was closed): Stripe then
reports it failed and gives the money back to the balance, so `failed` may follow `succeeded`.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from shared.domain.money import format_money


class RefundStatus(StrEnum):
    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


# Stripe's refund create `reason` enum (RefundCreateParams["reason"]).
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
REFUND_SOURCES = ("admin", "stripe")
# A refund in one of these holds its amount: it is, or may still become, money given back.
HOLDS_AMOUNT = frozenset({RefundStatus.PENDING, RefundStatus.REQUIRES_ACTION, RefundStatus.SUCCEEDED})
FINAL = frozenset({RefundStatus.FAILED, RefundStatus.CANCELED})
# How far along a refund is: news of a lower rank is stale and changes nothing.
_RANK = {
    RefundStatus.PENDING: 0,
    RefundStatus.REQUIRES_ACTION: 0,
    RefundStatus.SUCCEEDED: 1,
    RefundStatus.FAILED: 2,
    RefundStatus.CANCELED: 2,
}

# Stripe's Dispute.status values (docs.stripe.com/api/disputes/object).
DISPUTE_STATUSES = (
    "warning_needs_response",
    "warning_under_review",
    "warning_closed",
    "needs_response",
    "under_review",
    "won",
    "lost",
    "prevented",
)
OPEN_DISPUTE_STATUSES = frozenset(
    {"warning_needs_response", "warning_under_review", "needs_response", "under_review"}
)
DISPUTE_REASON_WORDS = {
    "bank_cannot_process": "the bank cannot process it",
    "check_returned": "cheque returned",
    "credit_not_processed": "credit not processed",
    "customer_initiated": "customer initiated",
    "debit_not_authorized": "debit not authorized",
    "duplicate": "duplicate",
    "fraudulent": "fraudulent",
    "general": "general",
    "incorrect_account_details": "incorrect account details",
    "insufficient_funds": "insufficient funds",
    "noncompliant": "noncompliant",
    "product_not_received": "product not received",
    "product_unacceptable": "product unacceptable",
    "subscription_canceled": "subscription canceled",
    "unrecognized": "unrecognized",
}


class RefundRefused(Exception):
    """The refund cannot be made (HTTP 409 / a form error): `code` and words for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def refund_status(value: str | None) -> RefundStatus | None:
    try:
        return RefundStatus(value or "")
    except ValueError:
        return None


def refund_move(current: str, reported: RefundStatus) -> RefundStatus | None:
    """The status a refund moves to when Stripe reports `reported`, or None when that is no news (the
    same, or older than what is known)."""
    now = RefundStatus(current)
    if reported is now:
        return None
    if now in FINAL or _RANK[reported] < _RANK[now]:
        return None
    return reported


def refundable(charged: int, refunds: Iterable[tuple[str, int]]) -> int:
    """What remains refundable of a card payment of `charged`, given its refunds' (status, amount)."""
    held = sum(amount for status, amount in refunds if RefundStatus(status) in HOLDS_AMOUNT)
    return max(charged - held, 0)


def check_refund_amount(amount: int | None, remaining: int, currency: str) -> int:
    """The amount to refund: all that remains (None) or a part of it. Raises RefundRefused."""
    if remaining <= 0:
        raise RefundRefused("nothing_refundable", "Nothing remains to refund on this charge.")
    if amount is None:
        return remaining
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise RefundRefused(
            "invalid_amount", "amount must be a whole number of minor units (1000 is $10.00)."
        )
    if amount <= 0:
        raise RefundRefused("invalid_amount", "amount must be positive.")
    if amount > remaining:
        raise RefundRefused(
            "amount_too_large",
            f"{format_money(amount, currency)} is more than the {format_money(remaining, currency)} that "
            "remains refundable on this charge.",
        )
    return amount


def refund_idempotency_key(refund_id: str) -> str:
    return f"offsession:refund:{refund_id}"
