"""who holds a charge's lease

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27

A processing attempt names the worker process holding it (host, pid and a random tag): that process
renews the lease while it works (shared.services.leases), only its own leases, and a redelivered message can
tell a holder whose process is gone from one that is merely slow.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.drop_column("lease_owner")
