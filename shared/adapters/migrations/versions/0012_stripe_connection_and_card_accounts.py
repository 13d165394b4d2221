"""the verified Stripe connection, the registered webhook endpoint, where customers and cards live

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

- settings: what GET /v1/account answered at Connect (account id, name, mode, charges enabled, when,
  by which method), why charges are blocked after a refusal or a deauthorization, and the webhook
  endpoint Connect registered with its signing secret encrypted (shared.adapters.secret_box).
- client.stripe_customer_account_id / stripe_customer_livemode: where the client's customer lives.
- card.stripe_account_id / livemode / stripe_customer_id: where each card lives (backfilled with the
  client's customer id; account and mode are unknown for existing cards and are stamped by the first
  Connect after the upgrade, which is the account the deployment was already charging on).
- Every deployment connects again: a `stripe_connected` set before this upgrade was never verified
  with Stripe, so it is cleared and card charges stay blocked until an admin connects.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.domain.models

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def settings_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("stripe_connection_method", sa.String(length=16), nullable=True),
        sa.Column("stripe_verified_account_id", sa.String(length=64), nullable=True),
        sa.Column("stripe_account_name", sa.String(length=200), nullable=True),
        sa.Column("stripe_livemode", sa.Boolean(), nullable=True),
        sa.Column("stripe_charges_enabled", sa.Boolean(), nullable=True),
        sa.Column("stripe_verified_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("stripe_problem_code", sa.String(length=40), nullable=True),
        sa.Column("stripe_problem", sa.String(length=500), nullable=True),
        sa.Column("webhook_endpoint_id", sa.String(length=64), nullable=True),
        sa.Column("webhook_secret_encrypted", sa.Text(), nullable=True),
    ]


def upgrade() -> None:
    for column in settings_columns():
        op.add_column("settings", column)
    op.add_column("client", sa.Column("stripe_customer_account_id", sa.String(length=64), nullable=True))
    op.add_column("client", sa.Column("stripe_customer_livemode", sa.Boolean(), nullable=True))
    op.add_column("card", sa.Column("stripe_account_id", sa.String(length=64), nullable=True))
    op.add_column("card", sa.Column("livemode", sa.Boolean(), nullable=True))
    op.add_column("card", sa.Column("stripe_customer_id", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE card SET stripe_customer_id = "
        "(SELECT client.stripe_customer_id FROM client WHERE client.id = card.client_id)"
    )
    op.execute(sa.text("UPDATE settings SET stripe_connected = :no").bindparams(no=False))
    # A card is saved once per client in each account and mode (0011 said: once per client).
    with op.batch_alter_table("card") as batch:
        batch.drop_index("uq_card_fingerprint_per_client")
        batch.create_index(
            "uq_card_fingerprint_per_client",
            ["client_id", "fingerprint", "stripe_account_id", "livemode"],
            unique=True,
            sqlite_where=sa.text("fingerprint IS NOT NULL"),
            postgresql_where=sa.text("fingerprint IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("card") as batch:
        batch.drop_index("uq_card_fingerprint_per_client")
        batch.create_index(
            "uq_card_fingerprint_per_client",
            ["client_id", "fingerprint"],
            unique=True,
            sqlite_where=sa.text("fingerprint IS NOT NULL"),
            postgresql_where=sa.text("fingerprint IS NOT NULL"),
        )
    for name in ("stripe_customer_id", "livemode", "stripe_account_id"):
        with op.batch_alter_table("card") as batch:
            batch.drop_column(name)
    with op.batch_alter_table("client") as batch:
        batch.drop_column("stripe_customer_livemode")
        batch.drop_column("stripe_customer_account_id")
    with op.batch_alter_table("settings") as batch:
        for column in reversed(settings_columns()):
            batch.drop_column(column.name)
