"""Publishing a click's outbox message after commit (the enqueue path tuned for speed): what the rows
record when the broker takes it, when it refuses it, and that the connection goes back to the pool as
it came (the mark-published UPDATE runs in autocommit on PostgreSQL)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.database import UnitOfWork
from shared.domain.models import OutboxMessage
from shared.services import outbox
from shared.services.charge_requests import load_invoice_for_charge, request_charge
from shared.services.ports import PendingMessage
from shared.services.settings import update_settings
from tests.support.factories import make_client, make_invoice
from tests.support.unit_of_work import InSession, published


def _open_charge(factory: sessionmaker[Session], n: int) -> PendingMessage:
    with factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        invoice = make_invoice(s, make_client(s, n), n)
        s.flush()
        uow = InSession(s)
        request_charge(uow, invoice, source="admin", requested_by="test")
        (message,) = uow.to_publish
        return message


def test_the_message_to_publish_is_the_row_request_charge_wrote(
    session_factory: sessionmaker[Session],
) -> None:
    message = _open_charge(session_factory, 1)
    with session_factory() as s:
        row = s.get_one(OutboxMessage, message.id)
        assert (row.task_name, row.payload) == (message.task_name, message.payload)
        assert row.published_at is None


def test_published_messages_are_marked_once_and_the_relay_skips_them(
    session_factory: sessionmaker[Session],
) -> None:
    messages = [_open_charge(session_factory, n) for n in (1, 2)]
    sent, publish = published()
    assert outbox.publish_committed(session_factory, publish, messages) == 2
    assert sent == [(m.task_name, m.payload) for m in messages]
    with session_factory() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [(r.publish_attempts, r.published_at is not None, r.last_error) for r in rows] == [
            (1, True, None),
            (1, True, None),
        ]
    assert outbox.relay_outbox(session_factory, publish) == 0
    assert len(sent) == 2


def test_a_refused_publish_is_recorded_and_left_for_the_relay(session_factory: sessionmaker[Session]) -> None:
    messages = [_open_charge(session_factory, n) for n in (1, 2)]

    def broker_down(task_name: str, payload: dict[str, Any], countdown: float | None) -> None:
        raise ConnectionError("redis is down")

    assert outbox.publish_committed(session_factory, broker_down, messages) == 0
    with session_factory() as s:
        first, second = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert (first.published_at, first.publish_attempts) == (None, 1)
        assert first.last_error == "ConnectionError: redis is down"
        # The publisher stops at the first failure: the second was not tried.
        assert (second.published_at, second.publish_attempts, second.last_error) == (None, 0, None)
    sent, publish = published()
    assert outbox.relay_outbox(session_factory, publish) == 2
    assert [payload for _, payload in sent] == [m.payload for m in messages]


@pytest.mark.parametrize("broker_up", [True, False])
def test_the_pooled_connection_is_transactional_again_afterwards(
    session_factory: sessionmaker[Session], broker_up: bool
) -> None:
    message = _open_charge(session_factory, 1)

    def publish(task_name: str, payload: dict[str, Any], countdown: float | None) -> None:
        if not broker_up:
            raise ConnectionError("redis is down")

    outbox.publish_committed(session_factory, publish, [message])
    # The next unit of work on the same pooled connection: a rollback must undo its writes.
    with session_factory() as s:
        outbox.enqueue(s, outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": "rolled-back"})
        s.flush()
        s.rollback()
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 1


@pytest.mark.parametrize("commits", [True, False])
def test_a_unit_of_work_publishes_its_messages_once_committed_and_never_after_a_rollback(
    migrated_engine: Engine, session_factory: sessionmaker[Session], commits: bool
) -> None:
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        make_invoice(s, make_client(s, 1), 1)
    sent, publish = published()
    with contextlib.suppress(LookupError), UnitOfWork(migrated_engine, publish) as uow:
        invoice = load_invoice_for_charge(uow.session, 1, lock=True)
        assert invoice is not None
        attempt = request_charge(uow, invoice, source="admin", requested_by="test")
        assert sent == []  # nothing leaves before the commit
        if not commits:
            raise LookupError("the request fails after the charge was written")
    assert sent == ([("offsession.charge_attempt", {"attempt_id": attempt.id})] if commits else [])
    with session_factory() as s:
        rows = s.scalars(select(OutboxMessage)).all()
        assert [r.published_at is not None for r in rows] == ([True] if commits else [])
