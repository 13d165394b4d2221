"""Storing and claiming webhook events (the paths tuned for speed): stored once in autocommit on
PostgreSQL, events with nothing to apply stored processed, each processing a counted claim that ends
with the event marked processed in its last transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.stripe_gateway import StripeGateway
from shared.domain.models import AuditEvent, WebhookEvent
from shared.services.webhooks import MAX_PROCESSING_ATTEMPTS, process_event, store_event, store_received_event

# Never called: none of these events asks Stripe anything (a success is final, no attempt means no news).
OFFLINE_GATEWAY = StripeGateway("sk_test_offline", "http://127.0.0.1:9", "whsec_offline")


def _event(event_id: str, event_type: str, status: str = "succeeded") -> dict[str, Any]:
    if event_type.startswith("charge."):
        obj: dict[str, Any] = {"id": f"ch_{event_id}", "object": "charge", "payment_intent": f"pi_{event_id}"}
    else:
        obj = {"id": f"pi_{event_id}", "object": "payment_intent", "status": status, "amount": 1_000}
    return {"id": f"evt_{event_id}", "object": "event", "type": event_type, "data": {"object": obj}}


def _row(factory: sessionmaker[Session], row_id: int) -> WebhookEvent:
    with factory() as s:
        return s.get_one(WebhookEvent, row_id)


def test_an_event_with_work_is_stored_once_unprocessed(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    first = store_received_event(migrated_engine, _event("a", "payment_intent.succeeded"))
    again = store_received_event(migrated_engine, _event("a", "payment_intent.succeeded"))
    assert (first.created, first.needs_processing) == (True, True)
    assert (again.id, again.created) == (first.id, False)
    row = _row(session_factory, first.id)
    assert (row.processed_at, row.processing_attempts, row.payment_intent_id) == (None, 0, "pi_a")
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(WebhookEvent)) == 1


def test_an_event_with_nothing_to_apply_is_stored_processed(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    for n, event_type in enumerate(("payment_intent.created", "charge.succeeded", "customer.created")):
        stored = store_received_event(migrated_engine, _event(f"n{n}", event_type))
        assert (stored.created, stored.needs_processing) == (True, False)
        row = _row(session_factory, stored.id)
        assert row.processed_at == row.received_at and row.processing_attempts == 0
        assert process_event(session_factory, OFFLINE_GATEWAY, stored.id) == "already processed"


def test_processing_claims_then_marks_processed_in_its_last_transaction(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s, s.begin():
        success = store_event(s, _event("s", "payment_intent.succeeded")).id
        failure = store_event(s, _event("f", "payment_intent.payment_failed", "requires_payment_method")).id
    assert process_event(session_factory, OFFLINE_GATEWAY, success) == "no charge attempt for pi_s"
    assert process_event(session_factory, OFFLINE_GATEWAY, failure) == "pi_f: no news"
    for row_id in (success, failure):
        row = _row(session_factory, row_id)
        assert row.processed_at is not None and row.processing_attempts == 1 and row.error is None
        assert process_event(session_factory, OFFLINE_GATEWAY, row_id) == "already processed"
    assert process_event(session_factory, OFFLINE_GATEWAY, 10**6) == "no such event"
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0  # nothing was applied


def test_a_poison_event_is_given_up_after_its_claims(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s, s.begin():
        row_id = store_event(s, _event("p", "payment_intent.succeeded")).id
        s.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == row_id)
            .values(processing_attempts=MAX_PROCESSING_ATTEMPTS)
        )
    assert process_event(session_factory, OFFLINE_GATEWAY, row_id) == "given up"
    row = _row(session_factory, row_id)
    assert (row.processed_at, row.processing_attempts) == (None, MAX_PROCESSING_ATTEMPTS)


def test_the_pooled_connection_is_transactional_again_after_an_autocommit_store(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    store_received_event(migrated_engine, _event("t", "payment_intent.succeeded"))
    # The next unit of work on the same pooled connection: a rollback must undo its writes.
    with session_factory() as s:
        store_event(s, _event("rolled-back", "payment_intent.succeeded"))
        s.rollback()
    with session_factory() as s:
        assert s.scalars(select(WebhookEvent.stripe_event_id)).all() == ["evt_t"]
