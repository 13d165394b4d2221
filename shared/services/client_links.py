"""Emailed Client Zone links: single use, short-lived, scoped to one action, stored only as a hash.

Three kinds: sign in (the Client Zone), update the card (the card page) and authenticate a charge (that
invoice's page). Opening a link (GET) changes nothing, so a mail scanner following it uses nothing up;
the page it shows has a button whose POST, with the browser's CSRF token, uses the link (web.
client_zone). The newest link of a kind (client, purpose, subject) revokes the older ones.

Asking for a sign-in link never says whether the email belongs to a client, so the form cannot be used
to find out who the business's clients are: the request only queues the email (shared.services.outbox),
and a worker looks the address up (shared.services.notifications.deliver_login_link).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from shared.domain.link_tokens import (
    LINK_LIFETIMES,
    IssuedLink,
    LinkGrant,
    LoginLinkError,
    new_token,
    token_digest,
)
from shared.domain.models import ClientLoginToken, utcnow
from shared.services import audit, outbox
from shared.services.ports import UnitOfWork

log = logging.getLogger(__name__)

def issue_link(
    session: Session,
    client_id: int,
    purpose: str,
    *,
    subject_id: str | None = None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> IssuedLink:
    """A new link of this kind for the client, revoking the older ones of the same kind. It expires
    after the purpose's lifetime, or at `expires_at` when that comes first."""
    if purpose not in LINK_LIFETIMES:
        raise ValueError(f"unknown link purpose {purpose!r}")
    moment = now or utcnow()
    expiry = moment + LINK_LIFETIMES[purpose]
    if expires_at is not None:
        expiry = min(expiry, expires_at)
    session.execute(
        update(ClientLoginToken)
        .where(
            ClientLoginToken.client_id == client_id,
            ClientLoginToken.purpose == purpose,
            ClientLoginToken.subject_id.is_(None)
            if subject_id is None
            else ClientLoginToken.subject_id == subject_id,
            ClientLoginToken.used_at.is_(None),
            ClientLoginToken.revoked_at.is_(None),
        )
        .values(revoked_at=moment)
        .execution_options(synchronize_session=False)
    )
    token = new_token()
    session.add(
        ClientLoginToken(
            token_hash=token_digest(token),
            client_id=client_id,
            purpose=purpose,
            subject_id=subject_id,
            created_at=moment,
            expires_at=expiry,
        )
    )
    session.flush()
    return IssuedLink(client_id, purpose, subject_id, token, expiry)


def _usable(session: Session, token: str, moment: datetime) -> ClientLoginToken:
    row = session.scalar(
        select(ClientLoginToken).where(ClientLoginToken.token_hash == token_digest(token or ""))
    )
    if row is None:
        raise LoginLinkError("This link is not valid. Ask for a new one.")
    if row.used_at is not None:
        raise LoginLinkError("This link was already used. Ask for a new one.")
    if row.revoked_at is not None:
        raise LoginLinkError("A newer link replaced this one: use the one in the latest email.")
    if row.expires_at <= moment:
        raise LoginLinkError("This link has expired. Ask for a new one.")
    return row


def peek_link(session: Session, token: str, *, now: datetime | None = None) -> LinkGrant:
    """What the link would grant, without using it (the page a GET shows). Raises LoginLinkError."""
    row = _usable(session, token, now or utcnow())
    return LinkGrant(row.client_id, row.purpose, row.subject_id)


def consume_link(session: Session, token: str, *, now: datetime | None = None) -> LinkGrant:
    """Use the link: what it grants; it cannot be used again. Raises LoginLinkError."""
    moment = now or utcnow()
    row = _usable(session, token, moment)
    # The conditional update makes the link single-use even when two tabs post it at once.
    used = cast("CursorResult[Any]", session.execute(
        update(ClientLoginToken)
        .where(
            ClientLoginToken.id == row.id,
            ClientLoginToken.used_at.is_(None),
            ClientLoginToken.revoked_at.is_(None),
        )
        .values(used_at=moment)
        .execution_options(synchronize_session=False)
    )).rowcount
    if used != 1:
        raise LoginLinkError("This link was already used. Ask for a new one.")
    audit.record(session, f"client:{row.client_id}", "client.link_used", purpose=row.purpose)
    return LinkGrant(row.client_id, row.purpose, row.subject_id)


# ---- sign-in links by email ---------------------------------------------------------------------------


def request_login_link(uow: UnitOfWork, email: str) -> None:
    """Queue the sign-in email for this address, whoever it belongs to, in the unit of work (published
    once it has committed). The same work for every address: the answer and its timing say nothing about
    who is a client, and no mail server is waited for."""
    payload = {"email": (email or "").strip().lower()[:254], "request_id": uuid.uuid4().hex}
    outbox.enqueue_after_commit(uow, outbox.TASK_SEND_LOGIN_LINK, payload)
