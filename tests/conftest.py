"""Fixtures shared by every test: databases on SQLite and on a throwaway PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.database import make_engine
from shared.adapters.migrate import upgrade
from tests.support.services import PostgresServer, RedisServer

# The tests never read a developer's .env or var/: everything they need is set here or per test.
os.environ.setdefault("OFFSESSION_API_TOKEN", "test-api-token")
os.environ.setdefault("SECRET_KEY", "test-secret-key")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


# The SQLite database as the migrations leave it, made once per process and copied for each test: the
# migrations run for every test would be half of a fast test's time (and of each mutant's under mutmut).
_MIGRATED_SQLITE: list[bytes] = []


def migrate(database_url: str) -> None:
    """Bring an empty database to the head revision: PostgreSQL by the migrations, SQLite by a copy of a
    file they made (the engine that wrote it is disposed, so the file holds everything)."""
    if not database_url.startswith("sqlite:///"):
        upgrade(database_url)
        return
    path = Path(database_url.removeprefix("sqlite:///"))
    if not _MIGRATED_SQLITE:
        upgrade(database_url)
        _MIGRATED_SQLITE.append(path.read_bytes())
    else:
        path.write_bytes(_MIGRATED_SQLITE[0])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind, one per test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def migrated_engine(database_url: str) -> Iterator[Engine]:
    migrate(database_url)
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def session_factory(migrated_engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=migrated_engine, expire_on_commit=False)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as s:
        yield s
        s.rollback()


@pytest.fixture
def sqlite_session(tmp_path: Path) -> Iterator[Session]:
    """A migrated SQLite database only, for fast domain tests that need a session."""
    url = f"sqlite:///{tmp_path / 'unit.db'}"
    migrate(url)
    engine = make_engine(url)
    with sessionmaker(bind=engine, expire_on_commit=False)() as s:
        yield s
    engine.dispose()
