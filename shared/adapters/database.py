"""The database: engines, sessions, and the unit of work that publishes its messages after commit.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every transaction starts
with BEGIN IMMEDIATE: a deferred transaction that later wants to write can fail at once with
'database is locked' however long the busy timeout is, which would lose a click.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared.services.outbox import publish_committed
from shared.services.ports import PendingMessage, Publisher, SessionFactory

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A process that runs one thing at a time (a gunicorn sync worker, a prefork child) uses one connection;
# the overflow covers the odd nested session. Threaded workers size theirs with pool_limits_for_threads().
DEFAULT_POOL_SIZE = 5
DEFAULT_MAX_OVERFLOW = 10


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)
        _tune_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", DEFAULT_POOL_SIZE)
    kwargs.setdefault("max_overflow", DEFAULT_MAX_OVERFLOW)
    return create_engine(url, **kwargs)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def pool_limits_for_threads(threads: int) -> dict[str, int]:
    """make_engine()'s pool limits for a process running `threads` tasks at once (a threads-pool worker).
    Every thread may keep a connection (pool_size = threads): past pool_size the overflow connections
    are closed on return and reopened by the next transaction, a PostgreSQL backend started per charge.
    Connections open on demand, so the count reaches `threads` only when every thread is inside a
    transaction at once; count `threads` per such process against max_connections all the same."""
    if threads < 1:
        raise ValueError("threads must be >= 1")
    return {"pool_size": threads, "max_overflow": 0}


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: SessionFactory) -> Iterator[Session]:
    """One transaction: commit when the block ends normally, roll back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def one_checkout(engine: Engine) -> Iterator[SessionFactory]:
    """A session factory whose sessions all run on one pooled connection, checked out (and pre-pinged)
    once: for a request that commits and then writes again (a click's transaction, then its outbox
    row's published mark), one pool checkout and one ping round trip fewer than two session_scope()s."""
    with engine.connect() as connection:
        # A session bound to a connection that is not in a transaction begins and commits its own. Not a
        # sessionmaker: each of those defines a Session subclass, whose event setup costs more than a ping.
        yield partial(Session, bind=connection, expire_on_commit=False)


class UnitOfWork:
    """One transaction on one pooled connection, whose outbox messages are published once it has
    committed (shared.services.ports.UnitOfWork).

    `with UnitOfWork(engine, publish) as uow:` commits when the block ends normally and rolls back when
    it raises. The connection is checked out (and pre-pinged) once for the transaction and for the
    published mark after it. A message that fails to publish stays in the outbox for the relay.
    """

    def __init__(self, engine: Engine, publish: Publisher) -> None:
        self._engine = engine
        self._publish = publish
        self._pending: list[PendingMessage] = []

    def publish_after_commit(self, message: PendingMessage) -> None:
        self._pending.append(message)

    def __enter__(self) -> UnitOfWork:
        self._checkout = one_checkout(self._engine)
        self._factory = self._checkout.__enter__()
        self.session = self._factory()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            try:
                if exc_type is None:
                    self.session.commit()
                else:
                    self.session.rollback()
            finally:
                self.session.close()
            if exc_type is None and self._pending:
                publish_committed(self._factory, self._publish, self._pending)
        finally:
            self._pending = []
            self._checkout.__exit__(None, None, None)
