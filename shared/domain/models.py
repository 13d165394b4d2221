"""SQLAlchemy 2 models: the records every layer reads (docs/architecture.md says why they live here).

Amounts are integers in minor units; times are UTC. Derived values (amount paid, amount due, the
invoice status) are computed from the ledger in shared.domain.ledger, never stored twice.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.domain.states import IN_FLIGHT, AttemptStatus

# Constraint names are fixed so that migrations on SQLite (batch mode) and PostgreSQL agree.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

INVOICE_PAYMENT_METHODS = ("online_card", "bank_transfer", "cash", "cheque", "other")
LEDGER_METHODS = ("card", "cash", "bank_transfer", "cheque", "other")
ATTEMPT_SOURCES = ("admin", "schedule", "client")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in_list(values: tuple[str, ...] | frozenset[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


IN_FLIGHT_SQL = f"status IN ({_in_list(frozenset(s.value for s in IN_FLIGHT))})"


def table_of(model: type[Base]) -> Table:
    """The Core Table of a mapped class: for the plain INSERTs and UPDATEs of the hot paths, which skip
    the ORM's unit of work."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Settings(Base):
    """One row (id 1): whether Stripe is connected and whether online card payments are on."""

    __tablename__ = "settings"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False, default=1)
    stripe_connected: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # None means the platform account itself; otherwise the connected account sent as Stripe-Account.
    stripe_account_id: Mapped[str | None] = mapped_column(String(64))
    online_card_payments_enabled: Mapped[bool] = mapped_column(
        Boolean, default=True, server_default=text("true")
    )
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class AdminUser(Base):
    __tablename__ = "admin_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # In every session cookie of this admin: signing out or a new password moves it on, and every
    # cookie carrying an older one (a copy included) stops working (web.pages).
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Client(Base):
    __tablename__ = "client"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Stored normalized (shared.services.admins.normalize_email) and unique: the sign-in link finds one
    # client.
    email: Mapped[str] = mapped_column(String(254), index=True, unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # As AdminUser.session_version: signing out ends every Client Zone session of this client.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    cards: Mapped[list[Card]] = relationship(
        back_populates="client", order_by="Card.id", cascade="all, delete-orphan"
    )
    invoices: Mapped[list[Invoice]] = relationship(back_populates="client")

    # Substring search by name (ILIKE '%...%') on PostgreSQL through trigrams (pg_trgm).
    __table_args__ = (
        Index("ix_client_name_trgm", "name", postgresql_using="gin", postgresql_ops={"name": "gin_trgm_ops"}),
    )

    @property
    def default_card(self) -> Card | None:
        return next((card for card in self.cards if card.is_default), None)


class Card(Base):
    """A saved card: Stripe's PaymentMethod id and what may be shown. Never a card number."""

    __tablename__ = "card"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"), index=True)
    stripe_payment_method_id: Mapped[str] = mapped_column(String(64), unique=True)
    brand: Mapped[str] = mapped_column(String(32))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int] = mapped_column(Integer)
    exp_year: Mapped[int] = mapped_column(Integer)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    client: Mapped[Client] = relationship(back_populates="cards")

    __table_args__ = (
        # At most one default card per client, enforced by the database.
        Index(
            "uq_card_one_default_per_client",
            "client_id",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
        CheckConstraint("length(last4) = 4", name="last4_length"),
        CheckConstraint("exp_month BETWEEN 1 AND 12", name="exp_month_range"),
    )


class Invoice(Base):
    __tablename__ = "invoice"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("client.id"))
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[int] = mapped_column(Integer)
    due_date: Mapped[date] = mapped_column(Date)
    payment_method: Mapped[str] = mapped_column(String(20), default="online_card")
    auto_charge: Mapped[bool] = mapped_column(Boolean, default=False)
    is_void: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    client: Mapped[Client] = relationship(back_populates="invoices")
    payments: Mapped[list[Payment]] = relationship(
        back_populates="invoice", order_by="Payment.received_at, Payment.id"
    )
    charge_attempts: Mapped[list[ChargeAttempt]] = relationship(
        back_populates="invoice", order_by="ChargeAttempt.created_at"
    )

    __table_args__ = (
        CheckConstraint("total > 0", name="total_positive"),
        CheckConstraint(
            f"payment_method IN ({_in_list(INVOICE_PAYMENT_METHODS)})", name="payment_method_known"
        ),
        CheckConstraint("currency = lower(currency) AND length(currency) = 3", name="currency_iso"),
        # The due-invoice selection of the batch walks this index page by page.
        Index("ix_invoice_auto_charge_due", "auto_charge", "due_date", "id"),
        # The batch walks only what it may charge, by id; due date and total come from the index itself.
        Index(
            "ix_invoice_chargeable_id",
            "id",
            "due_date",
            "total",
            sqlite_where=text("auto_charge AND NOT is_void"),
            postgresql_where=text("auto_charge AND NOT is_void"),
        ),
        # The admin list's order (newest due date first): a page is read off the index, not sorted.
        Index("ix_invoice_due_date_id", "due_date", "id"),
        # A client's invoices in that order (Client Zone, search by client name), off the index alone.
        Index("ix_invoice_client_id_due_date", "client_id", "due_date", "id"),
        # Substring search by number (ILIKE '%...%') on PostgreSQL through trigrams (pg_trgm).
        Index(
            "ix_invoice_number_trgm",
            "number",
            postgresql_using="gin",
            postgresql_ops={"number": "gin_trgm_ops"},
        ),
    )


class Payment(Base):
    """One ledger entry: money received (positive) or refunded (negative), by any method."""

    __tablename__ = "payment"

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoice.id"))
    amount: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(20))
    received_at: Mapped[datetime] = mapped_column()
    reference: Mapped[str] = mapped_column(String(200), default="")
    charge_attempt_id: Mapped[str | None] = mapped_column(ForeignKey("charge_attempt.id"), index=True)
    # Recorded once: a PaymentIntent or a refund can enter the ledger a single time, whoever reports it.
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    stripe_refund_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    recorded_by: Mapped[str] = mapped_column(String(254), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    invoice: Mapped[Invoice] = relationship(back_populates="payments")
    charge_attempt: Mapped[ChargeAttempt | None] = relationship()

    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_nonzero"),
        CheckConstraint(f"method IN ({_in_list(LEDGER_METHODS)})", name="method_known"),
        # An invoice's payments, and with the amount beside the id its balance, off the index alone.
        Index("ix_payment_invoice_id_amount", "invoice_id", "amount"),
    )


class ChargeAttempt(Base):
    """One try at charging an invoice's card, from intent (queued) to its final state."""

    __tablename__ = "charge_attempt"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoice.id"), index=True)
    amount: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    source: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str] = mapped_column(String(254), default="")
    status: Mapped[str] = mapped_column(String(20), default=AttemptStatus.QUEUED.value)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    # Resolved once when the attempt opens, so every retry sends byte-identical parameters.
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64))
    payment_method_id: Mapped[str | None] = mapped_column(String(64))
    stripe_account_id: Mapped[str | None] = mapped_column(String(64))
    payment_intent_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    failure_code: Mapped[str | None] = mapped_column(String(64))
    decline_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(Text)
    advice_code: Mapped[str | None] = mapped_column(String(64))
    network_advice_code: Mapped[str | None] = mapped_column(String(8))
    batch_run_id: Mapped[int | None] = mapped_column(ForeignKey("batch_run.id"), index=True)
    transient_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The worker process holding a processing attempt, and until when unless it renews
    # (shared.services.leases).
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    next_retry_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

    invoice: Mapped[Invoice] = relationship(back_populates="charge_attempts")

    @property
    def status_enum(self) -> AttemptStatus:
        return AttemptStatus(self.status)

    __table_args__ = (
        # The rule that matters most: at most one attempt per invoice that is not yet final.
        Index(
            "uq_charge_attempt_one_in_flight_per_invoice",
            "invoice_id",
            unique=True,
            sqlite_where=text(IN_FLIGHT_SQL),
            postgresql_where=text(IN_FLIGHT_SQL),
        ),
        Index("ix_charge_attempt_status_updated_at", "status", "updated_at"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(f"source IN ({_in_list(ATTEMPT_SOURCES)})", name="source_known"),
        CheckConstraint(
            f"status IN ({_in_list(frozenset(s.value for s in AttemptStatus))})", name="status_known"
        ),
    )


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


class ApiIdempotencyRecord(Base):
    """The answer first given to an API request carrying an Idempotency-Key, replayed on repeats."""

    __tablename__ = "api_idempotency_record"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    # method, path and body: a key reused for a different request is refused, as Stripe does.
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RateLimitState(Base):
    """The shared Stripe rate budget of one account when REDIS_URL is unset (shared.adapters.rate_budget)."""

    __tablename__ = "rate_limit_state"

    # The Stripe-Account id, or 'platform' for the platform account itself.
    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    # GCRA theoretical arrival time in seconds since the epoch; a double keeps microseconds.
    tat: Mapped[float] = mapped_column()


LINK_PURPOSES = ("sign_in", "update_card", "authenticate")


class ClientLoginToken(Base):
    """An emailed Client Zone link, kept as a hash: single use, short-lived, scoped to its purpose
    (shared.services.client_links). The newest link of a kind (client, purpose, subject) revokes the older
    ones."""

    __tablename__ = "client_login_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(20), default="sign_in", server_default=text("'sign_in'"))
    # What the link is for beyond its client: the charge attempt to authenticate.
    subject_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (CheckConstraint(f"purpose IN ({_in_list(LINK_PURPOSES)})", name="purpose_known"),)


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


class LoginAttempt(Base):
    """One counted sign-in event (a failed admin password, an emailed sign-in link) of the login
    throttle (shared.services.login_throttle). `key` is a hash of the limit and who it counts (email,
    IP), so no address is kept here; rows older than the longest window are pruned as new ones come in."""

    __tablename__ = "login_attempt"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(80))
    at: Mapped[datetime] = mapped_column(index=True)

    __table_args__ = (Index("ix_login_attempt_key_at", "key", "at"),)


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
        CheckConstraint(f"kind IN ({_in_list(RECONCILIATION_FINDING_KINDS)})", name="kind_known"),
    )
