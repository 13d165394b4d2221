"""The worker's last look, and what may never replace it (shared/services/charging.py claim_attempt,
shared/services/janitor.py).

Before its first call to Stripe, a worker cancels a charge whose invoice can no longer be charged (paid,
void, Stripe disconnected, card payments off, its card removed). A charge that may already have reached
Stripe is never canceled that way: only a replay under its own key says what happened. FakeStripe
(tests/support/fake_stripe.py) stands in for Stripe; the clock and the worker's name are the model's
(tests/support/charge_model.py).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import ChargeAttempt, Client, Invoice, Payment
from shared.services import charging, clients, invoices
from shared.services.attempts import apply_outcome, lock_attempt
from shared.services.charge_requests import idempotency_key_for, load_invoice_for_charge, request_charge
from shared.services.janitor import recover_charges, run_janitor
from shared.services.settings import update_settings
from tests.support.charge_model import LEASE_SECONDS, START
from tests.support.fake_stripe import FakeClock, FakeStripe, WorkerCrashed
from tests.support.unit_of_work import InSession
from tests.support.waiting import sessions_waiting_for_a_lock, wait_until

CREATE = "create_offsession_payment_intent"


def queued_charge(factory: sessionmaker[Session], stripe: FakeStripe, token: str = "pm_card_visa") -> str:
    """A connected business, a client with a saved card, an invoice of 5,000 and its charge, queued."""
    with factory() as session, session.begin():
        update_settings(session, "admin", stripe_connected=True)
    client_id = clients.create_client(factory, stripe, name="Ada", email="ada@example.com", actor="admin")
    clients.add_card(factory, stripe, client_id, token, actor="admin")
    with factory() as session, session.begin():
        invoice = invoices.create_invoice(
            session,
            session.get_one(Client, client_id),
            number="L-1",
            currency="usd",
            total=5_000,
            due_date=START.date(),
            actor="admin",
        )
        session.flush()
        loaded = load_invoice_for_charge(session, invoice.id, lock=True)
        assert loaded is not None
        return request_charge(InSession(session), loaded, source="admin", requested_by="admin").id


def run(
    factory: sessionmaker[Session], stripe: FakeStripe, attempt_id: str, clock: FakeClock
) -> charging.RunReport:
    return charging.run_attempt(
        factory, stripe, attempt_id, lease_seconds=LEASE_SECONDS, max_transient_retries=3, now=clock.now()
    )


def attempt_row(factory: sessionmaker[Session], attempt_id: str) -> ChargeAttempt:
    with factory() as session:
        attempt = session.get_one(ChargeAttempt, attempt_id)
        session.expunge_all()
        return attempt


def creates(stripe: FakeStripe) -> list[str | None]:
    """The idempotency key of every PaymentIntent create that reached Stripe."""
    return [r.idempotency_key for r in stripe.server.requests if r.path == "/v1/payment_intents"]


def card_ids(factory: sessionmaker[Session], attempt_id: str) -> tuple[int, list[int]]:
    with factory() as session:
        attempt = session.get_one(ChargeAttempt, attempt_id)
        invoice = session.get_one(Invoice, attempt.invoice_id)
        return invoice.client_id, [card.id for card in invoice.client.cards]


def disconnect_stripe(factory: sessionmaker[Session], stripe: FakeStripe, attempt_id: str) -> None:
    with factory() as session, session.begin():
        update_settings(session, "admin", stripe_connected=False)


def turn_card_payments_off(factory: sessionmaker[Session], stripe: FakeStripe, attempt_id: str) -> None:
    with factory() as session, session.begin():
        update_settings(session, "admin", online_card_payments_enabled=False)


def void_the_invoice(factory: sessionmaker[Session], stripe: FakeStripe, attempt_id: str) -> None:
    with factory() as session, session.begin():
        attempt = session.get_one(ChargeAttempt, attempt_id)
        invoices.void_invoice(session, session.get_one(Invoice, attempt.invoice_id), actor="admin")


def remove_the_card(factory: sessionmaker[Session], stripe: FakeStripe, attempt_id: str) -> None:
    client_id, cards = card_ids(factory, attempt_id)
    clients.delete_card(factory, stripe, client_id, cards[0], actor="client")


def replace_the_card(factory: sessionmaker[Session], stripe: FakeStripe, attempt_id: str) -> None:
    client_id, cards = card_ids(factory, attempt_id)
    new = clients.add_card(factory, stripe, client_id, "pm_card_mastercard", actor="client")
    clients.set_default_card(factory, stripe, client_id, new.id, actor="client")
    clients.delete_card(factory, stripe, client_id, cards[0], actor="client")


@pytest.mark.parametrize(
    "meanwhile",
    [disconnect_stripe, turn_card_payments_off, void_the_invoice, remove_the_card, replace_the_card],
)
def test_last_look_cancels_a_charge_that_can_no_longer_be_charged(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, meanwhile
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    meanwhile(session_factory, stripe, attempt_id)  # between the click and the worker's claim
    report = run(session_factory, stripe, attempt_id, clock)
    assert report.result is charging.RunResult.CANCELED_BY_LAST_LOOK
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.failure_code) == ("canceled", "not_chargeable")
    assert creates(stripe) == []  # Stripe never heard of it


def test_last_look_never_cancels_a_retry_that_may_have_reached_stripe(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    stripe.server.fail_next("lost", CREATE)  # Stripe charged the card; the answer never arrived
    assert run(session_factory, stripe, attempt_id, clock).result is charging.RunResult.RETRY_SCHEDULED
    disconnect_stripe(session_factory, stripe, attempt_id)
    clock.advance(timedelta(minutes=11))
    report = run(session_factory, stripe, attempt_id, clock)
    # Replayed under its key, not canceled: Stripe answers with the charge it already made.
    assert report.result is charging.RunResult.APPLIED
    assert attempt_row(session_factory, attempt_id).status == "succeeded"
    key = idempotency_key_for(attempt_id)
    assert creates(stripe) == [key, key]
    assert [pi["status"] for pi in stripe.server.payment_intents()] == ["succeeded"]


def test_last_look_never_cancels_a_charge_taken_over_from_a_crashed_worker(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    stripe.server.fail_next("crash", CREATE)  # Stripe committed; the worker died before recording it
    with pytest.raises(WorkerCrashed):
        run(session_factory, stripe, attempt_id, clock)
    turn_card_payments_off(session_factory, stripe, attempt_id)
    clock.advance(timedelta(seconds=LEASE_SECONDS + 1))
    report = run(session_factory, stripe, attempt_id, clock)  # the message, redelivered
    assert report.result is charging.RunResult.APPLIED
    assert attempt_row(session_factory, attempt_id).status == "succeeded"
    assert len(stripe.server.payment_intents()) == 1


@pytest.mark.parametrize("sweep", ["janitor", "recovery"])
def test_janitor_replays_a_crashed_charge_under_its_own_key(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, sweep: str
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    stripe.server.fail_next("crash", CREATE)
    with pytest.raises(WorkerCrashed):
        run(session_factory, stripe, attempt_id, clock)
    clock.advance(timedelta(seconds=LEASE_SECONDS + 1))
    sweeper = run_janitor if sweep == "janitor" else recover_charges
    sweeper(session_factory, stripe, lambda *_: None, now=clock.now())
    assert attempt_row(session_factory, attempt_id).status == "succeeded"
    key = idempotency_key_for(attempt_id)
    assert creates(stripe) == [key, key]  # the replay carried the attempt's key
    assert [pi["status"] for pi in stripe.server.payment_intents()] == ["succeeded"]
    with session_factory() as session:
        assert session.scalar(select(Payment.amount).where(Payment.charge_attempt_id == attempt_id)) == 5_000


@pytest.mark.postgres
def test_recording_a_success_holds_the_invoice_lock_charge_requests_take(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite serialises every write transaction on the database's own lock")
    attempt_id = queued_charge(session_factory, stripe)
    with session_factory() as session:
        attempt = session.get_one(ChargeAttempt, attempt_id)
        request = charging.charge_request_for(attempt, session.get_one(Invoice, attempt.invoice_id))
        invoice_id = attempt.invoice_id
    outcome = stripe.create_offsession_payment_intent(request)
    recorded, release = threading.Event(), threading.Event()

    def record_success() -> None:
        with session_factory() as session, session.begin():
            apply_outcome(session, lock_attempt(session, attempt_id), outcome, actor="worker")
            session.flush()
            recorded.set()
            release.wait(timeout=10)

    writer = threading.Thread(target=record_success)
    writer.start()
    try:
        assert recorded.wait(timeout=10)
        # A charge request (or a manual payment) takes this lock before it reads payments and attempts:
        # while the success is uncommitted it must wait, or it could read one without the other.
        with session_factory() as session, pytest.raises(OperationalError, match="could not obtain lock"):
            session.execute(
                text("SELECT id FROM invoice WHERE id = :id FOR NO KEY UPDATE NOWAIT"), {"id": invoice_id}
            )
    finally:
        release.set()
        writer.join()
    assert attempt_row(session_factory, attempt_id).status == "succeeded"


# SQLite serialises every write transaction on the database's own lock: PostgreSQL only.
POSTGRESQL_ONLY = [pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("database_url", POSTGRESQL_ONLY, indirect=True)
def test_recording_a_success_takes_the_invoice_lock_before_it_touches_the_attempt(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    """The order every charge request takes its locks in: invoice, then attempts. A success recorded the
    other way round (the attempt first, the invoice only when the payment's ledger trigger updates it)
    would deadlock with a request holding the invoice and waiting on that attempt's in-flight index entry."""
    attempt_id = queued_charge(session_factory, stripe)
    with session_factory() as session:
        attempt = session.get_one(ChargeAttempt, attempt_id)
        request = charging.charge_request_for(attempt, session.get_one(Invoice, attempt.invoice_id))
        invoice_id = attempt.invoice_id
    outcome = stripe.create_offsession_payment_intent(request)
    holder = session_factory()
    holder.execute(text("SELECT id FROM invoice WHERE id = :id FOR NO KEY UPDATE"), {"id": invoice_id})

    def record_success() -> None:
        with session_factory() as session, session.begin():
            apply_outcome(session, session.get_one(ChargeAttempt, attempt_id), outcome, actor="worker")

    writer = threading.Thread(target=record_success)
    writer.start()
    try:
        wait_until(
            lambda: sessions_waiting_for_a_lock(session_factory),
            timeout=10,
            what="the success to wait for the invoice lock",
            every=0.01,
        )
        # Waiting for the invoice, the writer holds nothing of the attempt yet.
        with session_factory() as probe:
            probe.execute(
                text("SELECT id FROM charge_attempt WHERE id = :id FOR UPDATE NOWAIT"), {"id": attempt_id}
            )
            probe.rollback()
    finally:
        holder.rollback()
        holder.close()
        writer.join(timeout=10)
    assert attempt_row(session_factory, attempt_id).status == "succeeded"

