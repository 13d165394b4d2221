"""Crashes and outages: a worker killed mid-charge, a broker that goes away. Each test runs its own
stack, since it breaks it on purpose."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import broker_url, stack_database
from tests.integration.test_pipeline import db_rows
from tests.support.services import RedisServer
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return stack_database(request.param, tmp_path_factory.mktemp("db"), request)


def wait_for(predicate, timeout: float = 30, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"gave up waiting after {timeout}s")


@pytest.fixture
def crash_stack(database: str, redis_server: RedisServer) -> Iterator[Stack]:
    st = Stack(database, broker_url(redis_server), workers=1, concurrency=1, lease_seconds=3)
    try:
        yield st
    finally:
        st.stop()


def test_worker_killed_after_stripe_charged_and_before_commit(crash_stack: Stack) -> None:
    st = crash_stack
    client = st.client_with_card()
    invoice = st.invoice(client["id"])
    # Stripe commits the charge at once but answers 3 s later: time to kill the worker in between.
    st.faults(response_delay_ms=3000)
    status, charge = st.charge(invoice["id"])
    assert status == 202
    wait_for(lambda: st.payment_intents_for(invoice["id"]))
    st.kill("worker0")
    st.faults(response_delay_ms=0)
    assert st.api("GET", f"/api/charges/{charge['id']}")[1]["status"] == "processing"
    time.sleep(3.5)  # the lease runs out
    st.cli("reconcile")
    final = st.api("GET", f"/api/charges/{charge['id']}")[1]
    assert final["status"] == "succeeded"
    pis = st.payment_intents_for(invoice["id"])
    assert len(pis) == 1 and pis[0]["status"] == "succeeded"
    assert final["payment_intent_id"] == pis[0]["id"]
    assert db_rows(st, "select count(*) from payment where invoice_id = :i", i=invoice["id"])[0][0] == 1
    # A new worker picks up the redelivered message: it must change nothing.
    st.start_worker(1)
    time.sleep(3)
    assert len(st.payment_intents_for(invoice["id"])) == 1
    assert db_rows(st, "select count(*) from payment where invoice_id = :i", i=invoice["id"])[0][0] == 1


def test_broker_down_while_admins_click(database: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    redis = RedisServer()
    st = Stack(database, f"{redis.url}/0", workers=1)
    try:
        clients = [st.client_with_card() for _ in range(3)]
        invoices = [st.invoice(c["id"]) for c in clients]
        redis.stop()
        started = time.monotonic()
        answers = [st.charge(inv["id"]) for inv in invoices]
        elapsed = time.monotonic() - started
        assert [status for status, _ in answers] == [202, 202, 202]
        assert elapsed < 15, f"clicks took {elapsed:.1f}s with the broker down"
        unpublished = db_rows(st, "select count(*) from outbox_message where published_at is null")[0][0]
        assert unpublished == 3
        time.sleep(1)
        assert all(st.api("GET", f"/api/charges/{b['id']}")[1]["status"] == "queued" for _, b in answers)
        redis.start()
        st.cli("reconcile")  # the relay beat runs every 5 s; run it now
        finals = [st.wait_charge(b["id"], timeout=90) for _, b in answers]
        assert [f["status"] for f in finals] == ["succeeded"] * 3
        for inv in invoices:
            assert len(st.payment_intents_for(inv["id"])) == 1
        # The worker rode out the outage itself (kombu's dead-channel bug is guarded in worker/).
        assert st.procs["worker0"].poll() is None
        assert "Unrecoverable error" not in st.log("worker0")
    finally:
        st.stop()
        redis.close()
