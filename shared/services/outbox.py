"""The transactional outbox: what must reach Celery is written with the change it belongs to.

Publishing happens after commit (the web app at once, the relay for whatever that missed). A message
published twice is harmless: every task claims its row before acting.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import OutboxMessage, table_of, utcnow
from shared.services.ports import PendingMessage, Publisher, SessionFactory, UnitOfWork

# Task names: the contract between shared/ (which writes them) and worker/ (which registers them).
TASK_CHARGE_ATTEMPT = "offsession.charge_attempt"
# Several attempts in one message (the batch: shared.services.charge_batches).
TASK_CHARGE_ATTEMPTS = "offsession.charge_attempts"
TASK_PROCESS_WEBHOOK_EVENT = "offsession.process_webhook_event"
TASK_NOTIFY_CHARGE = "offsession.notify_charge"
TASK_SEND_LOGIN_LINK = "offsession.send_login_link"


RELAY_BATCH = 500


def enqueue(
    session: Session, task_name: str, payload: dict[str, Any], available_at: datetime | None = None
) -> OutboxMessage:
    message = OutboxMessage(task_name=task_name, payload=payload, available_at=available_at)
    session.add(message)
    return message


# The Table, not the mapped class: a Core INSERT skips the ORM's bulk-insert machinery. Built once (see
# _MARK_PUBLISHED below), the values bound at each call.
_INSERT_RETURNING_ID = insert(table_of(OutboxMessage)).returning(table_of(OutboxMessage).c.id)


def enqueue_row(
    session: Session, task_name: str, payload: dict[str, Any], available_at: datetime | None = None
) -> int:
    """enqueue() as one INSERT ... RETURNING id, without an ORM object: for a hot path that only needs
    the id (to publish the message once committed). Returns the row's id."""
    return session.execute(
        _INSERT_RETURNING_ID, {"task_name": task_name, "payload": payload, "available_at": available_at}
    ).scalar_one()


def enqueue_after_commit(
    uow: UnitOfWork, task_name: str, payload: dict[str, Any], available_at: datetime | None = None
) -> PendingMessage:
    """Write the message in the unit of work's transaction; the unit of work publishes it once committed
    (or the relay does, should that fail or `available_at` be later)."""
    message = PendingMessage(enqueue_row(uow.session, task_name, payload, available_at), task_name, payload)
    if available_at is None:
        uow.publish_after_commit(message)
    return message


def publish_messages(
    factory: sessionmaker[Session],
    publish: Publisher,
    message_ids: Iterable[int],
    now: datetime | None = None,
) -> int:
    """Publish the given rows if still unpublished; a failure leaves them for the relay. Returns count."""
    ids = list(message_ids)
    if not ids:
        return 0
    with factory() as session:
        rows = session.scalars(
            select(OutboxMessage).where(OutboxMessage.id.in_(ids), OutboxMessage.published_at.is_(None))
        ).all()
        pending = [PendingMessage(r.id, r.task_name, dict(r.payload)) for r in rows]
        session.rollback()
    return _publish(factory, publish, pending, now or utcnow())


def publish_committed(
    factory: SessionFactory,
    publish: Publisher,
    messages: Iterable[PendingMessage],
    now: datetime | None = None,
) -> int:
    """Publish messages this process has just committed, without reading them back first (the click's
    path: one round trip fewer). Should the relay have published one meanwhile, it goes out twice,
    which every task tolerates. A failure leaves them for the relay. Returns count."""
    return _publish(factory, publish, list(messages), now or utcnow())


def relay_outbox(factory: sessionmaker[Session], publish: Publisher, now: datetime | None = None) -> int:
    """Publish every unpublished row whose time has come (the beat relay). Returns how many went out."""
    moment = now or utcnow()
    total = 0
    while True:
        with factory() as session:
            rows = session.scalars(
                select(OutboxMessage)
                .where(
                    OutboxMessage.published_at.is_(None),
                    or_(OutboxMessage.available_at.is_(None), OutboxMessage.available_at <= moment),
                )
                .order_by(OutboxMessage.id)
                .limit(RELAY_BATCH)
            ).all()
            pending = [PendingMessage(r.id, r.task_name, dict(r.payload)) for r in rows]
            session.rollback()
        if not pending:
            return total
        sent = _publish(factory, publish, pending, moment)
        total += sent
        if sent < len(pending) or len(pending) < RELAY_BATCH:
            return total


_OUTBOX = table_of(OutboxMessage)
# Built once, on the Table (a Core UPDATE, no ORM session synchronisation): composing it per click cost
# as much CPU as executing it.
_MARK_PUBLISHED = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(published_at=bindparam("now"), publish_attempts=_OUTBOX.c.publish_attempts + 1)
)


def _publish(
    factory: SessionFactory, publish: Publisher, pending: list[PendingMessage], now: datetime
) -> int:
    published: list[int] = []
    failure: tuple[int, str] | None = None
    for message in pending:
        try:
            publish(message.task_name, message.payload, None)
        except Exception as exc:  # the broker is down: stop, the relay tries again later
            failure = (message.id, f"{type(exc).__name__}: {exc}"[:500])
            break
        published.append(message.id)
    with factory() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            # Each UPDATE stands alone (either row is right without the other): autocommit spares the
            # BEGIN and COMMIT round trips on every click. SQLite keeps its BEGIN IMMEDIATE (shared/db).
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        if published:
            # One UPDATE, not a SELECT and an UPDATE per row.
            session.execute(_MARK_PUBLISHED, {"ids": published, "now": now})
        if failure is not None:
            row = session.get(OutboxMessage, failure[0])
            if row is not None:
                row.publish_attempts += 1
                row.last_error = failure[1]
    return len(published)


def prune_published(session: Session, older_than: datetime) -> int:
    """Delete rows published before `older_than`; the outbox is a queue, not an archive."""
    rows = session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.published_at.is_not(None), OutboxMessage.published_at < older_than)
        .limit(10_000)
    ).all()
    for row in rows:
        session.delete(row)
    return len(rows)
