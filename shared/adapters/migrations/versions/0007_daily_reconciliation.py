"""daily reconciliation

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26

The daily reconciliation against Stripe: one run per (account, day) and its findings, each recorded
once (orphan PaymentIntents, repaired attempts, ledger payments Stripe does not list).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.domain.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reconciliation_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stripe_account", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("started_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("listed", sa.Integer(), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("repaired", sa.Integer(), nullable=False),
        sa.Column("orphans", sa.Integer(), nullable=False),
        sa.Column("missing", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_run")),
        sa.UniqueConstraint("stripe_account", "day", name=op.f("uq_reconciliation_run_stripe_account_day")),
    )
    with op.batch_alter_table("reconciliation_run", schema=None) as batch_op:
        batch_op.create_index("ix_reconciliation_run_day", ["day"], unique=False)

    op.create_table(
        "reconciliation_finding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("stripe_account", sa.String(length=64), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("stripe_status", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=64), nullable=True),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("charge_attempt_id", sa.String(length=36), nullable=True),
        sa.Column("payment_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payment_intent_created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("found_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('missing', 'orphan', 'repaired')", name=op.f("ck_reconciliation_finding_kind_known")
        ),
        sa.ForeignKeyConstraint(
            ["charge_attempt_id"],
            ["charge_attempt.id"],
            name=op.f("fk_reconciliation_finding_charge_attempt_id_charge_attempt"),
        ),
        sa.ForeignKeyConstraint(
            ["client_id"], ["client.id"], name=op.f("fk_reconciliation_finding_client_id_client")
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoice.id"], name=op.f("fk_reconciliation_finding_invoice_id_invoice")
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payment.id"], name=op.f("fk_reconciliation_finding_payment_id_payment")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["reconciliation_run.id"],
            name=op.f("fk_reconciliation_finding_run_id_reconciliation_run"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_finding")),
        sa.UniqueConstraint(
            "stripe_account", "payment_intent_id", "kind", name="uq_reconciliation_finding_once"
        ),
    )
    with op.batch_alter_table("reconciliation_finding", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reconciliation_finding_client_id"), ["client_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_reconciliation_finding_invoice_id"), ["invoice_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_reconciliation_finding_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reconciliation_finding", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reconciliation_finding_run_id"))
        batch_op.drop_index(batch_op.f("ix_reconciliation_finding_invoice_id"))
        batch_op.drop_index(batch_op.f("ix_reconciliation_finding_client_id"))

    op.drop_table("reconciliation_finding")
    with op.batch_alter_table("reconciliation_run", schema=None) as batch_op:
        batch_op.drop_index("ix_reconciliation_run_day")

    op.drop_table("reconciliation_run")
