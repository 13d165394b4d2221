"""The Procfile's production shape: the charges queue has a worker of its own on a threads
pool, so many Stripe calls are in flight at once; the prefork worker keeps webhooks and maintenance."""

from __future__ import annotations

import pytest

from tests.support.services import PostgresServer, RedisServer
from tests.support.stack import Stack, broker_url

CHARGES = 8
LATENCY_MS = 2_000


@pytest.mark.postgres
def test_charges_run_at_once_on_the_threads_worker(
    postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    st = Stack(
        postgres_server.create_database("chargeworker"),
        broker_url(redis_server),
        workers=1,
        concurrency=1,
        charge_workers=1,
        charge_concurrency=CHARGES,
        lease_seconds=30,
    )
    try:
        client = st.client_with_card("pm_card_visa")
        invoices = [st.invoice(client["id"], total=1_000 + n) for n in range(CHARGES)]
        # Every Stripe request now takes 2 s: one after the other, the creations would span >= 14 s.
        st.faults(latency_ms=LATENCY_MS)
        charge_ids = []
        for invoice in invoices:
            status, body = st.charge(invoice["id"])
            assert status == 202, body
            charge_ids.append(body["id"])
        finals = [st.wait_charge(charge_id, timeout=90) for charge_id in charge_ids]
        assert [charge["status"] for charge in finals] == ["succeeded"] * CHARGES

        created = sorted(
            int(pi["created"]) for invoice in invoices for pi in st.payment_intents_for(invoice["id"])
        )
        assert len(created) == CHARGES  # one PaymentIntent per invoice
        # The emulator stamps `created` after the latency: the requests waited on it side by side.
        assert created[-1] - created[0] <= (LATENCY_MS / 1000) * 3
        charges_log, prefork_log = st.log("charges0"), st.log("worker0")
        assert all(charge_id in charges_log for charge_id in charge_ids)
        # Its banner lists every task; a received charge would be logged as "Task <name>[<id>] received".
        assert "Task offsession.charge_attempt[" not in prefork_log
    finally:
        st.stop()
