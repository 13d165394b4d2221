"""indexes for the admin dashboard

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

- payment (received_at, invoice_id, amount): money collected today, this week and this month is one
  range read of the latest payments, with the invoice (for its currency) beside each.
- invoice (id, due_date, total, auto_charge, currency) where not void: what is due and overdue is one
  ordered pass over the unvoided invoices beside their payments' sums (payment's (invoice_id, amount)),
  off the two indexes alone.
- reconciliation_finding (kind, found_at): the findings a person must look at, recent ones first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOT_VOID = "NOT is_void"


def upgrade() -> None:
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.create_index("ix_payment_received_at", ["received_at", "invoice_id", "amount"], unique=False)
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.create_index(
            "ix_invoice_not_void_id",
            ["id", "due_date", "total", "auto_charge", "currency"],
            unique=False,
            sqlite_where=sa.text(NOT_VOID),
            postgresql_where=sa.text(NOT_VOID),
        )
    with op.batch_alter_table("reconciliation_finding", schema=None) as batch_op:
        batch_op.create_index("ix_reconciliation_finding_kind_found_at", ["kind", "found_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reconciliation_finding", schema=None) as batch_op:
        batch_op.drop_index("ix_reconciliation_finding_kind_found_at")
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.drop_index("ix_invoice_not_void_id")
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_received_at")
