"""invoice.ledger_sum: each invoice's ledger sum kept by the database, for the dashboard

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

What is due and overdue needs the invoices not fully paid. Finding them from the payments reads every
payment of the book (two seconds at a million invoices); with the sum stored on the invoice, a partial
index holds only the invoices with money left to collect and the dashboard reads that alone.

- invoice.ledger_sum: the sum of the invoice's payments (refunds are negative entries), backfilled here.
- triggers on payment keep it: every insert, update and delete, whoever writes it (the charging worker,
  webhooks, refunds, disputes, a person), in the same transaction. PostgreSQL: statement-level triggers
  over the transition tables (a bulk insert is one UPDATE); SQLite: row-level triggers.
- ix_invoice_outstanding_due: (due_date, auto_charge, currency, total, ledger_sum) where not void and
  ledger_sum < total.

On SQLite, a later batch_alter_table of payment (which copies the table) drops the triggers: recreate
them (tests/shared/services/test_dashboard.py fails without them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTSTANDING = "NOT is_void AND ledger_sum < total"

BACKFILL = """
UPDATE invoice SET ledger_sum = sums.amount
FROM (SELECT invoice_id, sum(amount) AS amount FROM payment GROUP BY invoice_id) AS sums
WHERE invoice.id = sums.invoice_id
"""
BACKFILL_SQLITE = """
UPDATE invoice SET ledger_sum = (SELECT coalesce(sum(amount), 0) FROM payment WHERE invoice_id = invoice.id)
"""

# PostgreSQL: one function per event, each applying its statement's rows at once.
PG_FUNCTIONS = {
    "insert": """
        UPDATE invoice SET ledger_sum = invoice.ledger_sum + d.amount
        FROM (SELECT invoice_id, sum(amount) AS amount FROM new_rows GROUP BY invoice_id) AS d
        WHERE invoice.id = d.invoice_id""",
    "delete": """
        UPDATE invoice SET ledger_sum = invoice.ledger_sum - d.amount
        FROM (SELECT invoice_id, sum(amount) AS amount FROM old_rows GROUP BY invoice_id) AS d
        WHERE invoice.id = d.invoice_id""",
    "update": """
        UPDATE invoice SET ledger_sum = invoice.ledger_sum + d.amount
        FROM (
            SELECT invoice_id, sum(amount) AS amount FROM (
                SELECT invoice_id, amount FROM new_rows
                UNION ALL SELECT invoice_id, -amount FROM old_rows
            ) AS moves GROUP BY invoice_id
        ) AS d
        WHERE invoice.id = d.invoice_id AND d.amount <> 0""",
}
PG_REFERENCING = {
    "insert": "REFERENCING NEW TABLE AS new_rows",
    "delete": "REFERENCING OLD TABLE AS old_rows",
    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
}

SQLITE_TRIGGERS = {
    "insert": """CREATE TRIGGER payment_ledger_sum_insert AFTER INSERT ON payment BEGIN
        UPDATE invoice SET ledger_sum = ledger_sum + NEW.amount WHERE id = NEW.invoice_id;
    END""",
    "delete": """CREATE TRIGGER payment_ledger_sum_delete AFTER DELETE ON payment BEGIN
        UPDATE invoice SET ledger_sum = ledger_sum - OLD.amount WHERE id = OLD.invoice_id;
    END""",
    "update": """CREATE TRIGGER payment_ledger_sum_update AFTER UPDATE OF amount, invoice_id ON payment BEGIN
        UPDATE invoice SET ledger_sum = ledger_sum - OLD.amount WHERE id = OLD.invoice_id;
        UPDATE invoice SET ledger_sum = ledger_sum + NEW.amount WHERE id = NEW.invoice_id;
    END""",
}


def upgrade() -> None:
    op.add_column(
        "invoice", sa.Column("ledger_sum", sa.Integer(), server_default=sa.text("0"), nullable=False)
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.execute(BACKFILL if postgresql else BACKFILL_SQLITE)
    for event, body in PG_FUNCTIONS.items() if postgresql else ():
        op.execute(
            f"CREATE FUNCTION payment_ledger_sum_{event}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN{body};\n    RETURN NULL;\nEND $$"
        )
        op.execute(
            f"CREATE TRIGGER payment_ledger_sum_{event} AFTER {event.upper()} ON payment "
            f"{PG_REFERENCING[event]} FOR EACH STATEMENT EXECUTE FUNCTION payment_ledger_sum_{event}()"
        )
    for trigger in SQLITE_TRIGGERS.values() if not postgresql else ():
        op.execute(trigger)
    op.create_index(
        "ix_invoice_outstanding_due",
        "invoice",
        ["due_date", "auto_charge", "currency", "total", "ledger_sum"],
        unique=False,
        sqlite_where=sa.text(OUTSTANDING),
        postgresql_where=sa.text(OUTSTANDING),
    )


def downgrade() -> None:
    op.drop_index("ix_invoice_outstanding_due", table_name="invoice")
    postgresql = op.get_bind().dialect.name == "postgresql"
    for event in SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER payment_ledger_sum_{event}" + (" ON payment" if postgresql else ""))
        if postgresql:
            op.execute(f"DROP FUNCTION payment_ledger_sum_{event}()")
    # ALTER TABLE ... DROP COLUMN on SQLite too (3.35+): a batch copy of the table would drop its triggers.
    op.drop_column("invoice", "ledger_sum")
