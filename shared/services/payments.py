"""The ledger's writes: a payment a person records (audited), and the card payments and refunds Stripe
reports.

Every payment the ledger holds is written here, refunds Stripe reports included (as negative entries);
an invoice's balance is derived from them every time (shared.domain.ledger).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.domain.binding import Mismatch, MismatchReason
from shared.domain.eligibility import in_flight_attempt
from shared.domain.ledger import check_payment
from shared.domain.models import ChargeAttempt, Invoice, Payment, utcnow
from shared.domain.payments import PaymentIntentView
from shared.services import audit


def record_payment(
    session: Session,
    invoice: Invoice,
    *,
    amount: int,
    method: str,
    recorded_by: str,
    received_at: datetime | None = None,
    reference: str = "",
) -> Payment:
    """Record a manual payment (positive) or a manual refund (negative) on `invoice` (loaded for charging
    and locked by the caller), with its audit entry. Raises LedgerError for what cannot be true, a charge
    in flight counting as already taken."""
    check_payment(invoice, amount=amount, method=method, in_flight_charge=in_flight_attempt(invoice))
    payment = Payment(
        invoice=invoice,
        amount=amount,
        method=method,
        received_at=received_at or utcnow(),
        reference=reference.strip(),
        recorded_by=recorded_by,
    )
    session.add(payment)
    session.flush()  # assign the id and surface constraint errors here, not at commit
    audit.record(
        session, recorded_by, "payment.recorded", invoice_id=invoice.id, amount=payment.amount, method=method
    )
    return payment


def record_card_payment(session: Session, attempt: ChargeAttempt, view: PaymentIntentView) -> bool:
    """One ledger row per succeeded PaymentIntent, whoever reports it first: what Stripe received, which
    apply_outcome has checked is the attempt's currency and no more than its amount."""
    exists = session.scalar(select(Payment.id).where(Payment.stripe_payment_intent_id == view.id))
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            # A plain INSERT (no ORM object, no flush of one): the row is only read by later transactions.
            session.execute(
                insert(Payment).values(
                    invoice_id=attempt.invoice_id,
                    amount=view.amount_received or attempt.amount,
                    method="card",
                    received_at=utcnow(),
                    reference=view.id,
                    charge_attempt_id=attempt.id,
                    stripe_payment_intent_id=view.id,
                    recorded_by="stripe",
                )
            )
    except IntegrityError:
        return False  # recorded by a concurrent reporter a moment ago
    return True


def record_card_refund(
    session: Session, refund: dict[str, Any], pi_id: str, actor: str, account: str | None
) -> bool:
    """A refund of one of our card payments, as a negative ledger entry, once. Raises Mismatch unless it
    refunds a payment of ours on the same account, in its currency, and no more than is left of it."""
    original = session.scalar(select(Payment).where(Payment.stripe_payment_intent_id == pi_id))
    if original is None:
        return False
    if session.scalar(select(Payment.id).where(Payment.stripe_refund_id == refund["id"])) is not None:
        return False
    attempt = session.get(ChargeAttempt, original.charge_attempt_id) if original.charge_attempt_id else None
    if attempt is None:
        raise Mismatch(
            MismatchReason.REFUND, f"Refund {refund['id']}: payment {pi_id} is not a charge of ours."
        )
    if (account or None) != (attempt.stripe_account_id or None):
        raise Mismatch(
            MismatchReason.ACCOUNT,
            f"Refund {refund['id']} comes from account {account or 'platform'}; charge {attempt.id} was "
            f"made on {attempt.stripe_account_id or 'the platform account'}.",
            attempt=attempt,
        )
    currency = str(refund.get("currency") or "").lower()
    if currency != attempt.currency:
        raise Mismatch(
            MismatchReason.CURRENCY,
            f"Refund {refund['id']} is in {currency.upper() or 'no currency'}; charge {attempt.id} is in "
            f"{attempt.currency.upper()}.",
            attempt=attempt,
        )
    amount = refund.get("amount")
    refunded = -(
        session.scalar(
            select(func.coalesce(func.sum(Payment.amount), 0)).where(
                Payment.charge_attempt_id == attempt.id, Payment.stripe_refund_id.is_not(None)
            )
        )
        or 0
    )
    if (
        isinstance(amount, bool)
        or not isinstance(amount, int)
        or amount <= 0
        or refunded + amount > original.amount
    ):
        raise Mismatch(
            MismatchReason.AMOUNT,
            f"Refund {refund['id']} of {amount!r} would take back more than the {original.amount - refunded} "
            f"{attempt.currency.upper()} left of payment {pi_id}.",
            attempt=attempt,
        )
    try:
        with session.begin_nested():
            session.add(
                Payment(
                    invoice_id=original.invoice_id,
                    amount=-amount,
                    method="card",
                    received_at=utcnow(),
                    reference=f"Refund {refund['id']} of {pi_id}",
                    charge_attempt_id=original.charge_attempt_id,
                    stripe_refund_id=refund["id"],
                    recorded_by="stripe",
                )
            )
    except IntegrityError:
        return False
    audit.record(
        session,
        actor,
        "payment.refunded",
        invoice_id=original.invoice_id,
        charge_attempt_id=original.charge_attempt_id,
        refund_id=refund["id"],
        amount=amount,
    )
    return True
