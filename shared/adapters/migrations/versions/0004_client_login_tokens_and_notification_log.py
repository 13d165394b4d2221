"""client login tokens and notification log

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

One-time Client Zone sign-in links, and the log that sends each client email once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.domain.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "client_login_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["client.id"],
            name=op.f("fk_client_login_token_client_id_client"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client_login_token")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_client_login_token_token_hash")),
    )
    with op.batch_alter_table("client_login_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_client_login_token_client_id"), ["client_id"], unique=False)

    op.create_table(
        "notification_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("charge_attempt_id", sa.String(length=36), nullable=True),
        sa.Column("recipient", sa.String(length=254), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("created_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["charge_attempt_id"],
            ["charge_attempt.id"],
            name=op.f("fk_notification_log_charge_attempt_id_charge_attempt"),
        ),
        sa.ForeignKeyConstraint(
            ["client_id"], ["client.id"], name=op.f("fk_notification_log_client_id_client")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_log")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_notification_log_dedupe_key")),
    )
    with op.batch_alter_table("notification_log", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notification_log_charge_attempt_id"), ["charge_attempt_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_notification_log_client_id"), ["client_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("notification_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notification_log_client_id"))
        batch_op.drop_index(batch_op.f("ix_notification_log_charge_attempt_id"))

    op.drop_table("notification_log")
    with op.batch_alter_table("client_login_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_client_login_token_client_id"))

    op.drop_table("client_login_token")
