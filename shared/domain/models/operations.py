"""The schedule and the checks: batch runs, dunning state, daily reconciliation runs and findings."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.domain.models.base import Base, in_list, utcnow
from shared.domain.models.billing import Client


class BatchRun(Base):
    """One fan-out of due invoices: what was selected, queued and skipped (with why).

    How the queued charges settled is counted from their attempts (batch_run_id), never stored twice.
    The slot is unique: a second beat, or a restarted one, firing for the same slot charges nothing.
    """

    __tablename__ = "batch_run"

    id: Mapped[int] = mapped_column(primary_key=True)
    slot: Mapped[str] = mapped_column(String(80), unique=True)
    trigger: Mapped[str] = mapped_column(String(20))
    due_on: Mapped[date] = mapped_column(Date)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    selection_finished_at: Mapped[datetime | None] = mapped_column()
    selected: Mapped[int] = mapped_column(Integer, default=0)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    skipped_reasons: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DunningState(Base):
    """Where an invoice stands after automatic charges were declined (shared.services.dunning)."""

    __tablename__ = "dunning_state"

    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoice.id"), primary_key=True)
    first_failure_at: Mapped[datetime] = mapped_column()
    failures: Mapped[int] = mapped_column(Integer, default=0)
    decline_class: Mapped[str] = mapped_column(String(10))
    last_attempt_id: Mapped[str | None] = mapped_column(ForeignKey("charge_attempt.id"))
    # When the next automatic attempt opens; None: no more automatic attempts until the card changes.
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    attempts_left: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


RECONCILIATION_FINDING_KINDS = ("orphan", "repaired", "missing")


class ReconciliationRun(Base):
    """The daily reconciliation of one Stripe account's day (shared.services.daily_reconciliation).

    One row per (account, day): a re-run updates its counts and times, and its findings are never
    recorded twice (see ReconciliationFinding).
    """

    __tablename__ = "reconciliation_run"

    id: Mapped[int] = mapped_column(primary_key=True)
    # '' for the platform account, as in webhook_event: NULLs would make the unique pair useless.
    stripe_account: Mapped[str] = mapped_column(String(64), default="")
    day: Mapped[date] = mapped_column(Date)
    trigger: Mapped[str] = mapped_column(String(20))
    runs: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    listed: Mapped[int] = mapped_column(Integer, default=0)
    matched: Mapped[int] = mapped_column(Integer, default=0)
    repaired: Mapped[int] = mapped_column(Integer, default=0)
    orphans: Mapped[int] = mapped_column(Integer, default=0)
    missing: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("stripe_account", "day"),
        Index("ix_reconciliation_run_day", "day"),
    )


class ReconciliationFinding(Base):
    """A disagreement between Stripe and our records, found by the daily reconciliation.

    orphan: money moved at Stripe that nothing of ours knows; repaired: an attempt whose status
    disagreed with Stripe's and was settled from it; missing: a ledger card payment of the day whose
    PaymentIntent Stripe does not list. Unique per (account, PaymentIntent, kind): recorded once.
    """

    __tablename__ = "reconciliation_finding"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("reconciliation_run.id"), index=True)
    stripe_account: Mapped[str] = mapped_column(String(64), default="")
    payment_intent_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))
    stripe_status: Mapped[str] = mapped_column(String(40), default="")
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64))
    client_id: Mapped[int | None] = mapped_column(ForeignKey("client.id"), index=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoice.id"), index=True)
    charge_attempt_id: Mapped[str | None] = mapped_column(ForeignKey("charge_attempt.id"))
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payment.id"))
    detail: Mapped[str] = mapped_column(Text, default="")
    payment_intent_created_at: Mapped[datetime | None] = mapped_column()
    found_at: Mapped[datetime] = mapped_column(default=utcnow)

    client: Mapped[Client | None] = relationship()

    __table_args__ = (
        UniqueConstraint(
            "stripe_account", "payment_intent_id", "kind", name="uq_reconciliation_finding_once"
        ),
        CheckConstraint(f"kind IN ({in_list(RECONCILIATION_FINDING_KINDS)})", name="kind_known"),
    )
