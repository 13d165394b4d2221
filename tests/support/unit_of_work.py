"""Units of work for tests (shared.services.ports.UnitOfWork)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.database import UnitOfWork
from shared.services.ports import PendingMessage, Publisher


class InSession:
    """A unit of work over a session the test holds (and commits): the messages it would publish after
    commit are kept in `to_publish`, for the test to look at or publish."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.to_publish: list[PendingMessage] = []

    def publish_after_commit(self, message: PendingMessage) -> None:
        self.to_publish.append(message)


def units(database: Engine | sessionmaker[Session], publish: Publisher) -> Callable[[], UnitOfWork]:
    """What bootstrap's Runtime.unit_of_work is, over a test's engine (or its sessionmaker's) and
    publisher."""
    engine = database if isinstance(database, Engine) else database.kw["bind"]
    return lambda: UnitOfWork(engine, publish)


def published() -> tuple[list[tuple[str, dict[str, Any]]], Publisher]:
    """A publisher that records (task name, payload) of every message instead of sending it."""
    sent: list[tuple[str, dict[str, Any]]] = []
    return sent, lambda name, payload, countdown: sent.append((name, payload))
