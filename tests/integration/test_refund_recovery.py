"""Refunds among real processes: two clicks at once make one refund, and a worker killed after Stripe
accepted a refund (before it could record the answer) is settled by the janitor under the refund's own
key: one refund at Stripe, one ledger entry."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.support.services import RedisServer
from tests.support.stack import Stack, broker_url, db_rows, stack_database
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

HELD_AT_STRIPE_MS = 30_000
# Webhooks held back for the test's length: the janitor, not Stripe's events, must settle the refund.
NO_WEBHOOKS = {"webhook_delay_ms": 600_000}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return stack_database(request.param, tmp_path_factory.mktemp("db"), request)


def _backdate_refund(st: Stack, refund_id: str) -> None:
    """As if the refund had been left alone for five minutes (the janitor leaves younger ones be)."""
    engine = create_engine(st.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("update refund set updated_at = :t where id = :r"),
                {"t": datetime.now(UTC) - timedelta(minutes=5), "r": refund_id},
            )
    finally:
        engine.dispose()


def _ours_at_stripe(st: Stack, refund_id: str) -> list[dict[str, Any]]:
    return [r for r in st.emulator_state()["refunds"] if r["metadata"].get("refund_id") == refund_id]


def test_two_clicks_make_one_refund_and_a_worker_killed_after_stripe_accepted_it_is_settled_by_the_janitor(
    database: str, redis_server: RedisServer
) -> None:
    st = Stack(database, broker_url(redis_server), workers=1)
    try:
        invoice = st.invoice(st.client_with_card()["id"], total=10_000)
        status, charge = st.charge(invoice["id"])
        assert status == 202, charge
        assert st.wait_charge(charge["id"])["status"] == "succeeded"

        st.faults(response_delay_ms=HELD_AT_STRIPE_MS, **NO_WEBHOOKS)
        url = f"/api/charges/{charge['id']}/refunds"
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: st.api("POST", url, {"reason": "duplicate"}), range(2)))
        if sorted(status for status, _ in answers) != [202, 409]:
            st.dump_logs()
        assert sorted(status for status, _ in answers) == [202, 409], answers
        refund_id = next(body["id"] for status, body in answers if status == 202)
        refused = next(body for status, body in answers if status == 409)
        assert refused["error"] in ("refund_in_progress", "nothing_refundable"), refused

        # Stripe has made the refund and holds its answer: the worker dies before it hears it.
        wait_until(lambda: _ours_at_stripe(st, refund_id), timeout=30, what="the refund at Stripe")
        st.kill("worker0")
        st.faults(response_delay_ms=0)
        assert [tuple(r) for r in db_rows(st, "select status, stripe_refund_id from refund")] == [
            ("pending", None)
        ]

        _backdate_refund(st, refund_id)
        result = st.cli("reconcile")
        assert "refunds settled: 1 succeeded" in result.stdout + result.stderr, result
        [at_stripe] = _ours_at_stripe(st, refund_id)
        assert len(st.emulator_state()["refunds"]) == 1  # the replay under the same key made no second
        rows = db_rows(st, "select status, stripe_refund_id, amount from refund")
        assert [tuple(r) for r in rows] == [("succeeded", at_stripe["id"], 10_000)]
        ledger = db_rows(
            st,
            "select amount, stripe_refund_id from payment where invoice_id = :i order by id",
            i=invoice["id"],
        )
        assert [tuple(r) for r in ledger] == [(10_000, None), (-10_000, at_stripe["id"])]
        status, body = st.api("GET", f"/api/refunds/{refund_id}")
        assert status == 200 and body["status"] == "succeeded"
    finally:
        st.stop()
