"""The money records: settings, clients and their cards, invoices, the ledger (payments) and charge
attempts. Amounts are integers in minor units; derived values are computed in shared.domain.ledger."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.domain.models.base import (
    ATTEMPT_SOURCES,
    IN_FLIGHT_SQL,
    INVOICE_PAYMENT_METHODS,
    LEDGER_METHODS,
    Base,
    in_list,
    new_uuid,
    utcnow,
)
from shared.domain.states import AttemptStatus

if TYPE_CHECKING:
    from shared.domain.models.refunds import Dispute

# How the business reaches Stripe: its own key (STRIPE_API_KEY), or Connect OAuth (a platform's key
# acting for the connected account).
CONNECTION_METHODS = ("api_key", "oauth")


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
    # What Stripe answered the last time the connection was verified (GET /v1/account); all None until
    # then. `stripe_verified_account_id` is where charges go: the key's own account, or the connected one.
    stripe_connection_method: Mapped[str | None] = mapped_column(String(16))  # api_key / oauth
    stripe_verified_account_id: Mapped[str | None] = mapped_column(String(64))
    stripe_account_name: Mapped[str | None] = mapped_column(String(200))
    stripe_livemode: Mapped[bool | None] = mapped_column(Boolean)
    stripe_charges_enabled: Mapped[bool | None] = mapped_column(Boolean)
    stripe_verified_at: Mapped[datetime | None] = mapped_column()
    # Why charges are blocked although an admin connected (Stripe refused the key or the account, the
    # account was deauthorized): a shared.domain.eligibility.BlockerCode value and the words shown.
    stripe_problem_code: Mapped[str | None] = mapped_column(String(40))
    stripe_problem: Mapped[str | None] = mapped_column(String(500))
    # The webhook endpoint Connect registered, and its signing secret encrypted with a key derived from
    # SECRET_KEY (shared.adapters.secret_box); never the secret in clear.
    webhook_endpoint_id: Mapped[str | None] = mapped_column(String(64))
    webhook_secret_encrypted: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    @property
    def verified_place(self) -> tuple[str, bool] | None:
        """(account id, livemode) where charges go now: None unless a verification succeeded."""
        if self.stripe_verified_account_id is None or self.stripe_livemode is None:
            return None
        return self.stripe_verified_account_id, self.stripe_livemode


class Client(Base):
    __tablename__ = "client"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Stored normalized (shared.services.admins.normalize_email) and unique: the sign-in link finds one
    # client.
    email: Mapped[str] = mapped_column(String(254), index=True, unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Where that customer lives: a customer exists in one Stripe account and one mode. A client whose
    # customer lives elsewhere gets a new one where the connection is when a card is next saved.
    stripe_customer_account_id: Mapped[str | None] = mapped_column(String(64))
    stripe_customer_livemode: Mapped[bool | None] = mapped_column(Boolean)
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
    # Stripe's fingerprint of the card number (None for cards saved before it was kept): the same card
    # saved again through Checkout is recognised and not stored twice.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Where the card lives: the Stripe account and mode it was saved in, and the customer it is attached
    # to there. A card is charged only where the connection charges (shared.domain.eligibility).
    stripe_account_id: Mapped[str | None] = mapped_column(String(64))
    livemode: Mapped[bool | None] = mapped_column(Boolean)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64))

    client: Mapped[Client] = relationship(back_populates="cards")

    def lives_at(self, place: tuple[str, bool]) -> bool:
        return (self.stripe_account_id, self.livemode) == place

    __table_args__ = (
        # At most one default card per client, enforced by the database.
        Index(
            "uq_card_one_default_per_client",
            "client_id",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
        # A card (by its fingerprint) is saved once per client in each account and mode, enforced by the
        # database (saved again under another account, it is another PaymentMethod there).
        Index(
            "uq_card_fingerprint_per_client",
            "client_id",
            "fingerprint",
            "stripe_account_id",
            "livemode",
            unique=True,
            sqlite_where=text("fingerprint IS NOT NULL"),
            postgresql_where=text("fingerprint IS NOT NULL"),
        ),
        CheckConstraint("length(last4) = 4", name="last4_length"),
        CheckConstraint("exp_month BETWEEN 1 AND 12", name="exp_month_range"),
    )


# An invoice with money left to collect: not void, its ledger short of its total.
OUTSTANDING_SQL = "NOT is_void AND ledger_sum < total"


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
    # The sum of the invoice's ledger entries (payments less refunds), kept by the database itself:
    # triggers on payment (migration 0015) add each entry written, whoever writes it. Never set by the
    # application; an instance loaded before a payment was written holds a stale value (read balances
    # with shared.domain.ledger, this is for the aggregates that must not read every payment).
    ledger_sum: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    client: Mapped[Client] = relationship(back_populates="invoices")
    payments: Mapped[list[Payment]] = relationship(
        back_populates="invoice", order_by="Payment.received_at, Payment.id"
    )
    charge_attempts: Mapped[list[ChargeAttempt]] = relationship(
        back_populates="invoice", order_by="ChargeAttempt.created_at"
    )
    # Its card payments' disputes: an open one blocks charging the card again (eligibility).
    disputes: Mapped[list[Dispute]] = relationship(back_populates="invoice", order_by="Dispute.id")

    __table_args__ = (
        CheckConstraint("total > 0", name="total_positive"),
        CheckConstraint(
            f"payment_method IN ({in_list(INVOICE_PAYMENT_METHODS)})", name="payment_method_known"
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
        # The dashboard's due and overdue money: the unvoided invoices by id beside their ledger sums.
        Index(
            "ix_invoice_not_void_id",
            "id",
            "due_date",
            "total",
            "auto_charge",
            "currency",
            sqlite_where=text("NOT is_void"),
            postgresql_where=text("NOT is_void"),
        ),
        # The dashboard's due and overdue money: only the invoices with something left to pay (a paid
        # invoice leaves this index when its last payment is written), by due date.
        Index(
            "ix_invoice_outstanding_due",
            "due_date",
            "auto_charge",
            "currency",
            "total",
            "ledger_sum",
            sqlite_where=text(OUTSTANDING_SQL),
            postgresql_where=text(OUTSTANDING_SQL),
        ),
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
    # The invoice's currency, copied by the database when the entry is written (triggers of migration
    # 0016), so money collected per currency is read off one index without joining every invoice.
    # Never set by the application (an instance just written holds None until reloaded).
    currency: Mapped[str | None] = mapped_column(String(3))

    invoice: Mapped[Invoice] = relationship(back_populates="payments")
    charge_attempt: Mapped[ChargeAttempt | None] = relationship()

    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_nonzero"),
        CheckConstraint(f"method IN ({in_list(LEDGER_METHODS)})", name="method_known"),
        # An invoice's payments, and with the amount beside the id its balance, off the index alone.
        Index("ix_payment_invoice_id_amount", "invoice_id", "amount"),
        # The dashboard's money collected since a day: a range of the latest payments.
        Index("ix_payment_received_at", "received_at", "invoice_id", "amount"),
        # ... per currency, off this index alone (the dashboard's Collected).
        Index("ix_payment_received_at_currency", "received_at", "currency", "amount"),
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
        CheckConstraint(f"source IN ({in_list(ATTEMPT_SOURCES)})", name="source_known"),
        CheckConstraint(
            f"status IN ({in_list(frozenset(s.value for s in AttemptStatus))})", name="status_known"
        ),
    )
