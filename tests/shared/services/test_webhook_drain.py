"""The coalesced webhook drain: one task processes every pending event batch after batch, a
poison event does not stall it, PostgreSQL drains side by side skip each other's events, and the Redis
flag publishes one drain for a burst of events."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.drain_flag import DRAIN_PENDING_KEY, DrainRequests
from shared.domain.models import WebhookEvent
from shared.services.webhook_drain import _DRAIN_LOCK_NAMESPACE, drain_events
from shared.services.webhooks import store_received_event
from tests.support.fake_stripe import FakeStripe
from tests.support.services import RedisServer


def stripe_down() -> FakeStripe:
    """Stripe answering every request with a 5xx: the refund event below asks it for the PaymentIntent
    its refund overtook, and cannot be processed."""
    stripe = FakeStripe()
    stripe.server.set_faults(error_rate=1.0)
    return stripe


def _success(n: int) -> dict[str, Any]:
    obj = {"id": f"pi_{n}", "object": "payment_intent", "status": "succeeded", "amount": 1_000}
    return {"id": f"evt_{n}", "type": "payment_intent.succeeded", "data": {"object": obj}}


def _refund_of_unknown_payment(n: int) -> dict[str, Any]:
    refund = {
        "id": f"re_{n}",
        "object": "refund",
        "status": "succeeded",
        "amount": 500,
        "payment_intent": "pi_x",
    }
    return {"id": f"evt_r{n}", "type": "refund.created", "data": {"object": refund}}


def _rows(factory: sessionmaker[Session]) -> dict[int, WebhookEvent]:
    with factory() as s:
        return {row.id: row for row in s.query(WebhookEvent)}


def test_a_drain_processes_every_pending_event_and_asks_for_help_once(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    ids = [store_received_event(migrated_engine, _success(n)).id for n in range(5)]
    helpers: list[str] = []
    report = drain_events(
        session_factory, stripe_down(), on_full_batch=lambda: helpers.append("helper"), batch_size=2
    )
    assert (report.outcomes, report.failed, helpers) == (5, set(), ["helper"])
    rows = _rows(session_factory)
    assert all(rows[i].processed_at is not None and rows[i].processing_attempts == 1 for i in ids)
    # Nothing left: a second drain claims nothing and asks for no help.
    assert drain_events(session_factory, stripe_down(), on_full_batch=helpers.clear).outcomes == 0
    assert helpers == ["helper"]


def test_a_poison_event_is_counted_and_skipped_not_retried_in_a_loop(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    poison = store_received_event(migrated_engine, _refund_of_unknown_payment(0)).id
    healthy = [store_received_event(migrated_engine, _success(n)).id for n in range(3)]
    report = drain_events(session_factory, stripe_down(), batch_size=2)
    assert (report.outcomes, report.failed) == (3, {poison})
    rows = _rows(session_factory)
    assert all(rows[i].processed_at is not None for i in healthy)
    assert rows[poison].processed_at is None and rows[poison].processing_attempts == 1
    assert rows[poison].error == "TransientStripeError: An unknown error occurred (injected)"
    # The next drain tries it again: one more counted attempt, towards being given up.
    assert drain_events(session_factory, stripe_down()).failed == {poison}
    assert _rows(session_factory)[poison].processing_attempts == 2


@pytest.mark.postgres
def test_postgresql_drains_skip_the_events_another_drain_holds(
    session_factory: sessionmaker[Session],
) -> None:
    engine = session_factory.kw["bind"]
    if engine.dialect.name != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    held, free = (store_received_event(engine, _success(n)).id for n in range(2))
    with engine.connect() as other_drain, other_drain.begin():
        other_drain.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, :event_id)"),
            {"namespace": _DRAIN_LOCK_NAMESPACE, "event_id": held},
        )
        report = drain_events(session_factory, stripe_down())
        assert report.outcomes == 1
        rows = _rows(session_factory)
        assert rows[free].processed_at is not None
        assert rows[held].processed_at is None and rows[held].processing_attempts == 0
    # Released (that drain ended): the next drain takes it.
    assert drain_events(session_factory, stripe_down()).outcomes == 1


def test_the_flag_publishes_one_drain_per_burst_and_again_once_a_drain_started(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.delete(DRAIN_PENDING_KEY)
    requests = DrainRequests(client)
    published: list[str] = []
    assert [requests.request(lambda: published.append("drain")) for _ in range(3)] == [True, False, False]
    assert published == ["drain"] and 0 < client.ttl(DRAIN_PENDING_KEY) <= 5
    requests.clear()  # what a drain does before its first look at the table
    assert requests.request(lambda: published.append("drain")) is True
    assert published == ["drain", "drain"]

    def broker_down() -> None:
        raise ConnectionError("broker down")

    requests.clear()
    with pytest.raises(ConnectionError):
        requests.request(broker_down)
    # Not published, so not pending: the next event publishes.
    assert client.exists(DRAIN_PENDING_KEY) == 0
    client.delete(DRAIN_PENDING_KEY)
