"""The due-invoice fan-out and the retry policy against a real database (SQLite and PostgreSQL).
Stripe is not called here: the attempts' outcomes are applied as the worker would apply them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import (
    BatchRun,
    ChargeAttempt,
    DunningState,
    Invoice,
    OutboxMessage,
    Payment,
)
from shared.domain.payments import AuthenticationRequired, CardDeclined
from shared.domain.states import AttemptStatus
from shared.services import batch, dunning, outbox
from shared.services.attempts import apply_outcome, lock_attempt, move_attempt
from shared.services.settings import update_settings
from tests.support.factories import TODAY, make_client, make_invoice
from tests.support.unit_of_work import published, units

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


@pytest.fixture
def populated(session_factory: sessionmaker[Session]) -> dict[str, int]:
    """25 chargeable invoices plus one of each kind the batch must leave alone."""
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        clients = [make_client(s, n) for n in range(5)]
        for n in range(25):
            make_invoice(
                s,
                clients[n % 5],
                n,
                currency="jpy" if n % 5 == 4 else "usd",
                total=5_000 if n % 5 == 4 else 10_000,
            )
        make_invoice(s, clients[0], 100, due_date=TODAY + timedelta(days=1))  # not due yet
        make_invoice(s, clients[0], 101, auto_charge=False)  # not set to auto-charge
        make_invoice(s, clients[0], 102, is_void=True)  # void
        make_invoice(s, make_client(s, 99, card=False), 103)  # no saved card
        make_invoice(s, clients[1], 104, payment_method="bank_transfer")  # not by card
        paid = make_invoice(s, clients[2], 105)
        s.flush()
        s.add(Payment(invoice_id=paid.id, amount=10_000, method="cash", received_at=NOW))
    return {"chargeable": 25}


def test_fan_out_page_by_page_queues_each_due_invoice_once(
    session_factory: sessionmaker[Session], populated: dict[str, int]
) -> None:
    sent, publish = published()
    report = batch.run_batch(
        units(session_factory, publish),
        slot=batch.slot_for(NOW),
        trigger="schedule",
        today=TODAY,
        now=NOW,
        page_size=7,
    )
    assert (report.selected, report.queued) == (27, 25)
    assert dict(report.skipped) == {"no_saved_card": 1, "payment_method_not_online_card": 1}
    # A page's charges share a message (7 to a page, fewer than a message carries): pages of 7, 7, 7 and 4.
    assert [(name, len(p["attempt_ids"])) for name, p in sent] == [
        (outbox.TASK_CHARGE_ATTEMPTS, n) for n in (7, 7, 7, 4)
    ]
    assert len({attempt_id for _, p in sent for attempt_id in p["attempt_ids"]}) == 25
    with session_factory() as s:
        run = s.scalars(select(BatchRun)).one()
        assert (run.selected, run.queued, run.skipped) == (27, 25, 2)
        assert run.selection_finished_at is not None
        assert batch.outcome_counts(s, run.id) == {"queued": 25}
        assert (
            s.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.published_at.is_(None))
            )
            == 0
        )
        jpy = s.scalars(select(ChargeAttempt).where(ChargeAttempt.currency == "jpy")).all()
        assert {a.amount for a in jpy} == {5_000}


def test_a_second_run_of_the_same_slot_charges_nothing(
    session_factory: sessionmaker[Session], populated: dict[str, int]
) -> None:
    """Two beats firing the same slot at once: one run queues, the other finds the slot taken."""
    reports: list[batch.BatchReport] = []

    def fire() -> None:
        _, publish = published()
        reports.append(
            batch.run_batch(
                units(session_factory, publish),
                slot=batch.slot_for(NOW + timedelta(seconds=7)),
                trigger="schedule",
                today=TODAY,
                now=NOW,
            )
        )

    threads = [threading.Thread(target=fire) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.queued for r in reports) == [0, 25]
    assert sum(r.already_ran for r in reports) == 1
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(ChargeAttempt)) == 25
    # A different slot the same day finds every invoice already in flight.
    _, publish = published()
    later = batch.run_batch(
        units(session_factory, publish),
        slot=batch.slot_for(NOW + timedelta(hours=1)),
        trigger="schedule",
        today=TODAY,
        now=NOW + timedelta(hours=1),
    )
    assert later.queued == 0 and later.skipped["charge_in_progress"] == 25


def test_dry_run_reports_and_charges_nothing(
    session_factory: sessionmaker[Session], populated: dict[str, int]
) -> None:
    plan = batch.dry_run(session_factory, today=TODAY, now=NOW, page_size=4, show=3)
    assert plan.count == 25
    assert plan.totals == {"usd": 20 * 10_000, "jpy": 5 * 5_000}
    assert [row[0] for row in plan.first_rows] == ["B-00000", "B-00001", "B-00002"]
    assert dict(plan.skipped) == {"no_saved_card": 1, "payment_method_not_online_card": 1}
    with session_factory() as s:
        assert s.scalar(select(func.count()).select_from(ChargeAttempt)) == 0
        assert s.scalar(select(func.count()).select_from(BatchRun)) == 0


def _fail(
    session_factory: sessionmaker[Session], attempt_id: str, decline_code: str, code: str = "card_declined"
) -> None:
    with session_factory() as s, s.begin():
        attempt = lock_attempt(s, attempt_id)
        move_attempt(s, attempt, AttemptStatus.PROCESSING, "worker")
        apply_outcome(
            s,
            attempt,
            CardDeclined(code=code, decline_code=decline_code, message="Declined.", payment_intent_id=None),
            actor="worker",
        )


def _one_scheduled_attempt(session_factory: sessionmaker[Session]) -> tuple[int, str]:
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        invoice = make_invoice(s, make_client(s, 1), 1)
        s.flush()
        invoice_id = invoice.id
    _, publish = published()
    batch.run_batch(
        units(session_factory, publish), slot="schedule:first", trigger="schedule", today=TODAY, now=NOW
    )
    with session_factory() as s:
        return invoice_id, s.scalars(select(ChargeAttempt.id)).one()


def test_soft_decline_is_retried_on_day_1_3_and_7_then_stops(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = {"now": NOW}
    monkeypatch.setattr(dunning, "utcnow", lambda: clock["now"])
    invoice_id, attempt_id = _one_scheduled_attempt(session_factory)
    opened_on: list[int] = []
    for day in range(0, 12):
        clock["now"] = NOW + timedelta(days=day, minutes=5)
        if day > 0:
            _, publish = published()
            if batch.open_due_retries(session_factory, units(session_factory, publish), now=clock["now"]):
                opened_on.append(day)
                with session_factory() as s:
                    attempt_id = s.scalars(
                        select(ChargeAttempt.id).where(ChargeAttempt.status == "queued")
                    ).one()
        with session_factory() as s:
            attempt = s.get(ChargeAttempt, attempt_id)
            assert attempt is not None
            pending = attempt.status == "queued"
        if pending:
            _fail(session_factory, attempt_id, "insufficient_funds")
    assert opened_on == [1, 3, 7]
    with session_factory() as s:
        state = s.get(DunningState, invoice_id)
        assert state is not None and (state.failures, state.next_attempt_at, state.attempts_left) == (
            4,
            None,
            0,
        )
        assert s.scalar(select(func.count()).select_from(ChargeAttempt)) == 4
        # The schedule leaves it alone now...
    _, publish = published()
    report = batch.run_batch(
        units(session_factory, publish),
        slot="schedule:day12",
        trigger="schedule",
        today=TODAY,
        now=NOW + timedelta(days=12),
    )
    assert report.queued == 0 and report.skipped[batch.SKIP_WAITING_FOR_RETRY] == 1
    # ...until the client changes the card.
    with session_factory() as s, s.begin():
        dunning.clear_for_client(s, s.get(Invoice, invoice_id).client_id, actor="client:1")  # type: ignore[union-attr]
    report = batch.run_batch(
        units(session_factory, publish),
        slot="schedule:day13",
        trigger="schedule",
        today=TODAY,
        now=NOW + timedelta(days=13),
    )
    assert report.queued == 1


@pytest.mark.parametrize(
    "decline",
    [
        "stolen_card",
        "lost_card",
        "pickup_card",
        "fraudulent",
        "expired_card",
        "incorrect_number",
        "do_not_honor",
    ],
)
def test_hard_decline_is_never_retried(session_factory: sessionmaker[Session], decline: str) -> None:
    invoice_id, attempt_id = _one_scheduled_attempt(session_factory)
    _fail(session_factory, attempt_id, decline)
    with session_factory() as s:
        state = s.get(DunningState, invoice_id)
        assert state is not None and state.decline_class == "hard" and state.next_attempt_at is None
        kinds = [
            m.payload["kind"]
            for m in s.scalars(
                select(OutboxMessage).where(OutboxMessage.task_name == "offsession.notify_charge")
            )
        ]
        assert kinds == ["card_update_needed"]
    _, publish = published()
    later = NOW + timedelta(days=30)
    assert batch.open_due_retries(session_factory, units(session_factory, publish), now=later) == 0


def test_authentication_required_queues_exactly_one_email(session_factory: sessionmaker[Session]) -> None:
    invoice_id, attempt_id = _one_scheduled_attempt(session_factory)
    for _ in range(3):  # the worker, a webhook and the janitor all report it
        with session_factory() as s, s.begin():
            attempt = lock_attempt(s, attempt_id)
            if attempt.status == "queued":
                move_attempt(s, attempt, AttemptStatus.PROCESSING, "worker")
            apply_outcome(
                s, attempt, AuthenticationRequired(payment_intent_id="pi_1", message="Auth."), actor="worker"
            )
    with session_factory() as s:
        assert s.get(ChargeAttempt, attempt_id).status == "requires_action"  # type: ignore[union-attr]
        notes = s.scalars(
            select(OutboxMessage).where(OutboxMessage.task_name == "offsession.notify_charge")
        ).all()
        assert [n.payload for n in notes] == [{"attempt_id": attempt_id, "kind": "authentication_needed"}]
        state = s.get(DunningState, invoice_id)
        assert state is not None and state.decline_class == "action" and state.next_attempt_at is None
