"""Stripe webhooks: stored once by (account, event id), processed later, applied monotonically.

Delivery is at-least-once, unordered and duplicated. Events are hints: a success snapshot is final
(a succeeded PaymentIntent never changes), anything else is checked against the PaymentIntent as it
is now before it is applied, so a late or reordered event cannot move an attempt backwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared import audit
from shared.charging import apply_payment_intent, reported_status
from shared.gateway import PaymentIntentView, StripeGateway, payment_intent_view
from shared.logs import bind_log_ids
from shared.models import ChargeAttempt, Payment, WebhookEvent, utcnow
from shared.states import observe

log = logging.getLogger(__name__)

# A poison event (one that crashes its worker every time) is given up after this many tries.
MAX_PROCESSING_ATTEMPTS = 8
REFUND_EVENTS = frozenset({"charge.refunded", "refund.created", "refund.updated", "charge.refund.updated"})


@dataclass(frozen=True)
class StoredEvent:
    id: int
    created: bool


def _payment_intent_id_of(event: dict[str, Any]) -> str | None:
    obj = (event.get("data") or {}).get("object") or {}
    if obj.get("object") == "payment_intent":
        return obj.get("id")
    pi = obj.get("payment_intent")
    if isinstance(pi, dict):
        return pi.get("id")
    return pi if isinstance(pi, str) else None


def store_event(session: Session, event: dict[str, Any]) -> StoredEvent:
    """Insert the event unless this (account, id) is already stored. Safe under concurrent duplicates."""
    account = event.get("account") or ""
    values = {
        "account": account,
        "stripe_event_id": event["id"],
        "type": str(event.get("type", ""))[:80],
        "payload": event,
        "payment_intent_id": _payment_intent_id_of(event),
        "received_at": utcnow(),
        "processing_attempts": 0,
    }
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = (
            insert(WebhookEvent)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["account", "stripe_event_id"])
            .returning(WebhookEvent.id)
        )
        new_id = session.execute(statement).scalar_one_or_none()
        if new_id is not None:
            return StoredEvent(new_id, True)
    else:  # pragma: no cover - other databases are not supported targets
        try:
            with session.begin_nested():
                row = WebhookEvent(**values)
                session.add(row)
            return StoredEvent(row.id, True)
        except IntegrityError:
            pass
    existing = session.scalar(
        select(WebhookEvent.id).where(
            WebhookEvent.account == account, WebhookEvent.stripe_event_id == event["id"]
        )
    )
    assert existing is not None
    return StoredEvent(existing, False)


def find_attempt(session: Session, payment_intent: PaymentIntentView) -> ChargeAttempt | None:
    """By PaymentIntent id, or by metadata: the event may arrive before the worker stored the id."""
    attempt = session.scalars(
        select(ChargeAttempt).where(ChargeAttempt.payment_intent_id == payment_intent.id).with_for_update()
    ).one_or_none()
    if attempt is None and (attempt_id := payment_intent.metadata.get("charge_attempt_id")):
        attempt = session.scalars(
            select(ChargeAttempt).where(ChargeAttempt.id == attempt_id).with_for_update()
        ).one_or_none()
    return attempt


def process_event(factory: sessionmaker[Session], gateway: StripeGateway, event_row_id: int) -> str:
    """Apply one stored event; returns what happened, in words. Idempotent."""
    with factory() as session, session.begin():
        row = session.get(WebhookEvent, event_row_id)
        if row is None:
            return "no such event"
        if row.processed_at is not None:
            return "already processed"
        if row.processing_attempts >= MAX_PROCESSING_ATTEMPTS:
            return "given up"
        row.processing_attempts += 1
        event = dict(row.payload)
        event_type = row.type
        bind_log_ids(event_id=row.stripe_event_id, payment_intent_id=row.payment_intent_id)
    try:
        outcome = _apply(factory, gateway, event_type, event)
    except Exception as exc:
        log.exception("webhook event %s failed", event.get("id"))
        with factory() as session, session.begin():
            row = session.get(WebhookEvent, event_row_id)
            assert row is not None
            row.error = f"{type(exc).__name__}: {exc}"[:2000]
        raise
    with factory() as session, session.begin():
        row = session.get(WebhookEvent, event_row_id)
        assert row is not None
        row.processed_at = utcnow()
        row.error = None
    return outcome


def _apply(
    factory: sessionmaker[Session], gateway: StripeGateway, event_type: str, event: dict[str, Any]
) -> str:
    obj = (event.get("data") or {}).get("object") or {}
    actor = f"webhook:{event.get('id')}"
    if event_type.startswith("payment_intent.") and obj.get("object") == "payment_intent":
        if event_type == "payment_intent.created":
            return "payment_intent.created: nothing to apply (the outcome comes in its own event)"
        snapshot = payment_intent_view(obj)
        if snapshot.status != "succeeded":
            with factory() as session:
                attempt = find_attempt(session, snapshot)
                news = attempt is not None and observe(attempt.status, reported_status(snapshot)) is not None
                session.rollback()
            if not news:
                # What the attempt already says: no Stripe call spent on a duplicate or a stale event.
                return f"{snapshot.id}: no news"
            # Order matters for anything but a success: ask Stripe where the PaymentIntent is now.
            snapshot = gateway.retrieve_payment_intent(snapshot.id, stripe_account=event.get("account"))
        with factory() as session, session.begin():
            attempt = find_attempt(session, snapshot)
            if attempt is None:
                return f"no charge attempt for {snapshot.id}"
            changed = apply_payment_intent(session, attempt, snapshot, actor=actor)
            return f"attempt {attempt.id}: {attempt.status}" + ("" if changed else " (no change)")
    if event_type in REFUND_EVENTS:
        return _apply_refunds(factory, gateway, event_type, obj, actor, event.get("account"))
    return f"{event_type}: stored, nothing to do"


def _apply_refunds(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    event_type: str,
    obj: dict[str, Any],
    actor: str,
    account: str | None,
) -> str:
    if obj.get("object") == "refund":
        refunds = [obj]
    else:  # a Charge: its refunds list, when the API version includes it
        refunds = list(((obj.get("refunds") or {}).get("data")) or [])
    recorded = 0
    for refund in refunds:
        if refund.get("status") != "succeeded":
            continue
        pi_id = _id(refund.get("payment_intent")) or _id(obj.get("payment_intent"))
        if pi_id is None:
            continue
        with factory() as session, session.begin():
            original = session.scalar(select(Payment).where(Payment.stripe_payment_intent_id == pi_id))
        if original is None:
            # The refund overtook the success it refunds: record the success first, from Stripe.
            view = gateway.retrieve_payment_intent(pi_id, stripe_account=account)
            with factory() as session, session.begin():
                attempt = find_attempt(session, view)
                if attempt is None:
                    continue  # not one of our charges
                apply_payment_intent(session, attempt, view, actor=actor)
        with factory() as session, session.begin():
            if _record_refund(session, refund, pi_id, actor):
                recorded += 1
    return f"{event_type}: {recorded} refund(s) recorded"


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, str) else None


def _record_refund(session: Session, refund: dict[str, Any], pi_id: str, actor: str) -> bool:
    original = session.scalar(select(Payment).where(Payment.stripe_payment_intent_id == pi_id))
    if original is None:
        return False
    if session.scalar(select(Payment.id).where(Payment.stripe_refund_id == refund["id"])) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(
                Payment(
                    invoice_id=original.invoice_id,
                    amount=-int(refund["amount"]),
                    method="card",
                    received_at=utcnow(),
                    reference=f"Refund {refund['id']} of {pi_id}",
                    charge_attempt_id=original.charge_attempt_id,
                    stripe_refund_id=refund["id"],
                    recorded_by="stripe",
                )
            )
    except IntegrityError:
        return False
    audit.record(
        session,
        actor,
        "payment.refunded",
        invoice_id=original.invoice_id,
        charge_attempt_id=original.charge_attempt_id,
        refund_id=refund["id"],
        amount=int(refund["amount"]),
    )
    return True


def unprocessed_event_ids(session: Session, *, older_than: datetime, limit: int = 500) -> list[int]:
    """Stored events no worker finished (publish lost, worker died): the janitor re-drives them."""
    return list(
        session.scalars(
            select(WebhookEvent.id)
            .where(
                WebhookEvent.processed_at.is_(None),
                WebhookEvent.received_at < older_than,
                WebhookEvent.processing_attempts < MAX_PROCESSING_ATTEMPTS,
            )
            .order_by(WebhookEvent.id)
            .limit(limit)
        )
    )


def redrive_cutoff(now: datetime) -> datetime:
    return now - timedelta(seconds=30)
