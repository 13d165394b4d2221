"""refunds and disputes

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06

- refund: one refund of a card charge, written with its idempotency key before Stripe is asked (or
  when Stripe reports one made elsewhere); at most one per charge on its way to Stripe at a time.
- dispute: a cardholder's dispute of a card charge, with the ledger entries its funds movements made.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.domain.models

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUND_BEING_CREATED_SQL = "stripe_refund_id IS NULL AND status = 'pending'"


def upgrade() -> None:
    op.create_table(
        "refund",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("charge_attempt_id", sa.String(length=36), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=254), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("payment_intent_id", sa.String(length=64), nullable=False),
        sa.Column("stripe_account_id", sa.String(length=64), nullable=True),
        sa.Column("stripe_refund_id", sa.String(length=64), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("tries", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("ledger_payment_id", sa.Integer(), nullable=True),
        sa.Column("reversal_payment_id", sa.Integer(), nullable=True),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_refund_amount_positive")),
        sa.CheckConstraint(
            "status IN ('canceled', 'failed', 'pending', 'requires_action', 'succeeded')",
            name=op.f("ck_refund_status_known"),
        ),
        sa.CheckConstraint("source IN ('admin', 'stripe')", name=op.f("ck_refund_source_known")),
        sa.CheckConstraint(
            "reason IS NULL OR reason IN ('duplicate', 'fraudulent', 'requested_by_customer')",
            name=op.f("ck_refund_reason_known"),
        ),
        sa.ForeignKeyConstraint(
            ["charge_attempt_id"],
            ["charge_attempt.id"],
            name=op.f("fk_refund_charge_attempt_id_charge_attempt"),
        ),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoice.id"], name=op.f("fk_refund_invoice_id_invoice")),
        sa.ForeignKeyConstraint(
            ["ledger_payment_id"], ["payment.id"], name=op.f("fk_refund_ledger_payment_id_payment")
        ),
        sa.ForeignKeyConstraint(
            ["reversal_payment_id"], ["payment.id"], name=op.f("fk_refund_reversal_payment_id_payment")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refund")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_refund_idempotency_key")),
        sa.UniqueConstraint("stripe_refund_id", name=op.f("uq_refund_stripe_refund_id")),
        sa.UniqueConstraint("ledger_payment_id", name=op.f("uq_refund_ledger_payment_id")),
        sa.UniqueConstraint("reversal_payment_id", name=op.f("uq_refund_reversal_payment_id")),
    )
    op.create_index(op.f("ix_refund_invoice_id"), "refund", ["invoice_id"], unique=False)
    op.create_index(op.f("ix_refund_charge_attempt_id"), "refund", ["charge_attempt_id"], unique=False)
    op.create_index("ix_refund_status_updated_at", "refund", ["status", "updated_at"], unique=False)
    op.create_index(
        "uq_refund_one_being_created_per_charge",
        "refund",
        ["charge_attempt_id"],
        unique=True,
        sqlite_where=sa.text(REFUND_BEING_CREATED_SQL),
        postgresql_where=sa.text(REFUND_BEING_CREATED_SQL),
    )
    op.create_table(
        "dispute",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stripe_dispute_id", sa.String(length=64), nullable=False),
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("charge_attempt_id", sa.String(length=36), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("evidence_due_by", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("stripe_updated", sa.Integer(), nullable=False),
        sa.Column("withdrawal_payment_id", sa.Integer(), nullable=True),
        sa.Column("reinstatement_payment_id", sa.Integer(), nullable=True),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_dispute_amount_not_negative")),
        sa.CheckConstraint(
            "status IN ('lost', 'needs_response', 'prevented', 'under_review', 'warning_closed', "
            "'warning_needs_response', 'warning_under_review', 'won')",
            name=op.f("ck_dispute_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["charge_attempt_id"],
            ["charge_attempt.id"],
            name=op.f("fk_dispute_charge_attempt_id_charge_attempt"),
        ),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoice.id"], name=op.f("fk_dispute_invoice_id_invoice")),
        sa.ForeignKeyConstraint(
            ["withdrawal_payment_id"], ["payment.id"], name=op.f("fk_dispute_withdrawal_payment_id_payment")
        ),
        sa.ForeignKeyConstraint(
            ["reinstatement_payment_id"],
            ["payment.id"],
            name=op.f("fk_dispute_reinstatement_payment_id_payment"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispute")),
        sa.UniqueConstraint("stripe_dispute_id", name=op.f("uq_dispute_stripe_dispute_id")),
        sa.UniqueConstraint("withdrawal_payment_id", name=op.f("uq_dispute_withdrawal_payment_id")),
        sa.UniqueConstraint("reinstatement_payment_id", name=op.f("uq_dispute_reinstatement_payment_id")),
    )
    op.create_index(op.f("ix_dispute_invoice_id"), "dispute", ["invoice_id"], unique=False)
    op.create_index(op.f("ix_dispute_charge_attempt_id"), "dispute", ["charge_attempt_id"], unique=False)
    op.create_index("ix_dispute_status", "dispute", ["status"], unique=False)


def downgrade() -> None:
    op.drop_table("dispute")
    op.drop_table("refund")
