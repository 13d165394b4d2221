"""Crashes and outages: a worker killed mid-charge, a broker that goes away. Each test runs its own
stack, since it breaks it on purpose."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from tests.support.services import RedisServer
from tests.support.stack import Stack, broker_url, db_rows, stack_database
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return stack_database(request.param, tmp_path_factory.mktemp("db"), request)


# The whole promise, on the default configuration: a charge whose worker died is final within this.
SETTLED_WITHIN = 60.0
# How long the emulator holds a request: about when recovery replays it, so the replay may meet it still
# in flight (Stripe's 409) and must wait for the original's answer.
HELD_AT_STRIPE_MS = 20_000


# Webhooks held back at the emulator for the test's length: recovery, not Stripe's events, must settle.
NO_WEBHOOKS = {"webhook_delay_ms": 600_000}


def audit_trail(st: Stack, charge_id: str) -> list[tuple[str, str]]:
    """(actor, action) of every audit entry of the charge, in order."""
    rows = db_rows(
        st, "select actor, action from audit_event where charge_attempt_id = :c order by id", c=charge_id
    )
    return [(r[0], r[1]) for r in rows]


def one_payment_each(st: Stack, invoice_ids: list[int]) -> None:
    for invoice_id in invoice_ids:
        pis = st.payment_intents_for(invoice_id)
        assert [pi["status"] for pi in pis] == ["succeeded"], pis
        payments = db_rows(
            st, "select stripe_payment_intent_id from payment where invoice_id = :i", i=invoice_id
        )
        assert [p[0] for p in payments] == [pis[0]["id"]]


def test_a_killed_worker_s_charges_settle_within_a_minute_before_and_after_stripe_committed(
    database: str, redis_server: RedisServer
) -> None:
    """Default settings (no tuned lease), beat running. One worker holds two charges when it is SIGKILLed
    with its pool: Stripe has not executed the first yet (it holds the request before running it), and
    has committed the second but not answered. Both must be final within a minute of the kill, each with
    one PaymentIntent and one ledger row, though the first is still in flight when recovery replays it
    (Stripe's 409: recovery waits and replays again)."""
    st = Stack(database, broker_url(redis_server), workers=1, concurrency=2, beat=True)
    try:
        client = st.client_with_card()
        before_commit, after_commit = st.invoice(client["id"]), st.invoice(client["id"])
        sent = st.emulator_state()["requests"]["total"]
        st.faults(latency_ms=HELD_AT_STRIPE_MS, **NO_WEBHOOKS)
        status, first = st.charge(before_commit["id"])
        assert status == 202, first
        wait_until(
            lambda: st.emulator_state()["requests"]["total"] > sent, timeout=30, what="the request at Stripe"
        )
        st.faults(latency_ms=0, response_delay_ms=HELD_AT_STRIPE_MS)
        status, second = st.charge(after_commit["id"])
        assert status == 202, second
        wait_until(lambda: st.payment_intents_for(after_commit["id"]), timeout=30, what="Stripe's commit")
        st.kill("worker0")
        killed_at = time.monotonic()
        st.faults(response_delay_ms=0)
        st.start_worker(1)  # the supervisor's restart
        for charge in (first, second):
            assert st.api("GET", f"/api/charges/{charge['id']}")[1]["status"] == "processing"
        finals = [
            st.wait_charge(c["id"], timeout=max(1.0, SETTLED_WITHIN - (time.monotonic() - killed_at)))
            for c in (first, second)
        ]
        assert [f["status"] for f in finals] == ["succeeded", "succeeded"]
        for charge in (first, second):
            assert ("janitor", "charge.succeeded") in audit_trail(st, charge["id"])
        one_payment_each(st, [before_commit["id"], after_commit["id"]])
    finally:
        st.stop()


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_killed_pool_process_s_charge_is_taken_over_by_its_redelivery(
    database: str, redis_server: RedisServer
) -> None:
    """Only the pool process dies: Celery re-sends its message (task_retry_on_worker_lost), and that
    delivery, finding the holder's process gone, replays the charge under its key at once instead of
    waiting for the lease to lapse and the recovery sweep."""
    st = Stack(database, broker_url(redis_server), workers=1, concurrency=1)  # no beat: no sweep at all
    try:
        client = st.client_with_card()
        invoice = st.invoice(client["id"])
        st.faults(response_delay_ms=HELD_AT_STRIPE_MS, **NO_WEBHOOKS)
        status, charge = st.charge(invoice["id"])
        assert status == 202, charge
        wait_until(lambda: st.payment_intents_for(invoice["id"]), timeout=30, what="the PaymentIntent")
        owner = db_rows(st, "select lease_owner from charge_attempt where id = :c", c=charge["id"])[0][0]
        holder = int(owner.split("/")[1])
        assert holder in st.pids("worker0") and holder != st.procs["worker0"].pid
        os.kill(holder, signal.SIGKILL)
        st.faults(response_delay_ms=0)
        final = st.wait_charge(charge["id"], timeout=SETTLED_WITHIN)
        assert final["status"] == "succeeded"
        trail = audit_trail(st, charge["id"])
        assert trail[-2:] == [("worker", "charge.taken_over"), ("worker", "charge.succeeded")], trail
        one_payment_each(st, [invoice["id"]])
        assert st.procs["worker0"].poll() is None  # the worker itself carried on
    finally:
        st.stop()


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_queued_charge_whose_message_was_deleted_is_charged_within_30_seconds(
    database: str, redis_server: RedisServer
) -> None:
    url = broker_url(redis_server)
    st = Stack(database, url, workers=1, charge_workers=1, beat=True)
    broker = redis.Redis.from_url(url)
    try:
        client = st.client_with_card()
        invoice = st.invoice(client["id"])
        st.kill("charges0")  # nobody takes the message before it is deleted
        status, charge = st.charge(invoice["id"])
        assert status == 202, charge
        wait_until(lambda: broker.llen("charges"), timeout=30, what="the charge's message in the queue")
        assert broker.delete("charges") == 1
        deleted_at = time.monotonic()
        st.start_charge_worker(1)
        final = st.wait_charge(charge["id"], timeout=30)
        assert final["status"] == "succeeded", final
        assert time.monotonic() - deleted_at < 30
        one_payment_each(st, [invoice["id"]])
    finally:
        broker.close()
        st.stop()


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
        # Each click tried to publish, failed, and left its message for the relay: the charges wait.
        unpublished = db_rows(
            st, "select count(*) from outbox_message where published_at is null and last_error is not null"
        )[0][0]
        assert unpublished == 3
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
