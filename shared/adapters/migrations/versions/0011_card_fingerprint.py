"""card fingerprints: the same card is saved once per client

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

- card.fingerprint: Stripe's fingerprint of the card number, read when a card is saved through Stripe
  Checkout (setup mode). Cards saved before stay NULL.
- uq_card_fingerprint_per_client: one card per (client, fingerprint) where the fingerprint is known, so a
  card saved twice (the return from Stripe's page and its webhook, or the client saving it again) is
  stored once whoever writes first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("card", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "uq_card_fingerprint_per_client",
            ["client_id", "fingerprint"],
            unique=True,
            sqlite_where=sa.text("fingerprint IS NOT NULL"),
            postgresql_where=sa.text("fingerprint IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("card", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_card_fingerprint_per_client",
            sqlite_where=sa.text("fingerprint IS NOT NULL"),
            postgresql_where=sa.text("fingerprint IS NOT NULL"),
        )
        batch_op.drop_column("fingerprint")
