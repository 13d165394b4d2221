"""Fixtures shared by every test: databases on SQLite and on a throwaway PostgreSQL."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.database import make_engine
from shared.adapters.migrate import upgrade
from tests.support.services import PostgresServer, RedisServer

# The tests never read a developer's .env or var/: everything they need is set here or per test.
os.environ.setdefault("OFFSESSION_API_TOKEN", "test-api-token")
os.environ.setdefault("SECRET_KEY", "test-secret-key")

# The tests that start real processes (gunicorn, Celery workers, chromium, the chaos and batch runs) and
# time what they wait for still run one after the other: `make test` runs the suite on two processes
# (pytest-xdist, `-n 2 --dist loadgroup`) and the scheduler below sends every one of them to the same
# process, in order, as one group, while the in-process tests are spread over both.
REAL_PROCESS_TESTS = ("tests/integration/", "tests/browser/")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: inert when xdist is not loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    # The group is named here from the test's path, not by xdist_group marks: pytest-xdist 3.8 carries a
    # mark's group in the node id, which pytest 9.2's node ids no longer let it change (pytest-xdist
    # issue #1386), so marked tests would be spread like the others.
    from xdist.scheduler import LoadGroupScheduling

    class RealProcessesTogether(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(REAL_PROCESS_TESTS):
                return "real processes"
            return super()._split_scope(nodeid)

    return RealProcessesTogether(config, log)


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


# A migrated database costs a copy of one migrated once per session (a file copy on SQLite, CREATE DATABASE
# ... TEMPLATE on PostgreSQL), not a run of every migration per test; tests/shared/adapters/test_migrations.py
# runs the migrations themselves. The URLs of the databases made that way: `migrated_engine` leaves them be.
_COPIED_FROM_TEMPLATE: set[str] = set()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head, to be copied (never opened by a test)."""
    path = tmp_path_factory.mktemp("migrated") / "template.db"
    upgrade(f"sqlite:///{path}")  # its engine is disposed: the WAL is checkpointed into the file
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> str:
    """The name of a PostgreSQL database migrated to head, to be copied (nobody stays connected to it)."""
    url = postgres_server.create_database("migrated")
    upgrade(url)
    return url.rsplit("/", 1)[1]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of each kind, one per test: empty, or already migrated when the test uses
    `migrated_engine` (a copy of the session's migrated template)."""
    migrated = "migrated_engine" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        url = f"sqlite:///{path}"
        if migrated:
            shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
            _COPIED_FROM_TEMPLATE.add(url)
        return url
    server: PostgresServer = request.getfixturevalue("postgres_server")
    if not migrated:
        return server.create_database()
    url = server.create_database(template=request.getfixturevalue("postgres_template"))
    _COPIED_FROM_TEMPLATE.add(url)
    return url


@pytest.fixture
def migrated_engine(database_url: str) -> Iterator[Engine]:
    if database_url not in _COPIED_FROM_TEMPLATE:  # a database_url of a test's own making
        upgrade(database_url)
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
def sqlite_session(tmp_path: Path, sqlite_template: Path) -> Iterator[Session]:
    """A migrated SQLite database only, for fast domain tests that need a session."""
    path = tmp_path / "unit.db"
    shutil.copyfile(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    with sessionmaker(bind=engine, expire_on_commit=False)() as s:
        yield s
    engine.dispose()
