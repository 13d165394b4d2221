"""Client emails about charges, sent once per event: the NotificationLog's unique key is claimed
(and committed) before the message goes out, so a retry or a duplicate task never sends a second."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Config
from shared.models import ChargeAttempt, DunningState, NotificationLog, utcnow
from shared.notify import (
    Mailer,
    Notification,
    authenticate_link,
    authentication_email,
    failure_email,
    receipt_email,
    send_once,
    update_card_link,
)
from shared.retries import retry_policy

log = logging.getLogger(__name__)
UPDATE_CARD_LINK_LIFETIME = timedelta(days=14)


def build_charge_notification(
    session: Session, config: Config, attempt: ChargeAttempt, kind: str
) -> Notification | None:
    invoice = attempt.invoice
    client = invoice.client
    card = next((c for c in client.cards if c.stripe_payment_method_id == attempt.payment_method_id), None)
    last4 = card.last4 if card else None
    now = utcnow()
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
        content = failure_email(
            client_name=client.name,
            invoice_number=invoice.number,
            amount=attempt.amount,
            currency=attempt.currency,
            reason=reason,
            update_card_url=update_card_link(config, client.id, now + UPDATE_CARD_LINK_LIFETIME),
            next_retry_at=state.next_attempt_at if state else None,
            card_last4=last4,
        )
    elif kind == "authentication_needed":
        expires = (attempt.updated_at or now) + retry_policy().authentication_ttl
        content = authentication_email(
            client_name=client.name,
            invoice_number=invoice.number,
            amount=attempt.amount,
            currency=attempt.currency,
            authenticate_url=authenticate_link(config, attempt.id, expires),
            expires_at=expires,
        )
    else:
        log.error("unknown notification kind %r for charge %s", kind, attempt.id)
        return None
    return Notification(kind, attempt.id, client.email, content)  # type: ignore[arg-type]


def deliver_charge_notification(
    factory: sessionmaker[Session], config: Config, mailer: Mailer, attempt_id: str, kind: str
) -> bool:
    """Send the email for this (kind, attempt) unless it went out already; True when sent now."""
    with factory() as session:
        attempt = session.get(ChargeAttempt, attempt_id)
        if attempt is None:
            return False
        notification = build_charge_notification(session, config, attempt, kind)
        client_id = attempt.invoice.client_id
        session.rollback()
    if notification is None:
        return False

    def claim(n: Notification) -> bool:
        try:
            with factory() as session, session.begin():
                session.add(
                    NotificationLog(
                        dedupe_key=n.dedupe_key,
                        kind=n.kind,
                        client_id=client_id,
                        charge_attempt_id=attempt_id,
                        recipient=n.to,
                        subject=n.content.subject,
                        sent_at=utcnow(),
                    )
                )
        except IntegrityError:
            return False
        return True

    def release(n: Notification) -> None:
        with factory() as session, session.begin():
            session.execute(delete(NotificationLog).where(NotificationLog.dedupe_key == n.dedupe_key))

    return send_once(notification, mailer, claim=claim, release=release)
