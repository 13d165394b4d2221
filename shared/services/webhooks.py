"""Stripe webhooks: stored once by (account, event id), processed later, applied monotonically.

Delivery is at-least-once, unordered and duplicated. Events are hints: a success snapshot is final
(a succeeded PaymentIntent never changes), anything else is checked against the PaymentIntent as it
is now before it is applied, so a late or reordered event cannot move an attempt backwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, Insert, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.binding import Mismatch, MismatchReason
from shared.domain.models import ChargeAttempt, Payment, WebhookEvent, table_of, utcnow
from shared.domain.payments import PaymentIntentView, payment_intent_view
from shared.domain.states import observe
from shared.log_context import bind_log_ids
from shared.services import audit
from shared.services import refunds as refunds_service
from shared.services.attempts import apply_payment_intent, reported_status
from shared.services.card_setup_events import CARD_SETUP_EVENTS, apply_card_setup_event, is_card_setup_event
from shared.services.disputes import DISPUTE_EVENTS, apply_dispute_event
from shared.services.ports import StripePort
from shared.services.stripe_connection import DEAUTHORIZED_EVENT, apply_deauthorization
from shared.services.webhook_intake import insert_unless_recorded, recorded_outcome

log = logging.getLogger(__name__)

# A poison event (one that crashes its worker every time) is given up after this many tries.
MAX_PROCESSING_ATTEMPTS = 8
REFUND_EVENTS = frozenset(
    {"charge.refunded", "refund.created", "refund.updated", "refund.failed", "charge.refund.updated"}
)
# The event types a Stripe webhook endpoint for Offsession subscribes to (enabled_events): those has_work
# acts on. Every payment_intent.* outcome but .created (the outcome comes in its own event); the rest
# (customers, cards, charge.succeeded beside payment_intent.succeeded, ...) would only be stored.
EVENTS_WITH_WORK = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.requires_action",
    "payment_intent.processing",
    "payment_intent.canceled",
    "payment_intent.amount_capturable_updated",
    "payment_intent.partially_funded",
    *sorted(REFUND_EVENTS),
    *CARD_SETUP_EVENTS,
    # The connected account let go of the platform: charges are blocked (shared.services.stripe_connection).
    DEAUTHORIZED_EVENT,
    *sorted(DISPUTE_EVENTS),
)
# The coalesced drain (drain_events): one task empties the table of events with work, instead of one
# message per event (the flag in shared.adapters.drain_flag holds back needless ones).
TASK_DRAIN_WEBHOOK_EVENTS = "offsession.drain_webhook_events"
# How long the endpoint's drain message waits before it runs: the events of that second share it (the flag
# holds back their own), and the charges still in flight when their events came are mostly recorded by
# then, so the drain marks those events in bulk (drain_events). Below the flag's TTL
# (shared.adapters.drain_flag), far below the janitor's re-drive.
DRAIN_GATHER_SECONDS = 1.0


@dataclass(frozen=True)
class StoredEvent:
    id: int
    created: bool
    # False for an event with nothing to apply: it is stored as processed, no worker needs to see it.
    needs_processing: bool


def payment_intent_id_of(event: dict[str, Any]) -> str | None:
    obj = (event.get("data") or {}).get("object") or {}
    if obj.get("object") == "payment_intent":
        return obj.get("id")
    pi = obj.get("payment_intent")
    if isinstance(pi, dict):
        return pi.get("id")
    return pi if isinstance(pi, str) else None


def store_event(session: Session, event: dict[str, Any], *, livemode: bool | None = None) -> StoredEvent:
    """Insert the event unless this (account, id) is already stored. Safe under concurrent duplicates.
    With the deployment's `livemode`, an event that only repeats what its charge attempt recorded is
    stored processed (shared.services.webhook_intake)."""
    return _store(session.connection(), event, livemode)


def store_received_event(
    engine: Engine, event: dict[str, Any], *, livemode: bool | None = None
) -> StoredEvent:
    """store_event for the endpoint's hot path. On PostgreSQL the one INSERT ... ON CONFLICT is atomic by
    itself, so it runs in autocommit: one round trip instead of three (BEGIN, INSERT, COMMIT)."""
    if engine.dialect.name != "postgresql":
        with engine.begin() as connection:
            return _store(connection, event, livemode)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return _store(connection, event, livemode)


_EVENTS = table_of(WebhookEvent)


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


def _store(connection: Connection, event: dict[str, Any], livemode: bool | None = None) -> StoredEvent:
    account = event.get("account") or ""
    event_type = str(event.get("type", ""))[:80]
    received_at = utcnow()
    needs_processing = has_work(event_type, event)
    values = {
        "account": account,
        "stripe_event_id": event["id"],
        "type": event_type,
        "payload": event,
        "payment_intent_id": payment_intent_id_of(event),
        "received_at": received_at,
    }
    dialect = connection.dialect.name
    repeat = recorded_outcome(event, livemode) if livemode is not None and needs_processing else None
    if repeat is not None and (shortcut := insert_unless_recorded(dialect)) is not None:
        stored = connection.execute(shortcut, values | repeat).one_or_none()
        if stored is not None:
            return StoredEvent(stored.id, True, stored.processed_reason is None)
        return StoredEvent(_stored_id(connection, account, event["id"]), False, needs_processing)
    # Processing would only set processed_at: set it now, and save the message and the task.
    values["processed_at"] = None if needs_processing else received_at
    values |= {"processing_attempts": 0, "error": None}
    statement = _insert_once(dialect)
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
    return StoredEvent(_stored_id(connection, account, event["id"]), False, needs_processing)


def _stored_id(connection: Connection, account: str, stripe_event_id: str) -> int:
    return connection.execute(
        select(_EVENTS.c.id).where(_EVENTS.c.account == account, _EVENTS.c.stripe_event_id == stripe_event_id)
    ).scalar_one()


# The drain's statements, built once with bound parameters: building one costs more CPU than its round
# trip (SQLAlchemy's coercions), and every event runs three or four of them.
_ATTEMPT_BY_PAYMENT_INTENT = (
    select(ChargeAttempt)
    .where(ChargeAttempt.payment_intent_id == bindparam("payment_intent_id"))
    .with_for_update()
)
_ATTEMPT_BY_ID = select(ChargeAttempt).where(ChargeAttempt.id == bindparam("attempt_id")).with_for_update()
_CLAIM = (
    update(WebhookEvent)
    .where(
        WebhookEvent.id == bindparam("event_row_id"),
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
)
_MARK_PROCESSED = (
    update(WebhookEvent)
    .where(WebhookEvent.id == bindparam("event_row_id"))
    .values(processed_at=bindparam("now"), error=None)
    .execution_options(synchronize_session=False)
)


def find_attempt(
    session: Session, payment_intent: PaymentIntentView, account: str | None
) -> ChargeAttempt | None:
    """The attempt this PaymentIntent belongs to (locked), or None when no attempt claims it.

    By PaymentIntent id; or by metadata.charge_attempt_id while that attempt has no PaymentIntent yet
    (the event may arrive before the worker stored the id). Raises Mismatch when the attempt it names
    has another PaymentIntent already, or charges through another account (None: the platform).
    """
    attempt = session.scalars(
        _ATTEMPT_BY_PAYMENT_INTENT, {"payment_intent_id": payment_intent.id}
    ).one_or_none()
    if attempt is None:
        attempt_id = payment_intent.metadata.get("charge_attempt_id")
        if not attempt_id:
            return None
        attempt = session.scalars(_ATTEMPT_BY_ID, {"attempt_id": attempt_id}).one_or_none()
        if attempt is None:
            return None
        # The row as committed once its lock is ours: the worker may have recorded this very
        # PaymentIntent while we waited (READ COMMITTED); only another one is a mismatch.
        if attempt.payment_intent_id is not None and attempt.payment_intent_id != payment_intent.id:
            raise Mismatch(
                MismatchReason.PAYMENT_INTENT,
                f"PaymentIntent {payment_intent.id} names charge {attempt.id} in its metadata, but that "
                f"charge's PaymentIntent is {attempt.payment_intent_id}.",
                attempt=attempt,
            )
    if (account or None) != (attempt.stripe_account_id or None):
        raise Mismatch(
            MismatchReason.ACCOUNT,
            f"The event comes from account {account or 'platform'}; charge {attempt.id} was made on "
            f"{attempt.stripe_account_id or 'the platform account'}.",
            attempt=attempt,
        )
    return attempt


def process_event(
    factory: sessionmaker[Session],
    gateway: StripePort,
    event_row_id: int,
    *,
    claims: Connection | None = None,
) -> str:
    """Apply one stored event; returns what happened, in words. Idempotent.

    The claim (one more processing attempt) commits before anything is applied, so that an event that
    kills its worker every time is given up; the event is marked processed in the transaction of its
    last step, so an event with nothing to apply costs one transaction. `claims`: a PostgreSQL connection
    in AUTOCOMMIT for the claim, the one UPDATE being atomic by itself: one round trip instead of three
    (BEGIN, UPDATE, COMMIT).
    """
    if claims is None:
        with factory() as session, session.begin():
            claimed = session.execute(_CLAIM, {"event_row_id": event_row_id}).one_or_none()
            if claimed is None:
                return _why_not_claimed(session, event_row_id)
            bind_log_ids(event_id=claimed.stripe_event_id, payment_intent_id=claimed.payment_intent_id)
            if not has_work(claimed.type, claimed.payload):
                _mark_processed(session, event_row_id)
                return _nothing_to_apply(claimed.type)
    else:
        claimed = claims.execute(_CLAIM, {"event_row_id": event_row_id}).one_or_none()
        if claimed is None:
            with factory() as session:
                return _why_not_claimed(session, event_row_id)
        bind_log_ids(event_id=claimed.stripe_event_id, payment_intent_id=claimed.payment_intent_id)
        if not has_work(claimed.type, claimed.payload):
            with factory() as session, session.begin():
                _mark_processed(session, event_row_id)
            return _nothing_to_apply(claimed.type)
    event_type, event = claimed.type, dict(claimed.payload)
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


def _nothing_to_apply(event_type: str) -> str:
    if event_type == "payment_intent.created":
        return "payment_intent.created: nothing to apply (the outcome comes in its own event)"
    return f"{event_type}: stored, nothing to do"


def _why_not_claimed(session: Session, event_row_id: int) -> str:
    row = session.get(WebhookEvent, event_row_id)
    if row is None:
        return "no such event"
    if row.processed_at is not None:
        return "already processed"
    return "given up"


def has_work(event_type: str, event: dict[str, Any]) -> bool:
    """Whether processing may change anything: a PaymentIntent's outcome, a refund, a dispute, a card
    saved through Checkout or a deauthorization. The rest (created, charge.succeeded beside its
    payment_intent.succeeded, customers, ...) is only kept."""
    obj = (event.get("data") or {}).get("object") or {}
    if event_type.startswith("payment_intent.") and obj.get("object") == "payment_intent":
        return event_type != "payment_intent.created"
    return (
        event_type in REFUND_EVENTS
        or event_type in DISPUTE_EVENTS
        or event_type == DEAUTHORIZED_EVENT
        or is_card_setup_event(event_type, obj)
    )


def _mark_processed(session: Session, event_row_id: int) -> None:
    session.execute(_MARK_PROCESSED, {"event_row_id": event_row_id, "now": utcnow()})


def _apply(
    factory: sessionmaker[Session],
    gateway: StripePort,
    event_row_id: int,
    event_type: str,
    event: dict[str, Any],
) -> str:
    """A payment_intent.*, refund, dispute or card setup event (see has_work), marked processed in its last
    transaction.

    An event that does not match what it would change (mode, account, PaymentIntent, customer,
    currency, amount) changes nothing: it is marked processed and flagged (_flag)."""
    obj = (event.get("data") or {}).get("object") or {}
    actor = f"webhook:{event.get('id')}"
    account = event.get("account") or None
    if event_type == DEAUTHORIZED_EVENT:
        outcome = apply_deauthorization(factory, gateway, event)
        with factory() as session, session.begin():
            _mark_processed(session, event_row_id)
        return outcome
    try:
        _check_livemode(gateway, event, obj)
        if event_type in CARD_SETUP_EVENTS:
            outcome = apply_card_setup_event(factory, gateway, event_type, obj, account=account, actor=actor)
            with factory() as session, session.begin():
                _mark_processed(session, event_row_id)
            return outcome
        if event_type in REFUND_EVENTS:
            outcome = _apply_refunds(factory, gateway, event_type, obj, actor, account)
            with factory() as session, session.begin():
                _mark_processed(session, event_row_id)
            return outcome
        if event_type in DISPUTE_EVENTS:
            with factory() as session, session.begin():
                outcome = apply_dispute_event(session, event_type, event, obj, actor=actor, account=account)
                _mark_processed(session, event_row_id)
            return outcome
        return _apply_payment_intent_event(factory, gateway, event_row_id, obj, actor, account)
    except Mismatch as mismatch:
        _flag(factory, event_row_id, event, mismatch)
        return f"flagged ({mismatch.reason.value}): {mismatch.message}"


def _check_livemode(gateway: StripePort, event: dict[str, Any], obj: dict[str, Any]) -> None:
    """Test-mode events never change what a live key charged, nor the other way round."""
    expected = "live" if gateway.livemode else "test"
    for what, livemode in (("event", event.get("livemode", False)), ("object", obj.get("livemode"))):
        if livemode is not None and bool(livemode) != gateway.livemode:
            raise Mismatch(
                MismatchReason.LIVEMODE,
                f"A {'live' if livemode else 'test'}-mode {what}; this deployment's API key is {expected}.",
            )


def _apply_payment_intent_event(
    factory: sessionmaker[Session],
    gateway: StripePort,
    event_row_id: int,
    obj: dict[str, Any],
    actor: str,
    account: str | None,
) -> str:
    snapshot = payment_intent_view(obj)
    named_attempt_id = snapshot.metadata.get("charge_attempt_id")
    with factory() as session, session.begin():
        attempt = find_attempt(session, snapshot, account)
        matched_by_metadata = attempt is not None and attempt.payment_intent_id is None
        if snapshot.status != "succeeded" and (
            attempt is None or observe(attempt.status, reported_status(snapshot)) is None
        ):
            # What the attempt already says: no Stripe call spent on a duplicate or a stale event.
            _mark_processed(session, event_row_id)
            return f"{snapshot.id}: no news"
        if snapshot.status == "succeeded" and not matched_by_metadata:
            # A success snapshot of the attempt's own PaymentIntent is final: applied under the lock
            # just taken, in this one transaction (no second look needed).
            _mark_processed(session, event_row_id)
            return _applied(session, attempt, snapshot, actor)
    # Anything but a success: order matters, ask Stripe where the PaymentIntent is now. A match by
    # metadata alone: only Stripe's own copy says whose PaymentIntent this is, and for how much.
    snapshot = gateway.retrieve_payment_intent(snapshot.id, stripe_account=account)
    with factory() as session, session.begin():
        attempt = find_attempt(session, snapshot, account)
        if named_attempt_id and matched_by_metadata and (attempt is None or attempt.id != named_attempt_id):
            raise Mismatch(
                MismatchReason.PAYMENT_INTENT,
                f"The event's PaymentIntent {snapshot.id} names charge {named_attempt_id} in its metadata; "
                "Stripe's copy of it does not.",
            )
        _mark_processed(session, event_row_id)
        return _applied(session, attempt, snapshot, actor)


def _applied(session: Session, attempt: ChargeAttempt | None, snapshot: PaymentIntentView, actor: str) -> str:
    """Apply the PaymentIntent to its attempt (binding checked by apply_payment_intent); in words."""
    if attempt is None:
        return f"no charge attempt for {snapshot.id}"
    changed = apply_payment_intent(session, attempt, snapshot, actor=actor)
    return f"attempt {attempt.id}: {attempt.status}" + ("" if changed else " (no change)")


def _flag(
    factory: sessionmaker[Session], event_row_id: int, event: dict[str, Any], mismatch: Mismatch
) -> None:
    """Keep the event, processed and flagged, for a person (Charges page, /metrics); nothing else."""
    log.warning(
        "webhook event %s flagged, nothing applied: %s: %s",
        event.get("id"),
        mismatch.reason.value,
        mismatch.message,
        extra={"flagged_reason": mismatch.reason.value},
    )
    with factory() as session, session.begin():
        session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_row_id)
            .values(
                processed_at=utcnow(),
                error=None,
                flagged_reason=mismatch.reason.value,
                flagged_message=mismatch.message[:2000],
            )
            .execution_options(synchronize_session=False)
        )
        audit.record(
            session,
            "stripe",
            "webhook.flagged",
            invoice_id=mismatch.invoice_id,
            charge_attempt_id=mismatch.charge_attempt_id,
            event_id=event.get("id"),
            account=event.get("account"),
            reason=mismatch.reason.value,
            message=mismatch.message,
        )


def _apply_refunds(
    factory: sessionmaker[Session],
    gateway: StripePort,
    event_type: str,
    obj: dict[str, Any],
    actor: str,
    account: str | None,
) -> str:
    """Apply the event's refunds (shared.services.refunds.apply_stripe_refund), all of them or (Mismatch)
    none: a refund of ours moves to Stripe's status, one made elsewhere is recorded; the ledger follows."""
    if obj.get("object") == "refund":
        refunds = [obj]
    else:  # a Charge: its refunds list, when the API version includes it
        refunds = list(((obj.get("refunds") or {}).get("data")) or [])
    ours: list[tuple[dict[str, Any], str]] = []
    for refund in refunds:
        pi_id = _id(refund.get("payment_intent")) or _id(obj.get("payment_intent"))
        if pi_id is None:
            continue
        with factory() as session, session.begin():
            original = session.scalar(select(Payment.id).where(Payment.stripe_payment_intent_id == pi_id))
        if original is None:
            # The refund overtook the success it refunds: record the success first, from Stripe.
            view = gateway.retrieve_payment_intent(pi_id, stripe_account=account)
            with factory() as session, session.begin():
                attempt = find_attempt(session, view, account)
                if attempt is None:
                    continue  # not one of our charges
                apply_payment_intent(session, attempt, view, actor=actor)
        ours.append((refund, pi_id))
    recorded = 0
    with factory() as session, session.begin():
        for refund, pi_id in ours:
            recorded += refunds_service.apply_stripe_refund(session, refund, pi_id, actor, account)
    return f"{event_type}: {recorded} refund(s) recorded"


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, str) else None
