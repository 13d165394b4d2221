"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Every entity of shared/domain/models.py, with the partial unique index that allows at most one charge attempt in
flight per invoice, and the single settings row (a fresh database is not connected to Stripe).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.domain.models

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admin_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_user")),
        sa.UniqueConstraint("email", name=op.f("uq_admin_user_email")),
    )
    op.create_table(
        "client",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_client_stripe_customer_id")),
    )
    with op.batch_alter_table("client", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_client_email"), ["email"], unique=False)

    op.create_table(
        "outbox_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_name", sa.String(length=120), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("available_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("published_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("publish_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_message")),
    )
    with op.batch_alter_table("outbox_message", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_message_unpublished", ["published_at", "id"], unique=False)

    op.create_table(
        "settings",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("stripe_connected", sa.Boolean(), server_default=sa.text("(false)"), nullable=False),
        sa.Column("stripe_account_id", sa.String(length=64), nullable=True),
        sa.Column(
            "online_card_payments_enabled", sa.Boolean(), server_default=sa.text("(true)"), nullable=False
        ),
        sa.Column("updated_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_settings_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settings")),
    )
    op.create_table(
        "webhook_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("stripe_event_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=80), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=64), nullable=True),
        sa.Column("received_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("processed_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("processing_attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_event")),
        sa.UniqueConstraint(
            "account", "stripe_event_id", name=op.f("uq_webhook_event_account_stripe_event_id")
        ),
    )
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_webhook_event_payment_intent_id"), ["payment_intent_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_webhook_event_type"), ["type"], unique=False)
        batch_op.create_index("ix_webhook_event_unprocessed", ["processed_at", "received_at"], unique=False)

    op.create_table(
        "card",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("stripe_payment_method_id", sa.String(length=64), nullable=False),
        sa.Column("brand", sa.String(length=32), nullable=False),
        sa.Column("last4", sa.String(length=4), nullable=False),
        sa.Column("exp_month", sa.Integer(), nullable=False),
        sa.Column("exp_year", sa.Integer(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("exp_month BETWEEN 1 AND 12", name=op.f("ck_card_exp_month_range")),
        sa.CheckConstraint("length(last4) = 4", name=op.f("ck_card_last4_length")),
        sa.ForeignKeyConstraint(
            ["client_id"], ["client.id"], name=op.f("fk_card_client_id_client"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card")),
        sa.UniqueConstraint("stripe_payment_method_id", name=op.f("uq_card_stripe_payment_method_id")),
    )
    with op.batch_alter_table("card", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_card_client_id"), ["client_id"], unique=False)
        batch_op.create_index(
            "uq_card_one_default_per_client",
            ["client_id"],
            unique=True,
            sqlite_where=sa.text("is_default"),
            postgresql_where=sa.text("is_default"),
        )

    op.create_table(
        "invoice",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("payment_method", sa.String(length=20), nullable=False),
        sa.Column("auto_charge", sa.Boolean(), nullable=False),
        sa.Column("is_void", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "payment_method IN ('bank_transfer', 'cash', 'cheque', 'online_card', 'other')",
            name=op.f("ck_invoice_payment_method_known"),
        ),
        sa.CheckConstraint(
            "currency = lower(currency) AND length(currency) = 3", name=op.f("ck_invoice_currency_iso")
        ),
        sa.CheckConstraint("total > 0", name=op.f("ck_invoice_total_positive")),
        sa.ForeignKeyConstraint(["client_id"], ["client.id"], name=op.f("fk_invoice_client_id_client")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice")),
        sa.UniqueConstraint("number", name=op.f("uq_invoice_number")),
    )
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.create_index("ix_invoice_auto_charge_due", ["auto_charge", "due_date", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_invoice_client_id"), ["client_id"], unique=False)

    op.create_table(
        "charge_attempt",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=254), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=64), nullable=True),
        sa.Column("payment_method_id", sa.String(length=64), nullable=True),
        sa.Column("stripe_account_id", sa.String(length=64), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=64), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("transient_failures", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_retry_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "source IN ('admin', 'client', 'schedule')", name=op.f("ck_charge_attempt_source_known")
        ),
        sa.CheckConstraint(
            "status IN ('canceled', 'failed', 'processing', 'queued', 'requires_action', 'succeeded', 'unknown')",
            name=op.f("ck_charge_attempt_status_known"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_charge_attempt_amount_positive")),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoice.id"], name=op.f("fk_charge_attempt_invoice_id_invoice")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charge_attempt")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_charge_attempt_idempotency_key")),
        sa.UniqueConstraint("payment_intent_id", name=op.f("uq_charge_attempt_payment_intent_id")),
    )
    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_charge_attempt_invoice_id"), ["invoice_id"], unique=False)
        batch_op.create_index("ix_charge_attempt_status_updated_at", ["status", "updated_at"], unique=False)
        batch_op.create_index(
            "uq_charge_attempt_one_in_flight_per_invoice",
            ["invoice_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('processing', 'queued', 'requires_action', 'unknown')"),
            postgresql_where=sa.text("status IN ('processing', 'queued', 'requires_action', 'unknown')"),
        )

    op.create_table(
        "audit_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=254), nullable=False),
        sa.Column("action", sa.String(length=80), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("charge_attempt_id", sa.String(length=36), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["charge_attempt_id"],
            ["charge_attempt.id"],
            name=op.f("fk_audit_event_charge_attempt_id_charge_attempt"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoice.id"], name=op.f("fk_audit_event_invoice_id_invoice")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_event")),
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_event_charge_attempt_id"), ["charge_attempt_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_audit_event_invoice_id"), ["invoice_id"], unique=False)

    op.create_table(
        "payment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=20), nullable=False),
        sa.Column("received_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("charge_attempt_id", sa.String(length=36), nullable=True),
        sa.Column("stripe_payment_intent_id", sa.String(length=64), nullable=True),
        sa.Column("stripe_refund_id", sa.String(length=64), nullable=True),
        sa.Column("recorded_by", sa.String(length=254), nullable=False),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "method IN ('bank_transfer', 'card', 'cash', 'cheque', 'other')",
            name=op.f("ck_payment_method_known"),
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_payment_amount_nonzero")),
        sa.ForeignKeyConstraint(
            ["charge_attempt_id"],
            ["charge_attempt.id"],
            name=op.f("fk_payment_charge_attempt_id_charge_attempt"),
        ),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoice.id"], name=op.f("fk_payment_invoice_id_invoice")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment")),
        sa.UniqueConstraint("stripe_payment_intent_id", name=op.f("uq_payment_stripe_payment_intent_id")),
        sa.UniqueConstraint("stripe_refund_id", name=op.f("uq_payment_stripe_refund_id")),
    )
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payment_charge_attempt_id"), ["charge_attempt_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_payment_invoice_id"), ["invoice_id"], unique=False)

    settings = sa.table(
        "settings",
        sa.column("id", sa.Integer()),
        sa.column("stripe_connected", sa.Boolean()),
        sa.column("online_card_payments_enabled", sa.Boolean()),
        sa.column("updated_at", shared.domain.models.UTCDateTime(timezone=True)),
    )
    op.bulk_insert(
        settings,
        [
            {
                "id": 1,
                "stripe_connected": False,
                "online_card_payments_enabled": True,
                "updated_at": shared.domain.models.utcnow(),
            }
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payment_invoice_id"))
        batch_op.drop_index(batch_op.f("ix_payment_charge_attempt_id"))

    op.drop_table("payment")
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_event_invoice_id"))
        batch_op.drop_index(batch_op.f("ix_audit_event_charge_attempt_id"))

    op.drop_table("audit_event")
    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_charge_attempt_one_in_flight_per_invoice",
            sqlite_where=sa.text("status IN ('processing', 'queued', 'requires_action', 'unknown')"),
            postgresql_where=sa.text("status IN ('processing', 'queued', 'requires_action', 'unknown')"),
        )
        batch_op.drop_index("ix_charge_attempt_status_updated_at")
        batch_op.drop_index(batch_op.f("ix_charge_attempt_invoice_id"))

    op.drop_table("charge_attempt")
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_client_id"))
        batch_op.drop_index("ix_invoice_auto_charge_due")

    op.drop_table("invoice")
    with op.batch_alter_table("card", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_card_one_default_per_client",
            sqlite_where=sa.text("is_default"),
            postgresql_where=sa.text("is_default"),
        )
        batch_op.drop_index(batch_op.f("ix_card_client_id"))

    op.drop_table("card")
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_event_unprocessed")
        batch_op.drop_index(batch_op.f("ix_webhook_event_type"))
        batch_op.drop_index(batch_op.f("ix_webhook_event_payment_intent_id"))

    op.drop_table("webhook_event")
    op.drop_table("settings")
    with op.batch_alter_table("outbox_message", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_message_unpublished")

    op.drop_table("outbox_message")
    with op.batch_alter_table("client", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_client_email"))

    op.drop_table("client")
    op.drop_table("admin_user")
