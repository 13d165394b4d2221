"""The ledger's writes: a payment a person records (audited), and the card payments and refunds Stripe
reports.

Every payment the ledger holds is written here, refunds Stripe reports included (as negative entries);
an invoice's balance is derived from them every time (shared.domain.ledger).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.domain.eligibility import in_flight_attempt
from shared.domain.ledger import check_payment
from shared.domain.models import ChargeAttempt, Invoice, Payment, table_of, utcnow
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


# Built once, the values bound at each call (composing a statement costs about as much CPU as running it).
_PAYMENT_OF_INTENT = select(Payment.id).where(
    Payment.stripe_payment_intent_id == bindparam("payment_intent_id")
)
_INSERT_PAYMENT = insert(table_of(Payment))


def record_card_payment(session: Session, attempt: ChargeAttempt, view: PaymentIntentView) -> bool:
    """One ledger row per succeeded PaymentIntent, whoever reports it first: what Stripe received, which
    apply_outcome has checked is the attempt's currency and no more than its amount."""
    exists = session.scalar(_PAYMENT_OF_INTENT, {"payment_intent_id": view.id})
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            # A plain INSERT (no ORM object, no flush of one): the row is only read by later transactions.
            session.execute(
                _INSERT_PAYMENT,
                {
                    "invoice_id": attempt.invoice_id,
                    "amount": view.amount_received or attempt.amount,
                    "method": "card",
                    "received_at": utcnow(),
                    "reference": view.id,
                    "charge_attempt_id": attempt.id,
                    "stripe_payment_intent_id": view.id,
                    "recorded_by": "stripe",
                },
            )
    except IntegrityError:
        return False  # recorded by a concurrent reporter a moment ago
    return True
