"""Integration fixtures: the whole stack of real processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import RedisServer
from tests.support.stack import Stack, broker_url, stack_database

# Renewed every third of it (shared/services/leases.py): a lease lapses only if its holder stalls this long.
STACK_LEASE_SECONDS = 5.0


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Stack]:
    """One running stack per database kind, shared by the tests of a module. Its charge lease is short:
    a redelivered message that finds a charge's lease held looks again once the lease would lapse
    (test_pipeline.py's duplicated message waits for those looks); the default lease is
    test_recovery.py's, on stacks of its own."""
    url = stack_database(request.param, tmp_path_factory.mktemp("db"), request)
    st = Stack(url, broker_url(redis_server), workers=1, lease_seconds=STACK_LEASE_SECONDS)
    try:
        yield st
    finally:
        st.stop()
