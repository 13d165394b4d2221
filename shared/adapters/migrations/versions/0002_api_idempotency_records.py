"""api idempotency records

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Stored answers for API requests that carry an Idempotency-Key header.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.domain.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_idempotency_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.JSON(), nullable=False),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_idempotency_record")),
        sa.UniqueConstraint("key", name=op.f("uq_api_idempotency_record_key")),
    )
    with op.batch_alter_table("api_idempotency_record", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_api_idempotency_record_created_at"), ["created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("api_idempotency_record", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_idempotency_record_created_at"))

    op.drop_table("api_idempotency_record")
