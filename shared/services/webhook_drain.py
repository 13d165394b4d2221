"""Draining the stored webhook events: one task processes every event with work, batch after batch,
instead of one message per event; the janitor re-drives what no drain finished.

A batch's events that now repeat what their attempt recorded (stored while it was in flight) are marked
processed together, with the endpoint's own predicate (shared.services.webhook_intake); each of the others
goes through shared.services.webhooks.process_event (its claim, its transactions, its give-up
accounting). This module leases batches and keeps the connections a drain needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import WebhookEvent, utcnow
from shared.log_context import log_context
from shared.services.ports import StripePort
from shared.services.webhook_intake import BulkLook, mark_recorded_repeats
from shared.services.webhooks import MAX_PROCESSING_ATTEMPTS, process_event

log = logging.getLogger(__name__)

DRAIN_BATCH_SIZE = 50
# The endpoint's drains hold young events of an attempt still processing this long (drain_events).
IN_FLIGHT_HOLD_SECONDS = 3.0

# pg_try_advisory_xact_lock(namespace, event row id): which drain is working on which event.
_DRAIN_LOCK_NAMESPACE = 0x0FF5E551


@dataclass
class DrainReport:
    outcomes: int = 0
    # Events found to repeat what their attempt recorded, marked processed in bulk (not in outcomes).
    repeats: int = 0
    # Young events whose attempt is still processing: left for a drain IN_FLIGHT_HOLD_SECONDS later (the
    # caller publishes it), by when its worker has most likely recorded what they report.
    held: set[int] = field(default_factory=set)
    # Events whose processing raised this round: not taken again by this drain (a poison event must not
    # stall it); their processing attempt is counted, the next drain or the janitor tries them again.
    failed: set[int] = field(default_factory=set)


def drain_events(
    factory: sessionmaker[Session],
    gateway: StripePort,
    *,
    on_full_batch: Callable[[], None] | None = None,
    batch_size: int = DRAIN_BATCH_SIZE,
    hold_in_flight: float = 0.0,
) -> DrainReport:
    """Process every stored event that has work, batch after batch, until none is left.

    Each event goes through process_event: its own claim, transactions, failure and give-up accounting.
    On PostgreSQL several drains run side by side: a batch is leased with transaction-scoped advisory
    locks, skipping events another drain holds. Not FOR UPDATE SKIP LOCKED on the rows: process_event's
    claim must commit (so a poison event is counted) and its UPDATE would wait on our own row lock. A
    lock is only a lease: process_event's claim is conditional (unprocessed, attempts left), so an event
    leased twice in a row is processed once. on_full_batch is called once, when the first batch is full:
    there is enough backlog for another worker to help (the caller publishes a helper drain).
    hold_in_flight: an event received less than this long ago whose attempt is still processing is left
    (report.held) for a later drain: its charge worker is about to record the outcome, and the event is a
    repeat then, marked in bulk instead of claimed, matched and found stale one by one.
    """
    report = DrainReport()
    recruited = on_full_batch is None
    with factory() as session:
        bind = session.get_bind()
        connections = _DrainConnections(bind if isinstance(bind, Engine) else bind.engine)
    try:
        while True:
            # Closing the session ends the lease transaction, and the advisory locks with it, even on error.
            with factory() as lease:
                event_ids = _lease_batch(lease, exclude=report.failed | report.held, limit=batch_size)
                if not event_ids:
                    return report
                if lease.get_bind().dialect.name != "postgresql":
                    # SQLite: the transaction began IMMEDIATE (the file's write lock); processing needs it.
                    lease.commit()
                if not recruited and len(event_ids) == batch_size:
                    recruited = True
                    assert on_full_batch is not None
                    on_full_batch()
                look = _bulk_look(connections, gateway, event_ids, hold_in_flight)
                report.repeats += len(look.repeats)
                for event_id, (stripe_event_id, payment_intent_id) in look.repeats.items():
                    with log_context(
                        event_row_id=event_id, event_id=stripe_event_id, payment_intent_id=payment_intent_id
                    ):
                        log.info("webhook event row %s: repeats what its attempt recorded", event_id)
                report.held |= look.young_in_flight
                for event_id in event_ids:
                    if event_id not in look.repeats and event_id not in look.young_in_flight:
                        _drain_one(connections, gateway, event_id, report)
                lease.commit()
    finally:
        connections.close()


def _bulk_look(
    connections: _DrainConnections, gateway: StripePort, event_ids: list[int], hold_in_flight: float
) -> BulkLook:
    """The batch's events that repeat what their attempt recorded, marked processed in one transaction
    (shared.services.webhook_intake.mark_recorded_repeats): most events that arrived while their attempt
    was in flight; and those younger than hold_in_flight whose attempt is still processing. Only an
    optimisation: on any error, every event takes the full path."""
    work, _ = connections.open()
    now = utcnow()
    try:
        with work() as session, session.begin():
            return mark_recorded_repeats(
                session.connection(),
                event_ids,
                livemode=gateway.livemode,
                now=now,
                young_since=now - timedelta(seconds=hold_in_flight),
            )
    except Exception:
        log.exception("webhook drain: the bulk look for repeats failed; each event the full way")
        connections.close()
        return BulkLook()


def _drain_one(
    connections: _DrainConnections, gateway: StripePort, event_id: int, report: DrainReport
) -> None:
    # Each event's ids on its own line only (process_event binds them as it learns them).
    with log_context(event_row_id=event_id):
        work, claims = connections.open()
        try:
            outcome = process_event(work, gateway, event_id, claims=claims)
        except Exception:  # logged by process_event, error recorded on the row
            report.failed.add(event_id)
            connections.close()  # the next event on fresh (pinged) connections, whatever failed here
            return
        log.info("webhook event row %s: %s", event_id, outcome)
        report.outcomes += 1


class _DrainConnections:
    """The connections a drain keeps for its events: checked out (and pre-pinged) once per drain, not
    once per transaction, three or four per event; on PostgreSQL a second one, in AUTOCOMMIT, for the
    claims. Sessions bound to a connection begin and commit their transactions on it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.work: Connection | None = None
        self.claims: Connection | None = None
        self.factory: sessionmaker[Session] | None = None

    def open(self) -> tuple[sessionmaker[Session], Connection | None]:
        if self.work is None or self.factory is None:
            self.work = self.engine.connect()
            self.factory = sessionmaker(bind=self.work, expire_on_commit=False)
            if self.engine.dialect.name == "postgresql":
                self.claims = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self.factory, self.claims

    def close(self) -> None:
        for connection in (self.work, self.claims):
            if connection is not None:
                connection.close()  # back to the pool, which resets it (isolation level, transaction)
        self.work = self.claims = None
        self.factory = None


def _lease_batch(session: Session, *, exclude: Collection[int], limit: int) -> list[int]:
    """The oldest pending events (received order), at most limit, that no other drain holds."""
    pending = (
        select(WebhookEvent.id)
        .where(
            WebhookEvent.processed_at.is_(None),
            WebhookEvent.processing_attempts < MAX_PROCESSING_ATTEMPTS,
        )
        .order_by(WebhookEvent.id)
    )
    if exclude:
        pending = pending.where(WebhookEvent.id.not_in(list(exclude)))
    if session.get_bind().dialect.name != "postgresql":
        return list(session.scalars(pending.limit(limit)))
    # The inner LIMIT bounds how many rows the lock function sees (PostgreSQL does not push a volatile
    # condition into a subquery with a LIMIT); the outer one stops at the first `limit` taken.
    candidates = pending.limit(limit * 4).subquery()
    return list(
        session.scalars(
            select(candidates.c.id)
            .where(text(f"pg_try_advisory_xact_lock({_DRAIN_LOCK_NAMESPACE}, CAST(id AS integer))"))
            .limit(limit)
        )
    )


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
