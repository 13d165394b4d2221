"""payment.currency: the invoice's currency on each ledger entry, for the dashboard's money collected

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06

Money collected today, this week and this month per currency joined each recent payment to its invoice
for the currency (a scan of the whole invoice table at a million invoices). With the currency on the
entry, it is one range read of (received_at, currency, amount).

- payment.currency, backfilled here, copied from the invoice by triggers when an entry is written or
  moved to another invoice, and followed if an invoice's currency changes. PostgreSQL: a BEFORE row
  trigger; SQLite: AFTER row triggers updating the new row.
- ix_payment_received_at_currency: (received_at, currency, amount).

On SQLite, a later batch_alter_table of payment or invoice (which copies the table) drops the triggers:
recreate them (tests/shared/services/test_dashboard.py fails without them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKFILL = "UPDATE payment SET currency = invoice.currency FROM invoice WHERE invoice.id = payment.invoice_id"
BACKFILL_SQLITE = "UPDATE payment SET currency = (SELECT currency FROM invoice WHERE id = payment.invoice_id)"

PG = [
    """CREATE FUNCTION payment_currency_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.currency := (SELECT currency FROM invoice WHERE id = NEW.invoice_id);
    RETURN NEW;
END $$""",
    """CREATE TRIGGER payment_currency_copy BEFORE INSERT OR UPDATE OF invoice_id, currency ON payment
    FOR EACH ROW EXECUTE FUNCTION payment_currency_copy()""",
    """CREATE FUNCTION invoice_currency_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE payment SET currency = NEW.currency WHERE invoice_id = NEW.id;
    RETURN NULL;
END $$""",
    """CREATE TRIGGER invoice_currency_follow AFTER UPDATE OF currency ON invoice
    FOR EACH ROW WHEN (OLD.currency IS DISTINCT FROM NEW.currency) EXECUTE FUNCTION invoice_currency_follow()""",
]
SQLITE = [
    """CREATE TRIGGER payment_currency_insert AFTER INSERT ON payment BEGIN
        UPDATE payment SET currency = (SELECT currency FROM invoice WHERE id = NEW.invoice_id) WHERE id = NEW.id;
    END""",
    """CREATE TRIGGER payment_currency_update AFTER UPDATE OF invoice_id, currency ON payment BEGIN
        UPDATE payment SET currency = (SELECT currency FROM invoice WHERE id = NEW.invoice_id) WHERE id = NEW.id;
    END""",
    """CREATE TRIGGER invoice_currency_follow AFTER UPDATE OF currency ON invoice BEGIN
        UPDATE payment SET currency = NEW.currency WHERE invoice_id = NEW.id;
    END""",
]


def upgrade() -> None:
    op.add_column("payment", sa.Column("currency", sa.String(length=3), nullable=True))
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.execute(BACKFILL if postgresql else BACKFILL_SQLITE)
    for statement in PG if postgresql else SQLITE:
        op.execute(statement)
    op.create_index(
        "ix_payment_received_at_currency", "payment", ["received_at", "currency", "amount"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_payment_received_at_currency", table_name="payment")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER invoice_currency_follow ON invoice")
        op.execute("DROP TRIGGER payment_currency_copy ON payment")
        op.execute("DROP FUNCTION invoice_currency_follow()")
        op.execute("DROP FUNCTION payment_currency_copy()")
    else:
        for name in ("invoice_currency_follow", "payment_currency_update", "payment_currency_insert"):
            op.execute(f"DROP TRIGGER {name}")
    # ALTER TABLE ... DROP COLUMN on SQLite too (3.35+): a batch copy of the table would drop its triggers.
    op.drop_column("payment", "currency")
