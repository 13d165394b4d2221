"""A payment_intent event racing the worker that records the same PaymentIntent (PostgreSQL, two real
sessions): found by its metadata while the worker's transaction still holds the attempt, it must be
applied as the attempt's own once the worker commits, never flagged as another PaymentIntent.

Under READ COMMITTED the lookup by PaymentIntent id misses the worker's uncommitted write, the lookup by
metadata then waits for the worker's row lock and returns the row as committed: with this very
PaymentIntent id on it (shared.services.webhooks.find_attempt). Seen once in a loaded full run as a
`webhook.flagged` audit entry on a charge that had succeeded."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.binding import Mismatch
from shared.domain.models import ChargeAttempt, utcnow
from shared.services.charge_requests import request_charge
from shared.services.charging import charge_request_for, claim_attempt
from shared.services.settings import update_settings
from shared.services.webhooks import find_attempt
from tests.support.factories import make_client, make_invoice
from tests.support.fake_stripe import FakeStripe
from tests.support.services import PostgresServer
from tests.support.unit_of_work import InSession
from tests.support.waiting import sessions_waiting_for_a_lock, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """PostgreSQL only: SQLite locks the whole file, so the interleaving cannot happen there."""
    return postgres_server.create_database()


def test_an_event_found_by_metadata_while_the_worker_records_its_payment_intent_is_the_attempts_own(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        client = make_client(s, 1)
        client.stripe_customer_id = stripe.ensure_customer(client.name, client.email, idempotency_key="c:1")
        card = stripe.attach_payment_method(client.stripe_customer_id, "pm_card_visa", idempotency_key="p:1")
        client.cards[0].stripe_payment_method_id = card.payment_method_id
        invoice = make_invoice(s, client, 1)
        s.flush()
        attempt_id = request_charge(InSession(s), invoice, source="admin", requested_by="test").id
    with session_factory() as s, s.begin():
        claimed = claim_attempt(s, attempt_id, now=utcnow(), lease_seconds=60)
        assert isinstance(claimed, tuple)
        request = charge_request_for(*claimed)
    payment_intent_id = stripe.create_offsession_payment_intent(request).payment_intent_id
    assert payment_intent_id is not None
    view = stripe.retrieve_payment_intent(payment_intent_id)
    assert view.metadata["charge_attempt_id"] == attempt_id

    found: list[ChargeAttempt | Exception] = []

    def webhook() -> None:
        with session_factory() as s, s.begin():
            try:
                found.append(find_attempt(s, view, None))
            except Mismatch as mismatch:
                found.append(mismatch)

    with session_factory() as worker, worker.begin():
        # The worker records the PaymentIntent and holds the row until it commits.
        worker.execute(
            update(ChargeAttempt)
            .where(ChargeAttempt.id == attempt_id)
            .values(payment_intent_id=payment_intent_id, status="succeeded")
        )
        thread = threading.Thread(target=webhook)
        thread.start()
        wait_until(
            lambda: sessions_waiting_for_a_lock(session_factory),
            timeout=10,
            what="the webhook's lookup waiting for the worker's row lock",
        )
    thread.join(timeout=10)
    assert len(found) == 1
    assert isinstance(found[0], ChargeAttempt), found[0]
    assert found[0].id == attempt_id and found[0].payment_intent_id == payment_intent_id

