"""Several charges from one message (shared/services/charge_batches.py): the batch's fan-out groups them,
a click stays alone; one UPDATE claims a group, each attempt keeps its own last look, its calls run at
once, and one attempt's trouble never costs another its outcome. Against FakeStripe on the model's clock
(conftest.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import (
    AuditEvent,
    ChargeAttempt,
    Client,
    DunningState,
    OutboxMessage,
    Payment,
)
from shared.domain.payments import ChargeRequest, TransientStripeError
from shared.services import batch, charge_batches, clients, invoices, outbox, payments
from shared.services.charge_batches import (
    CHARGES_PER_MESSAGE,
    charges_per_message,
    claim_attempts,
    run_attempts,
)
from shared.services.charge_requests import idempotency_key_for, load_invoice_for_charge, request_charge
from shared.services.charging import RunResult
from shared.services.janitor import recover_charges, republish_stranded
from shared.services.settings import update_settings
from tests.support.charge_model import LEASE_SECONDS, START
from tests.support.factories import TODAY, make_client, make_invoice
from tests.support.fake_stripe import FakeClock, FakeStripe, WorkerCrashed
from tests.support.unit_of_work import InSession, published, units

CREATE = "create_offsession_payment_intent"


def queued_group(factory: sessionmaker[Session], stripe: FakeStripe, tokens: list[str]) -> list[str]:
    """A connected business; per token a client with that card, an invoice of 5,000 + n and its charge,
    queued as the batch queues them (no message of its own)."""
    with factory() as session, session.begin():
        update_settings(session, "admin", stripe_connected=True)
    attempt_ids = []
    for n, token in enumerate(tokens):
        client_id = clients.create_client(
            factory, stripe, name=f"C{n}", email=f"c{n}@example.com", actor="admin"
        )
        clients.add_card(factory, stripe, client_id, token, actor="admin")
        with factory() as session, session.begin():
            invoice = invoices.create_invoice(
                session,
                session.get_one(Client, client_id),
                number=f"G-{n}",
                currency="usd",
                total=5_000 + n,
                due_date=START.date(),
                actor="admin",
            )
            session.flush()
            loaded = load_invoice_for_charge(session, invoice.id, lock=True)
            assert loaded is not None
            attempt = request_charge(
                InSession(session), loaded, source="schedule", requested_by="batch:1", own_message=False
            )
            attempt_ids.append(attempt.id)
    return attempt_ids


def run_group(
    factory: sessionmaker[Session], gateway: Any, attempt_ids: list[str], clock: FakeClock
) -> dict[str, Any]:
    return run_attempts(
        factory, gateway, attempt_ids, lease_seconds=LEASE_SECONDS, max_transient_retries=3, now=clock.now()
    )


def statuses(factory: sessionmaker[Session], attempt_ids: list[str]) -> list[str]:
    with factory() as session:
        rows = {
            a.id: a.status
            for a in session.scalars(select(ChargeAttempt).where(ChargeAttempt.id.in_(attempt_ids)))
        }
    return [rows[attempt_id] for attempt_id in attempt_ids]


def payments_of(factory: sessionmaker[Session], attempt_ids: list[str]) -> Counter[str]:
    with factory() as session:
        return Counter(
            session.scalars(
                select(Payment.charge_attempt_id).where(Payment.charge_attempt_id.in_(attempt_ids))
            )
        )


def created_keys(stripe: FakeStripe) -> list[str | None]:
    return [r.idempotency_key for r in stripe.server.requests if r.path == "/v1/payment_intents"]


class PerCharge:
    """FakeStripe, with what one charge's call meets instead: `raises[attempt id]` raised before the call
    is sent; with `barrier`, every call waits there first. Counts the calls in flight, so a test can wait
    until none is, and the threads that made them."""

    def __init__(
        self,
        stripe: FakeStripe,
        raises: dict[str, BaseException] | None = None,
        barrier: threading.Barrier | None = None,
    ) -> None:
        self.stripe, self.raises, self.barrier = stripe, raises or {}, barrier
        self.longest_call_seconds = stripe.longest_call_seconds
        self.in_flight = 0
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def create_offsession_payment_intent(self, request: ChargeRequest) -> Any:
        with self._cond:
            self.in_flight += 1
            self.threads.add(threading.current_thread().name)
        try:
            if self.barrier is not None:
                self.barrier.wait()
            error = self.raises.get(request.metadata["charge_attempt_id"])
            if error is not None:
                raise error
            return self.stripe.create_offsession_payment_intent(request)
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()

    def wait_idle(self) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.in_flight == 0, timeout=10)


# ---- the fan-out ------------------------------------------------------------------------------------


def test_the_batch_sends_its_charges_ten_to_a_message_and_a_click_goes_alone(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        for n in range(25):
            make_invoice(s, make_client(s, n), n)
        clicked = make_invoice(s, make_client(s, 99), 99, auto_charge=False)
        s.flush()
        clicked_id = clicked.id
    sent, publish = published()
    report = batch.run_batch(
        units(session_factory, publish), slot="schedule:t", trigger="schedule", today=TODAY
    )
    assert report.queued == 25
    assert [(name, len(p["attempt_ids"])) for name, p in sent] == [
        (outbox.TASK_CHARGE_ATTEMPTS, CHARGES_PER_MESSAGE),
        (outbox.TASK_CHARGE_ATTEMPTS, CHARGES_PER_MESSAGE),
        (outbox.TASK_CHARGE_ATTEMPTS, 5),
    ]
    with session_factory() as s:
        queued = set(s.scalars(select(ChargeAttempt.id)))
    assert sorted(a for _, p in sent for a in p["attempt_ids"]) == sorted(queued)
    # A click: a message of its own, the old single-charge task, for its latency.
    sent.clear()
    with units(session_factory, publish)() as uow:
        invoice = load_invoice_for_charge(uow.session, clicked_id, lock=True)
        assert invoice is not None
        attempt = request_charge(uow, invoice, source="admin", requested_by="admin")
    assert sent == [(outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": attempt.id})]


def test_a_message_carries_a_tenth_of_a_second_of_the_rate_budget() -> None:
    # Claimed together, a message's charges wait for their slots together: a dead worker's message leaves
    # at most this much of the budget to the recovery sweep (ceil(rate x 0.1 s), one to ten).
    rates = (0.5, 10, 20, 25, 95, 100, 1000)
    assert [charges_per_message(rate) for rate in rates] == [1, 1, 2, 3, 10, 10, 10]


def test_the_batch_groups_by_the_size_it_is_given(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        for n in range(5):
            make_invoice(s, make_client(s, n), n)
    sent, publish = published()
    report = batch.run_batch(
        units(session_factory, publish), slot="schedule:t", trigger="schedule", today=TODAY, per_message=2
    )
    assert report.queued == 5
    assert [(name, len(p.get("attempt_ids", [p.get("attempt_id")]))) for name, p in sent] == [
        (outbox.TASK_CHARGE_ATTEMPTS, 2),
        (outbox.TASK_CHARGE_ATTEMPTS, 2),
        (outbox.TASK_CHARGE_ATTEMPT, 1),
    ]


def test_due_retries_go_out_a_message_for_ten(session_factory: sessionmaker[Session]) -> None:
    now = START
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        for n in range(12):
            invoice = make_invoice(s, make_client(s, n), n)
            s.flush()
            s.add(
                DunningState(
                    invoice_id=invoice.id,
                    first_failure_at=now,
                    failures=1,
                    decline_class="soft",
                    next_attempt_at=now,
                )
            )
    sent, publish = published()
    assert batch.open_due_retries(session_factory, units(session_factory, publish), now=now) == 12
    assert [(name, len(p["attempt_ids"])) for name, p in sent] == [
        (outbox.TASK_CHARGE_ATTEMPTS, 10),
        (outbox.TASK_CHARGE_ATTEMPTS, 2),
    ]
    with session_factory() as s:
        assert (
            s.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.published_at.is_(None))
            )
            == 0
        )


# ---- the claim --------------------------------------------------------------------------------------


def test_one_statement_claims_the_group(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_ids = queued_group(session_factory, stripe, ["pm_card_visa"] * 4)
    statements: list[str] = []
    engine = session_factory.kw["bind"]

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()).lower())

    event.listen(engine, "before_cursor_execute", record)
    try:
        with session_factory() as session, session.begin():
            ready, reports = claim_attempts(
                session, attempt_ids, now=clock.now(), lease_seconds=LEASE_SECONDS
            )
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert reports == {} and sorted(a.id for a, _ in ready) == sorted(attempt_ids)
    assert [s for s in statements if s.startswith("update charge_attempt")] == [
        next(s for s in statements if s.startswith("update charge_attempt"))
    ]
    # Four attempts: the claim, their invoices, and their audit entries, one statement each.
    assert len([s for s in statements if not s.startswith(("begin", "commit", "savepoint", "release"))]) == 3
    assert statuses(session_factory, attempt_ids) == ["processing"] * 4
    # A second delivery of the same message claims nothing: they are held by a live worker.
    with session_factory() as session, session.begin():
        ready, reports = claim_attempts(session, attempt_ids, now=clock.now(), lease_seconds=LEASE_SECONDS)
    assert ready == [] and {r.result for r in reports.values()} == {RunResult.HELD}


def test_each_attempt_of_a_group_has_its_own_last_look(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    first, paid, third = queued_group(session_factory, stripe, ["pm_card_visa"] * 3)
    with session_factory() as session, session.begin():
        # Paid by cheque meanwhile: the charge still queued for it must never reach Stripe.
        invoice_id = session.get_one(ChargeAttempt, paid).invoice_id
        invoice = load_invoice_for_charge(session, invoice_id, lock=True)
        assert invoice is not None
        session.get_one(ChargeAttempt, paid).status = "canceled"  # lets the manual payment through
        session.flush()
        payments.record_payment(session, invoice, amount=5_001, method="cheque", recorded_by="admin")
        session.get_one(ChargeAttempt, paid).status = "queued"
    reports = run_group(session_factory, stripe, [first, paid, third], clock)
    assert reports[paid].result is RunResult.CANCELED_BY_LAST_LOOK and reports[paid].notes == ["nothing_due"]
    assert statuses(session_factory, [first, paid, third]) == ["succeeded", "canceled", "succeeded"]
    assert sorted(created_keys(stripe)) == sorted(idempotency_key_for(a) for a in (first, third))
    with session_factory() as session:
        moves = [
            (e.detail.get("from"), e.detail.get("to"))
            for e in session.scalars(select(AuditEvent).where(AuditEvent.charge_attempt_id == paid))
            if e.detail.get("to")
        ]
    # As anyone else saw it: queued, then canceled; never processing.
    assert moves[-1] == ("queued", "canceled") and ("queued", "processing") not in moves


def test_a_retry_in_a_group_too_old_to_replay_goes_to_the_janitor_not_to_stripe(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    fresh, old = queued_group(session_factory, stripe, ["pm_card_visa"] * 2)
    with session_factory() as session, session.begin():
        attempt = session.get_one(ChargeAttempt, old)
        attempt.transient_failures = 1  # an earlier call may have reached Stripe
        attempt.created_at = clock.now() - timedelta(hours=25)
    reports = run_group(session_factory, stripe, [fresh, old], clock)
    assert reports[old].result is RunResult.UNKNOWN
    assert statuses(session_factory, [fresh, old]) == ["succeeded", "unknown"]
    assert created_keys(stripe) == [idempotency_key_for(fresh)]
    with session_factory() as session:
        moves = [
            (e.detail.get("from"), e.detail.get("to"))
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.charge_attempt_id == old).order_by(AuditEvent.id)
            )
            if e.detail.get("to")
        ]
    assert moves[-2:] == [("queued", "processing"), ("processing", "unknown")]


def test_a_retry_in_a_group_that_may_have_reached_stripe_is_replayed_not_canceled(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    retry, fresh = queued_group(session_factory, stripe, ["pm_card_visa"] * 2)
    stripe.server.fail_next("lost", CREATE)  # Stripe charged the card; the answer never arrived
    assert run_group(session_factory, stripe, [retry], clock)[retry].result is RunResult.RETRY_SCHEDULED
    with session_factory() as session, session.begin():
        update_settings(session, "admin", stripe_connected=False)  # the invoice can no longer be charged
    clock.advance(timedelta(minutes=11))
    reports = run_group(session_factory, stripe, [retry, fresh], clock)
    # The retry is replayed under its key and Stripe answers with the charge it made; the charge that
    # never reached Stripe is canceled by its last look.
    assert reports[retry].result is RunResult.APPLIED
    assert reports[fresh].result is RunResult.CANCELED_BY_LAST_LOOK
    assert statuses(session_factory, [retry, fresh]) == ["succeeded", "canceled"]
    assert created_keys(stripe) == [idempotency_key_for(retry)] * 2
    assert [pi["status"] for pi in stripe.server.payment_intents()] == ["succeeded"]


# ---- the calls and their outcomes -----------------------------------------------------------------------


def test_one_attempts_error_retry_or_decline_never_costs_the_others_their_outcome(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    tokens = ["pm_card_visa", "pm_card_chargeCustomerFail", "pm_card_visa", "pm_card_visa", "pm_card_visa"]
    ok, declined, transient, broken, ok2 = queued_group(session_factory, stripe, tokens)
    gateway = PerCharge(
        stripe, {transient: TransientStripeError("connection reset"), broken: RuntimeError("a bug of ours")}
    )
    reports = run_group(session_factory, gateway, [ok, declined, transient, broken, ok2], clock)
    assert statuses(session_factory, [ok, declined, transient, broken, ok2]) == [
        "succeeded",
        "failed",
        "queued",
        "processing",
        "succeeded",
    ]
    assert payments_of(session_factory, [ok, declined, transient, broken, ok2]) == Counter({ok: 1, ok2: 1})
    # Only the unanswered one goes back to the queue, alone, under its key.
    assert reports[transient].result is RunResult.RETRY_SCHEDULED
    with session_factory() as session:
        retry = session.get_one(OutboxMessage, reports[transient].retry_message_id)
        assert (retry.task_name, retry.payload) == (outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": transient})
    # The one whose call raised is left processing: once its lease lapses, recovery charges it under its key.
    assert reports[broken].result is RunResult.ERROR
    clock.advance(timedelta(seconds=LEASE_SECONDS + 1))
    recover_charges(session_factory, stripe, lambda *_: None, now=clock.now())
    assert statuses(session_factory, [broken]) == ["succeeded"]
    assert payments_of(session_factory, [broken]) == Counter({broken: 1})


def test_the_calls_of_a_group_are_in_flight_at_once(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_ids = queued_group(session_factory, stripe, ["pm_card_visa"] * 4)
    # No call may go on until all four are in flight: one after the other, the barrier would break.
    gateway = PerCharge(stripe, barrier=threading.Barrier(4, timeout=10))
    reports = run_group(session_factory, gateway, attempt_ids, clock)
    assert {r.status for r in reports.values()} == {"succeeded"}
    assert len(gateway.threads) == 4


def test_a_group_whose_joint_commit_fails_records_each_outcome_alone(
    session_factory: sessionmaker[Session],
    stripe: FakeStripe,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, poisoned, third = queued_group(session_factory, stripe, ["pm_card_visa"] * 3)
    record_answer = charge_batches.record_answer

    def failing_for_one(session: Session, attempt: ChargeAttempt, *args: Any) -> Any:
        report = record_answer(session, attempt, *args)
        if attempt.id == poisoned:
            raise RuntimeError("the database refused this one")
        return report

    monkeypatch.setattr(charge_batches, "GATHER_SECONDS", 5.0)  # all three outcomes in one round
    monkeypatch.setattr(charge_batches, "record_answer", failing_for_one)
    reports = run_group(session_factory, stripe, [first, poisoned, third], clock)
    assert [reports[a].result for a in (first, poisoned, third)] == [
        RunResult.APPLIED,
        RunResult.ERROR,
        RunResult.APPLIED,
    ]
    assert statuses(session_factory, [first, poisoned, third]) == ["succeeded", "processing", "succeeded"]
    assert payments_of(session_factory, [first, poisoned, third]) == Counter({first: 1, third: 1})
    monkeypatch.undo()
    clock.advance(timedelta(seconds=LEASE_SECONDS + 1))
    recover_charges(session_factory, stripe, lambda *_: None, now=clock.now())
    assert statuses(session_factory, [poisoned]) == ["succeeded"]
    # Charged once: the recovery's replay under the key met the PaymentIntent the group's call made.
    assert len(stripe.server.payment_intents()) == 3
    assert payments_of(session_factory, [poisoned]) == Counter({poisoned: 1})


@pytest.mark.parametrize("crashed", ["all", "one"])
def test_a_worker_that_dies_mid_group_is_recovered_without_a_second_charge(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, crashed: str
) -> None:
    attempt_ids = queued_group(session_factory, stripe, ["pm_card_visa"] * 4)
    # Stripe commits each PaymentIntent; the process dies before recording (all, or the first to answer).
    stripe.server.fail_next("crash", CREATE, times=4 if crashed == "all" else 1)
    gateway = PerCharge(stripe)
    with pytest.raises(WorkerCrashed):
        run_group(session_factory, gateway, attempt_ids, clock)
    gateway.wait_idle()
    assert len(stripe.server.payment_intents()) == 4
    clock.advance(timedelta(seconds=LEASE_SECONDS + 1))
    recover_charges(session_factory, stripe, lambda *_: None, now=clock.now())
    assert statuses(session_factory, attempt_ids) == ["succeeded"] * 4
    assert payments_of(session_factory, attempt_ids) == Counter({a: 1 for a in attempt_ids})
    assert len(stripe.server.payment_intents()) == 4  # no second charge: every replay carried its key
    assert set(created_keys(stripe)) == {idempotency_key_for(a) for a in attempt_ids}


def test_a_group_of_one_runs_like_a_message_of_its_own(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    [attempt_id] = queued_group(session_factory, stripe, ["pm_card_visa"])
    assert run_group(session_factory, stripe, [attempt_id], clock)[attempt_id].status == "succeeded"
    assert payments_of(session_factory, [attempt_id]) == Counter({attempt_id: 1})


@pytest.mark.parametrize("message_waiting", [True, False])
def test_charges_whose_group_message_waits_in_the_outbox_are_not_sent_again_alone(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, message_waiting: bool
) -> None:
    """The broker was down when the batch committed: the group's message waits for the relay, and the
    recovery sweep leaves its charges to it instead of sending each again alone."""
    attempt_ids = queued_group(session_factory, stripe, ["pm_card_visa"] * 3)
    with session_factory() as session, session.begin():
        outbox.enqueue(session, outbox.TASK_CHARGE_ATTEMPTS, {"attempt_ids": attempt_ids})
        if not message_waiting:  # it went out, and was lost
            session.execute(update(OutboxMessage).values(published_at=clock.now()))
    resent = republish_stranded(session_factory, now=clock.now() + timedelta(seconds=11))
    assert len(resent) == (0 if message_waiting else 3)
