"""Integration fixtures: the whole stack of real processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import PostgresServer, RedisServer
from tests.support.stack import Stack

_redis_db = itertools.count(1)


def broker_url(redis_server: RedisServer) -> str:
    # A database number per stack, so one stack's leftover messages never reach another's workers.
    return f"{redis_server.url}/{next(_redis_db) % 16}"


def stack_database(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'stack.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database("stack")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Stack]:
    """One running stack per database kind, shared by the tests of a module."""
    url = stack_database(request.param, tmp_path_factory.mktemp("db"), request)
    st = Stack(url, broker_url(redis_server), workers=1)
    try:
        yield st
    finally:
        st.stop()
