"""webhook_event.processed_reason: why an event was stored already processed

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06

The endpoint stores an event processed, and publishes nothing, when it only repeats what a charge
attempt already recorded (shared/services/webhook_intake.py): the column says so ("already_recorded"),
so that an event nobody drained is still explained. NULL for every other event.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("webhook_event", sa.Column("processed_reason", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_event") as batch:
        batch.drop_column("processed_reason")
