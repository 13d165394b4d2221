"""What comes in and goes out: stored Stripe events, the audit trail, the outbox, the email log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.domain.models.base import Base, utcnow


class WebhookEvent(Base):
    """A Stripe event as received, stored once per (account, event id) and processed later."""

    __tablename__ = "webhook_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    # '' for the platform account: NULLs would make the unique pair below useless.
    account: Mapped[str] = mapped_column(String(64), default="")
    stripe_event_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(80), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column()
    payment_intent_id: Mapped[str | None] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column()
    processing_attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Why the event was stored already processed, when no worker looked at it for a reason worth
    # telling: "already_recorded" (shared.services.webhook_intake). NULL otherwise.
    processed_reason: Mapped[str | None] = mapped_column(String(40))
    # Set when the event did not match what it would change (shared.services.webhooks, EventFlag): it changed
    # nothing, and the Charges page and /metrics show it.
    flagged_reason: Mapped[str | None] = mapped_column(String(40))
    flagged_message: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("account", "stripe_event_id"),
        Index("ix_webhook_event_unprocessed", "processed_at", "received_at"),
        # The few flagged events, newest first, without reading the many others.
        Index(
            "ix_webhook_event_flagged",
            "flagged_reason",
            "id",
            sqlite_where=text("flagged_reason IS NOT NULL"),
            postgresql_where=text("flagged_reason IS NOT NULL"),
        ),
    )


class AuditEvent(Base):
    """Who did what, when: every admin action and every charge attempt transition."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(254))
    action: Mapped[str] = mapped_column(String(80))
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoice.id"), index=True)
    charge_attempt_id: Mapped[str | None] = mapped_column(ForeignKey("charge_attempt.id"), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxMessage(Base):
    """A task to publish, written in the same transaction as the change it belongs to."""

    __tablename__ = "outbox_message"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_name: Mapped[str] = mapped_column(String(120))
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Not before this time (a delayed retry); None means at once.
    available_at: Mapped[datetime | None] = mapped_column()
    published_at: Mapped[datetime | None] = mapped_column()
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_outbox_message_unpublished", "published_at", "id"),)


class NotificationLog(Base):
    """Every email sent to a client, once per event: the unique key is the 'never two' guarantee."""

    __tablename__ = "notification_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    client_id: Mapped[int | None] = mapped_column(ForeignKey("client.id"), index=True)
    charge_attempt_id: Mapped[str | None] = mapped_column(ForeignKey("charge_attempt.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
