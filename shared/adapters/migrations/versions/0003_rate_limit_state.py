"""rate limit state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

One row per Stripe account: the shared request budget (GCRA) used when REDIS_URL is unset.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_state",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("tat", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_rate_limit_state")),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_state")
