"""Integration fixtures: the whole stack of real processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import RedisServer
from tests.support.stack import Stack, broker_url, stack_database


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
