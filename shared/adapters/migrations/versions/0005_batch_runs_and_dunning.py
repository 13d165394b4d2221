"""batch runs and dunning

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Batch runs of the scheduled fan-out, dunning state per invoice, and the decline advice of attempts.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.domain.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slot", sa.String(length=80), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("started_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("selection_finished_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("selected", sa.Integer(), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("skipped_reasons", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_run")),
        sa.UniqueConstraint("slot", name=op.f("uq_batch_run_slot")),
    )
    op.create_table(
        "dunning_state",
        sa.Column("invoice_id", sa.Integer(), nullable=False),
        sa.Column("first_failure_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("decline_class", sa.String(length=10), nullable=False),
        sa.Column("last_attempt_id", sa.String(length=36), nullable=True),
        sa.Column("next_attempt_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts_left", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("updated_at", shared.domain.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoice.id"], name=op.f("fk_dunning_state_invoice_id_invoice")
        ),
        sa.ForeignKeyConstraint(
            ["last_attempt_id"],
            ["charge_attempt.id"],
            name=op.f("fk_dunning_state_last_attempt_id_charge_attempt"),
        ),
        sa.PrimaryKeyConstraint("invoice_id", name=op.f("pk_dunning_state")),
    )
    with op.batch_alter_table("dunning_state", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dunning_state_next_attempt_at"), ["next_attempt_at"], unique=False
        )

    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.add_column(sa.Column("advice_code", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("network_advice_code", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("batch_run_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_charge_attempt_batch_run_id"), ["batch_run_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_charge_attempt_batch_run_id_batch_run"), "batch_run", ["batch_run_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("charge_attempt", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_charge_attempt_batch_run_id_batch_run"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_charge_attempt_batch_run_id"))
        batch_op.drop_column("batch_run_id")
        batch_op.drop_column("network_advice_code")
        batch_op.drop_column("advice_code")

    with op.batch_alter_table("dunning_state", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dunning_state_next_attempt_at"))

    op.drop_table("dunning_state")
    op.drop_table("batch_run")
