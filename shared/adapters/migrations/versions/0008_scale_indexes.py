"""indexes for a book of a million invoices

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26

The batch walks only chargeable invoices by id (a partial index) beside their payments' sums, read off
(invoice_id, amount) alone, which replaces the index on invoice_id; the admin list reads its order off
(due_date, id), a client's invoices off (client_id, due_date, id), which replaces the index on
client_id; searches by invoice number and client name use trigram indexes on PostgreSQL (pg_trgm,
a trusted extension since PostgreSQL 13: the database owner may create it). On SQLite the two search
indexes are plain ones: SQLite has no trigrams, and small books need none.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHARGEABLE = "auto_charge AND NOT is_void"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.create_index(
            "ix_invoice_chargeable_id",
            ["id", "due_date", "total"],
            unique=False,
            sqlite_where=sa.text(CHARGEABLE),
            postgresql_where=sa.text(CHARGEABLE),
        )
        batch_op.create_index("ix_invoice_due_date_id", ["due_date", "id"], unique=False)
        batch_op.create_index("ix_invoice_client_id_due_date", ["client_id", "due_date", "id"], unique=False)
        batch_op.drop_index("ix_invoice_client_id")
        batch_op.create_index(
            "ix_invoice_number_trgm",
            ["number"],
            unique=False,
            postgresql_using="gin",
            postgresql_ops={"number": "gin_trgm_ops"},
        )
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.create_index("ix_payment_invoice_id_amount", ["invoice_id", "amount"], unique=False)
        batch_op.drop_index("ix_payment_invoice_id")
    with op.batch_alter_table("client", schema=None) as batch_op:
        batch_op.create_index(
            "ix_client_name_trgm",
            ["name"],
            unique=False,
            postgresql_using="gin",
            postgresql_ops={"name": "gin_trgm_ops"},
        )


def downgrade() -> None:
    with op.batch_alter_table("client", schema=None) as batch_op:
        batch_op.drop_index("ix_client_name_trgm")
    with op.batch_alter_table("payment", schema=None) as batch_op:
        batch_op.create_index("ix_payment_invoice_id", ["invoice_id"], unique=False)
        batch_op.drop_index("ix_payment_invoice_id_amount")
    with op.batch_alter_table("invoice", schema=None) as batch_op:
        batch_op.drop_index("ix_invoice_number_trgm")
        batch_op.create_index("ix_invoice_client_id", ["client_id"], unique=False)
        batch_op.drop_index("ix_invoice_client_id_due_date")
        batch_op.drop_index("ix_invoice_due_date_id")
        batch_op.drop_index("ix_invoice_chargeable_id")
    # pg_trgm stays: other objects may use it, and dropping an extension is the operator's call.
