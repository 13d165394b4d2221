"""Client emails, sent once per event: the NotificationLog's unique key is claimed (and committed)
before the message goes out, so a retry or a duplicate task never sends a second.

The links they carry (sign in, update the card, authenticate the charge) are issued in the claim's
transaction: a duplicate task that finds the claim taken issues none, so it cannot revoke the link
already sent (shared.services.client_links: the newest link of a kind revokes the older ones)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Config
from shared.domain.emails import (
    EmailContent,
    Notification,
    authentication_email,
    compose_message,
    failure_email,
    login_link_email,
    receipt_email,
)
from shared.domain.link_tokens import AUTHENTICATE, LINK_LIFETIMES, SIGN_IN, UPDATE_CARD, link_url
from shared.domain.models import ChargeAttempt, Client, DunningState, NotificationLog, utcnow
from shared.services import audit
from shared.services.admins import AdminError, normalize_email
from shared.services.client_links import issue_link
from shared.services.dunning import retry_policy
from shared.services.ports import Mailer

log = logging.getLogger(__name__)
CHARGE_KINDS = ("receipt", "will_retry", "card_update_needed", "authentication_needed")


def build_charge_notification(
    session: Session, config: Config, attempt: ChargeAttempt, kind: str
) -> Notification | None:
    """The email for this event, with a new link where it needs one (issued in `session`)."""
    invoice = attempt.invoice
    client = invoice.client
    card = next((c for c in client.cards if c.stripe_payment_method_id == attempt.payment_method_id), None)
    last4 = card.last4 if card else None
    now = utcnow()
    content: EmailContent
    if kind == "receipt":
        content = receipt_email(
            client_name=client.name,
            invoice_number=invoice.number,
            amount=attempt.amount,
            currency=attempt.currency,
            card_brand=card.brand if card else "card",
            card_last4=last4 or "••••",
            paid_at=attempt.finished_at or now,
        )
    elif kind in ("will_retry", "card_update_needed"):
        state = session.get(DunningState, invoice.id)
        reason = (
            state.reason if state and state.reason else (attempt.failure_message or "Your bank declined it.")
        )
        link = issue_link(session, client.id, UPDATE_CARD, now=now)
        content = failure_email(
            client_name=client.name,
            invoice_number=invoice.number,
            amount=attempt.amount,
            currency=attempt.currency,
            reason=reason,
            update_card_url=link_url(config.public_base_url, link),
            next_retry_at=state.next_attempt_at if state else None,
            card_last4=last4,
            link_expires_at=link.expires_at,
        )
    elif kind == "authentication_needed":
        # The link cannot outlive the charge it authenticates: the janitor cancels it after the TTL.
        charge_expires = (attempt.updated_at or now) + retry_policy().authentication_ttl
        link = issue_link(
            session, client.id, AUTHENTICATE, subject_id=attempt.id, expires_at=charge_expires, now=now
        )
        content = authentication_email(
            client_name=client.name,
            invoice_number=invoice.number,
            amount=attempt.amount,
            currency=attempt.currency,
            authenticate_url=link_url(config.public_base_url, link),
            expires_at=link.expires_at,
        )
    else:
        log.error("unknown notification kind %r for charge %s", kind, attempt.id)
        return None
    return Notification(kind, attempt.id, client.email, content)  # type: ignore[arg-type]


def _claim(session: Session, row: NotificationLog) -> bool:
    """Insert the claim in a savepoint of the caller's transaction; False when the event was claimed
    before (then the caller does nothing else: no link is issued)."""
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


def _releaser(factory: sessionmaker[Session]) -> Callable[[Notification], None]:
    def release(notification: Notification) -> None:
        with factory() as session, session.begin():
            session.execute(
                delete(NotificationLog).where(NotificationLog.dedupe_key == notification.dedupe_key)
            )

    return release


def deliver_charge_notification(
    factory: sessionmaker[Session], config: Config, mailer: Mailer, attempt_id: str, kind: str
) -> bool:
    """Send the email for this (kind, attempt) unless it went out already; True when sent now."""
    if kind not in CHARGE_KINDS:
        log.error("unknown notification kind %r for charge %s", kind, attempt_id)
        return False
    with factory() as session, session.begin():
        attempt = session.get(ChargeAttempt, attempt_id)
        if attempt is None:
            return False
        claim = NotificationLog(
            dedupe_key=f"{kind}:{attempt_id}",
            kind=kind,
            client_id=attempt.invoice.client_id,
            charge_attempt_id=attempt_id,
            recipient=attempt.invoice.client.email,
            subject="",
            sent_at=utcnow(),
        )
        if not _claim(session, claim):
            return False
        notification = build_charge_notification(session, config, attempt, kind)
        assert notification is not None  # every kind of CHARGE_KINDS has its email
        claim.subject = notification.content.subject[:300]
    send_claimed(notification, mailer, release=_releaser(factory))
    return True


def deliver_login_link(
    factory: sessionmaker[Session], config: Config, mailer: Mailer, *, email: str, request_id: str
) -> bool:
    """The worker's half of shared.services.client_links.request_login_link: email a new sign-in link when the
    address is a client's, once per request; True when sent now. Raises when the mail server fails,
    having given the request back, so that a retry sends it."""
    try:
        address = normalize_email(email)
    except AdminError:
        return False
    with factory() as session, session.begin():
        client = session.scalar(select(Client).where(Client.email == address))
        if client is None:
            return False
        claim = NotificationLog(
            dedupe_key=f"login_link:{request_id}",
            kind="login_link",
            client_id=client.id,
            recipient=client.email,
            subject="",
            sent_at=utcnow(),
        )
        if not _claim(session, claim):
            return False
        link = issue_link(session, client.id, SIGN_IN)
        audit.record(session, f"client:{client.id}", "client.login_link_sent")
        content = login_link_email(
            client_name=client.name,
            url=link_url(config.public_base_url, link),
            valid_minutes=int(LINK_LIFETIMES[SIGN_IN].total_seconds() // 60),
        )
        claim.subject = content.subject
        notification = Notification("login_link", request_id, client.email, content)
    send_claimed(notification, mailer, release=_releaser(factory))
    return True


def send_claimed(
    notification: Notification,
    mailer: Mailer,
    *,
    release: Callable[[Notification], None] | None = None,
    now: datetime | None = None,
) -> None:
    """Send a notification whose event the caller has claimed: recorded `notification.dedupe_key`
    durably (a NotificationLog row with a unique key, committed), so that no other delivery sends it.
    Claiming before sending means a crash between the two loses the email rather than sending it twice.
    `release` (delete the row) is called when sending raises, so a later retry can send it; leave it
    out where even that is too risky (a timeout after DATA may hide a delivered message).
    """
    try:
        mailer.send(compose_message(notification, sender=mailer.sender, now=now))
    except Exception:
        if release is not None:
            release(notification)
        raise
