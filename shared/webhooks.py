"""Stripe webhooks: stored once by (account, event id), processed later, applied monotonically.

Delivery is at-least-once, unordered and duplicated. Events are hints: a success snapshot is final
(a succeeded PaymentIntent never changes), anything else is checked against the PaymentIntent as it
is now before it is applied, so a late or reordered event cannot move an attempt backwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, Insert, insert, select, update
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
    # False for an event with nothing to apply: it is stored as processed, no worker needs to see it.
    needs_processing: bool


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
    return _store(session.connection(), event)


def store_received_event(engine: Engine, event: dict[str, Any]) -> StoredEvent:
    """store_event for the endpoint's hot path. On PostgreSQL the one INSERT ... ON CONFLICT is atomic by
    itself, so it runs in autocommit: one round trip instead of three (BEGIN, INSERT, COMMIT)."""
    if engine.dialect.name != "postgresql":
        with engine.begin() as connection:
            return _store(connection, event)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return _store(connection, event)


_EVENTS = WebhookEvent.__table__


@lru_cache(maxsize=4)
def _insert_once(dialect: str) -> Insert | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, built once per dialect: Core, not the ORM, and no
    statement built per request (None: the dialect has no ON CONFLICT)."""
    if dialect not in ("postgresql", "sqlite"):
        return None
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        dialect_insert(_EVENTS)
        .on_conflict_do_nothing(index_elements=[_EVENTS.c.account, _EVENTS.c.stripe_event_id])
        .returning(_EVENTS.c.id)
    )


def _store(connection: Connection, event: dict[str, Any]) -> StoredEvent:
    account = event.get("account") or ""
    event_type = str(event.get("type", ""))[:80]
    received_at = utcnow()
    needs_processing = has_work(event_type, event)
    values = {
        "account": account,
        "stripe_event_id": event["id"],
        "type": event_type,
        "payload": event,
        "payment_intent_id": _payment_intent_id_of(event),
        "received_at": received_at,
        # Processing would only set processed_at: set it now, and save the message and the task.
        "processed_at": None if needs_processing else received_at,
        "processing_attempts": 0,
        "error": None,
    }
    statement = _insert_once(connection.dialect.name)
    if statement is not None:
        new_id = connection.execute(statement, values).scalar_one_or_none()
        if new_id is not None:
            return StoredEvent(new_id, True, needs_processing)
    else:  # pragma: no cover - other databases are not supported targets
        try:
            with connection.begin_nested():
                new_id = connection.execute(insert(_EVENTS).returning(_EVENTS.c.id), values).scalar_one()
            return StoredEvent(new_id, True, needs_processing)
        except IntegrityError:
            pass
    existing = connection.execute(
        select(_EVENTS.c.id).where(_EVENTS.c.account == account, _EVENTS.c.stripe_event_id == event["id"])
    ).scalar_one()
    return StoredEvent(existing, False, needs_processing)


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
    """Apply one stored event; returns what happened, in words. Idempotent.

    The claim (one more processing attempt) commits before anything is applied, so that an event that
    kills its worker every time is given up; the event is marked processed in the transaction of its
    last step, so an event with nothing to apply costs one transaction.
    """
    with factory() as session, session.begin():
        claimed = session.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.id == event_row_id,
                WebhookEvent.processed_at.is_(None),
                WebhookEvent.processing_attempts < MAX_PROCESSING_ATTEMPTS,
            )
            .values(processing_attempts=WebhookEvent.processing_attempts + 1)
            .returning(
                WebhookEvent.type,
                WebhookEvent.payload,
                WebhookEvent.stripe_event_id,
                WebhookEvent.payment_intent_id,
            )
            .execution_options(synchronize_session=False)
        ).one_or_none()
        if claimed is None:
            return _why_not_claimed(session, event_row_id)
        event_type, event = claimed.type, dict(claimed.payload)
        bind_log_ids(event_id=claimed.stripe_event_id, payment_intent_id=claimed.payment_intent_id)
        if not has_work(event_type, event):
            _mark_processed(session, event_row_id)
            if event_type == "payment_intent.created":
                return "payment_intent.created: nothing to apply (the outcome comes in its own event)"
            return f"{event_type}: stored, nothing to do"
    try:
        return _apply(factory, gateway, event_row_id, event_type, event)
    except Exception as exc:
        log.exception("webhook event %s failed", event.get("id"))
        with factory() as session, session.begin():
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == event_row_id)
                .values(error=f"{type(exc).__name__}: {exc}"[:2000])
                .execution_options(synchronize_session=False)
            )
        raise


def _why_not_claimed(session: Session, event_row_id: int) -> str:
    row = session.get(WebhookEvent, event_row_id)
    if row is None:
        return "no such event"
    if row.processed_at is not None:
        return "already processed"
    return "given up"


def has_work(event_type: str, event: dict[str, Any]) -> bool:
    """Whether processing may change anything: a PaymentIntent's outcome or a refund. The rest (created,
    charge.succeeded beside its payment_intent.succeeded, customers, ...) is only kept."""
    obj = (event.get("data") or {}).get("object") or {}
    if event_type.startswith("payment_intent.") and obj.get("object") == "payment_intent":
        return event_type != "payment_intent.created"
    return event_type in REFUND_EVENTS


def _mark_processed(session: Session, event_row_id: int) -> None:
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_row_id)
        .values(processed_at=utcnow(), error=None)
        .execution_options(synchronize_session=False)
    )


def _apply(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    event_row_id: int,
    event_type: str,
    event: dict[str, Any],
) -> str:
    """A payment_intent.* or refund event (see has_work), marked processed in its last transaction."""
    obj = (event.get("data") or {}).get("object") or {}
    actor = f"webhook:{event.get('id')}"
    if event_type in REFUND_EVENTS:
        outcome = _apply_refunds(factory, gateway, event_type, obj, actor, event.get("account"))
        with factory() as session, session.begin():
            _mark_processed(session, event_row_id)
        return outcome
    snapshot = payment_intent_view(obj)
    if snapshot.status != "succeeded":
        with factory() as session, session.begin():
            attempt = find_attempt(session, snapshot)
            if attempt is None or observe(attempt.status, reported_status(snapshot)) is None:
                # What the attempt already says: no Stripe call spent on a duplicate or a stale event.
                _mark_processed(session, event_row_id)
                return f"{snapshot.id}: no news"
        # Order matters for anything but a success: ask Stripe where the PaymentIntent is now.
        snapshot = gateway.retrieve_payment_intent(snapshot.id, stripe_account=event.get("account"))
    with factory() as session, session.begin():
        attempt = find_attempt(session, snapshot)
        _mark_processed(session, event_row_id)
        if attempt is None:
            return f"no charge attempt for {snapshot.id}"
        changed = apply_payment_intent(session, attempt, snapshot, actor=actor)
        return f"attempt {attempt.id}: {attempt.status}" + ("" if changed else " (no change)")


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
