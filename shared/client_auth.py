"""Client Zone sign-in by one-time link: single use, short-lived, stored only as a hash.

Asking for a link never says whether the email belongs to a client, so the form cannot be used to
find out who the business's clients are.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared import audit
from shared.models import Client, ClientLoginToken, utcnow

LINK_LIFETIME = timedelta(minutes=30)


class LoginLinkError(Exception):
    """The link is unknown, used or expired; the message is fit to show."""


@dataclass(frozen=True)
class LoginLink:
    client_id: int
    email: str
    name: str
    token: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_login_link(session: Session, email: str, *, now: datetime | None = None) -> LoginLink | None:
    """A new link for the client with this email, or None when there is no such client."""
    address = (email or "").strip().lower()
    client = session.scalars(
        select(Client).where(func.lower(Client.email) == address).order_by(Client.id)
    ).first()
    if client is None:
        return None
    token = secrets.token_urlsafe(32)
    moment = now or utcnow()
    session.add(
        ClientLoginToken(
            token_hash=_digest(token),
            client_id=client.id,
            created_at=moment,
            expires_at=moment + LINK_LIFETIME,
        )
    )
    audit.record(session, f"client:{client.id}", "client.login_link_sent")
    session.flush()
    return LoginLink(client.id, client.email, client.name, token)


def consume_login_link(session: Session, token: str, *, now: datetime | None = None) -> int:
    """The client id the link signs in; the link cannot be used again."""
    moment = now or utcnow()
    row = session.scalar(select(ClientLoginToken).where(ClientLoginToken.token_hash == _digest(token or "")))
    if row is None:
        raise LoginLinkError("This sign-in link is not valid. Ask for a new one.")
    if row.expires_at < moment:
        raise LoginLinkError("This sign-in link has expired. Ask for a new one.")
    # The conditional update makes the link single-use even when two tabs open it at once.
    used = session.execute(
        update(ClientLoginToken)
        .where(ClientLoginToken.id == row.id, ClientLoginToken.used_at.is_(None))
        .values(used_at=moment)
        .execution_options(synchronize_session=False)
    ).rowcount
    if used != 1:
        raise LoginLinkError("This sign-in link was already used. Ask for a new one.")
    audit.record(session, f"client:{row.client_id}", "client.signed_in")
    return row.client_id
