"""Refunds and disputes of card payments, as the product tracks them beside the ledger.

A Refund row is the intent: written, with its idempotency key, before Stripe is asked (the admin's
Refund button, the API), or when Stripe reports a refund made elsewhere (the dashboard). Its status is
Stripe's (shared.domain.refunds); the ledger gets the negative entry when it succeeds and, when a
succeeded refund later fails, the entry that gives it back. A Dispute row is Stripe's dispute as last
reported, with the ledger entries its funds movements made.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.domain.models.base import Base, in_list, new_uuid, utcnow
from shared.domain.models.billing import ChargeAttempt, Invoice
from shared.domain.refunds import DISPUTE_STATUSES, REFUND_REASONS, REFUND_SOURCES, RefundStatus

# A refund not yet known to Stripe: the one per charge the database lets exist at a time.
REFUND_BEING_CREATED_SQL = "stripe_refund_id IS NULL AND status = 'pending'"


class Refund(Base):
    """One refund of a card charge, from intent to Stripe's final word."""

    __tablename__ = "refund"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoice.id"), index=True)
    charge_attempt_id: Mapped[str] = mapped_column(ForeignKey("charge_attempt.id"), index=True)
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(32))
    # "admin" (asked here, by `requested_by`) or "stripe" (made elsewhere, reported by a webhook).
    source: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str] = mapped_column(String(254), default="")
    status: Mapped[str] = mapped_column(String(20), default=RefundStatus.PENDING.value)
    # None for a refund Stripe reported (it was created under a key that is not ours).
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # Resolved when the refund is requested, so every replay sends byte-identical parameters.
    payment_intent_id: Mapped[str] = mapped_column(String(64))
    stripe_account_id: Mapped[str | None] = mapped_column(String(64))
    stripe_refund_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # Transient failures of the create call so far (the worker retries under the same key).
    tries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # The ledger entries this refund made: taken back when it succeeded, given back when it then failed.
    ledger_payment_id: Mapped[int | None] = mapped_column(ForeignKey("payment.id"), unique=True)
    reversal_payment_id: Mapped[int | None] = mapped_column(ForeignKey("payment.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    invoice: Mapped[Invoice] = relationship()
    charge_attempt: Mapped[ChargeAttempt] = relationship()

    __table_args__ = (
        # Two clicks at once make one refund: a second refund of a charge cannot be opened while one is
        # on its way to Stripe.
        Index(
            "uq_refund_one_being_created_per_charge",
            "charge_attempt_id",
            unique=True,
            sqlite_where=text(REFUND_BEING_CREATED_SQL),
            postgresql_where=text(REFUND_BEING_CREATED_SQL),
        ),
        Index("ix_refund_status_updated_at", "status", "updated_at"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(
            f"status IN ({in_list(frozenset(s.value for s in RefundStatus))})", name="status_known"
        ),
        CheckConstraint(f"source IN ({in_list(REFUND_SOURCES)})", name="source_known"),
        CheckConstraint(f"reason IS NULL OR reason IN ({in_list(REFUND_REASONS)})", name="reason_known"),
    )


class Dispute(Base):
    """A cardholder's dispute of one of our card charges, as Stripe last reported it."""

    __tablename__ = "dispute"

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_dispute_id: Mapped[str] = mapped_column(String(64), unique=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoice.id"), index=True)
    charge_attempt_id: Mapped[str] = mapped_column(ForeignKey("charge_attempt.id"), index=True)
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    evidence_due_by: Mapped[datetime | None] = mapped_column()
    # Stripe's `created` of the newest event applied: an older one changes nothing.
    stripe_updated: Mapped[int] = mapped_column(Integer, default=0)
    withdrawal_payment_id: Mapped[int | None] = mapped_column(ForeignKey("payment.id"), unique=True)
    reinstatement_payment_id: Mapped[int | None] = mapped_column(ForeignKey("payment.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    invoice: Mapped[Invoice] = relationship(back_populates="disputes")

    __table_args__ = (
        Index("ix_dispute_status", "status"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        CheckConstraint(f"status IN ({in_list(DISPUTE_STATUSES)})", name="status_known"),
    )
