"""Engine and the one unit-of-work helper that web and worker both use.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every transaction starts
with BEGIN IMMEDIATE: a deferred transaction that later wants to write can fail at once with
'database is locked' however long the busy timeout is, which would lose a click.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from shared.config import get_config
from shared.services.ports import SessionFactory

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A process that runs one thing at a time (a gunicorn sync worker, a prefork child) uses one connection;
# the overflow covers the odd nested session. Threaded workers resize with size_pool_for_threads().
DEFAULT_POOL_SIZE = 5
DEFAULT_MAX_OVERFLOW = 10
_pool_limits: dict[str, int] = {}


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


def size_pool_for_threads(threads: int) -> None:
    """Size the process's engine for `threads` threads running tasks at once (a threads-pool worker);
    call before the first get_engine(). Every thread may keep a connection (pool_size = threads): past
    pool_size the overflow connections are closed on return and reopened by the next transaction, a
    PostgreSQL backend started per charge. Connections open on demand, so the count reaches `threads`
    only when every thread is inside a transaction at once; count `threads` per such process against
    max_connections all the same."""
    if threads < 1:
        raise ValueError("threads must be >= 1")
    _pool_limits.update(pool_size=threads, max_overflow=0)
    reset_engine_cache()  # an engine built before this call would keep the default limits


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    return make_engine(get_config().database_url, **_pool_limits)


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope(factory: SessionFactory | None = None) -> Iterator[Session]:
    """One unit of work: commit when the block ends normally, roll back when it raises."""
    session = (factory or get_sessionmaker())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def one_checkout(engine: Engine | None = None) -> Iterator[SessionFactory]:
    """A session factory whose sessions all run on one pooled connection, checked out (and pre-pinged)
    once: for a request that commits and then writes again (a click's transaction, then its outbox
    row's published mark), one pool checkout and one ping round trip fewer than two session_scope()s."""
    with (engine or get_engine()).connect() as connection:
        # A session bound to a connection that is not in a transaction begins and commits its own. Not a
        # sessionmaker: each of those defines a Session subclass, whose event setup costs more than a ping.
        yield partial(Session, bind=connection, expire_on_commit=False)


def reset_engine_cache() -> None:
    """Forget the cached engine (tests, and after fork in worker processes)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
