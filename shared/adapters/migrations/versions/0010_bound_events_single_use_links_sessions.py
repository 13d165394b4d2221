"""flagged webhook events, scoped single-use links, session versions, unique client emails

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

- webhook_event.flagged_reason / flagged_message: an event that did not match what it would change.
- client_login_token.purpose / subject_id / revoked_at: every emailed link is stored, single use and
  scoped (sign-in, update card, authenticate a charge); a newer link of a kind revokes the older.
- admin_user.session_version, client.session_version: signing out ends copied cookies too.
- client.email unique. Clients that share an address stop the upgrade before anything changes, with
  the list of them: the Client Zone could only ever sign in one of them, and which one should keep
  the address is the operator's call (`offsession set-client-email CLIENT_ID NEW_EMAIL`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.domain.models

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# How many shared addresses the refusal lists (the rest are counted).
LISTED_DUPLICATES = 20


class DuplicateClientEmails(RuntimeError):
    pass


def refuse_duplicate_emails(connection: sa.Connection) -> None:
    """Raise DuplicateClientEmails naming every address two clients share (compared as the app
    compares them: trimmed, lowercase)."""
    shared_by: dict[str, list[int]] = defaultdict(list)
    for address, client_id in connection.execute(
        sa.text("SELECT lower(trim(email)), id FROM client ORDER BY id")
    ):
        shared_by[address].append(client_id)
    duplicates = {address: ids for address, ids in shared_by.items() if len(ids) > 1}
    if not duplicates:
        return
    listed = [
        f"{address} (clients {', '.join(map(str, ids))})"
        for address, ids in sorted(duplicates.items())[:LISTED_DUPLICATES]
    ]
    more = len(duplicates) - len(listed)
    raise DuplicateClientEmails(
        f"{len(duplicates)} email address(es) belong to more than one client, and the Client Zone can "
        f"sign in only one client per address: {'; '.join(listed)}"
        + (f"; and {more} more" if more > 0 else "")
        + ". Give each client its own address (offsession set-client-email CLIENT_ID NEW_EMAIL), then "
        "run offsession db upgrade again. Nothing was changed."
    )


def upgrade() -> None:
    connection = op.get_bind()
    refuse_duplicate_emails(connection)
    # Addresses were always stored normalized; any written otherwise (by hand) are made so now, so that
    # the unique index compares them as the sign-in form does.
    connection.execute(
        sa.text("UPDATE client SET email = lower(trim(email)) WHERE email <> lower(trim(email))")
    )
    with op.batch_alter_table("client", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("session_version", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.drop_index(batch_op.f("ix_client_email"))
        batch_op.create_index(batch_op.f("ix_client_email"), ["email"], unique=True)

    with op.batch_alter_table("admin_user", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("session_version", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )

    with op.batch_alter_table("client_login_token", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("purpose", sa.String(length=20), server_default=sa.text("'sign_in'"), nullable=False)
        )
        batch_op.add_column(sa.Column("subject_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", shared.domain.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_check_constraint(
            op.f("ck_client_login_token_purpose_known"),
            "purpose IN ('authenticate', 'sign_in', 'update_card')",
        )

    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flagged_reason", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("flagged_message", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_webhook_event_flagged",
            ["flagged_reason", "id"],
            unique=False,
            sqlite_where=sa.text("flagged_reason IS NOT NULL"),
            postgresql_where=sa.text("flagged_reason IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_webhook_event_flagged",
            sqlite_where=sa.text("flagged_reason IS NOT NULL"),
            postgresql_where=sa.text("flagged_reason IS NOT NULL"),
        )
        batch_op.drop_column("flagged_message")
        batch_op.drop_column("flagged_reason")

    with op.batch_alter_table("client_login_token", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_client_login_token_purpose_known"), type_="check")
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("subject_id")
        batch_op.drop_column("purpose")

    with op.batch_alter_table("admin_user", schema=None) as batch_op:
        batch_op.drop_column("session_version")

    with op.batch_alter_table("client", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_client_email"))
        batch_op.create_index(batch_op.f("ix_client_email"), ["email"], unique=False)
        batch_op.drop_column("session_version")
