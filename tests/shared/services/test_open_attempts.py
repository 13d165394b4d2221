"""Opening a page of the batch's charges at once (charge_requests.open_attempts) against a real database
(SQLite and PostgreSQL): the rules of every charge per invoice, the amount from the ledger, and the one
in-flight attempt per invoice decided by the database's index, a conflict skipping one invoice only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import AuditEvent, ChargeAttempt, Invoice, Payment, table_of
from shared.domain.states import AttemptStatus
from shared.services import batch, charge_requests
from shared.services.settings import update_settings
from tests.support.factories import TODAY, make_client, make_invoice
from tests.support.unit_of_work import published, units

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


def competing_attempt(session: Session, invoice_id: int) -> str:
    """An attempt another request opened for `invoice_id` after the page was loaded: a plain INSERT, so
    the page's loaded invoices do not see it (as they would not see another transaction's)."""
    attempt_id = f"competing-{invoice_id}"
    session.execute(
        insert(table_of(ChargeAttempt)).values(
            id=attempt_id,
            invoice_id=invoice_id,
            amount=100,
            currency="usd",
            source="admin",
            requested_by="admin@example.com",
            status=AttemptStatus.QUEUED.value,
            idempotency_key=charge_requests.idempotency_key_for(attempt_id),
        )
    )
    return attempt_id


def in_flight(session: Session, invoice_id: int) -> list[str]:
    return list(
        session.scalars(
            select(ChargeAttempt.id).where(
                ChargeAttempt.invoice_id == invoice_id,
                ChargeAttempt.status == AttemptStatus.QUEUED.value,
            )
        )
    )


@pytest.fixture
def six_due(session_factory: sessionmaker[Session]) -> list[int]:
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        invoices = [make_invoice(s, make_client(s, n), n) for n in range(6)]
        s.flush()
        return [i.id for i in invoices]


def test_an_invoice_given_an_attempt_meanwhile_is_skipped_and_the_rest_of_the_page_opens(
    session_factory: sessionmaker[Session], six_due: list[int]
) -> None:
    with session_factory() as s, s.begin():
        page = batch.load_for_charging(s, six_due)
        competing = competing_attempt(s, six_due[2])
        opened = charge_requests.open_attempts(s, page, source="schedule", requested_by="batch:1")
        assert len(opened.attempt_ids) == 5
        assert dict(opened.skipped) == {"charge_in_progress": 1}
    with session_factory() as s:
        # One in flight per invoice: the competitor's stands alone on its invoice, the others got theirs.
        assert in_flight(s, six_due[2]) == [competing]
        assert {i: len(in_flight(s, i)) for i in six_due} == dict.fromkeys(six_due, 1)
        requested = s.scalars(select(AuditEvent).where(AuditEvent.action == "charge.requested")).all()
        assert sorted(e.charge_attempt_id for e in requested) == sorted(opened.attempt_ids)


def test_the_batch_counts_a_conflict_as_in_progress_and_publishes_the_rest(
    session_factory: sessionmaker[Session], six_due: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    load = batch.load_for_charging

    def load_then_compete(session: Session, invoice_ids: list[int]) -> list[Invoice]:
        page = load(session, invoice_ids)
        if six_due[0] in invoice_ids:
            competing_attempt(session, six_due[0])
        return page

    monkeypatch.setattr(batch, "load_for_charging", load_then_compete)
    sent, publish = published()
    report = batch.run_batch(
        units(session_factory, publish), slot=batch.slot_for(NOW), trigger="schedule", today=TODAY, now=NOW
    )
    assert (report.selected, report.queued, dict(report.skipped)) == (6, 5, {"charge_in_progress": 1})
    assert [len(payload["attempt_ids"]) for _, payload in sent] == [5]
    with session_factory() as s:
        assert in_flight(s, six_due[0]) == [f"competing-{six_due[0]}"]
        assert sorted(a for _, p in sent for a in p["attempt_ids"]) == sorted(
            s.scalars(select(ChargeAttempt.id).where(ChargeAttempt.batch_run_id == report.batch_run_id))
        )


def test_each_invoice_of_a_page_is_held_by_its_own_blockers(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        client = make_client(s, 1)
        chargeable = make_invoice(s, client, 1)
        make_invoice(s, client, 2, is_void=True)
        make_invoice(s, make_client(s, 3, card=False), 3)
        make_invoice(s, client, 4, payment_method="bank_transfer")
        paid = make_invoice(s, client, 5)
        busy = make_invoice(s, client, 6)
        held = make_invoice(s, client, 7)
        s.flush()
        s.add(Payment(invoice_id=paid.id, amount=10_000, method="cash", received_at=NOW))
        competing_attempt(s, busy.id)
        ids = [i.id for i in s.scalars(select(Invoice).order_by(Invoice.id))]
        chargeable_id, held_id = chargeable.id, held.id
    with session_factory() as s, s.begin():
        opened = charge_requests.open_attempts(
            s,
            batch.load_for_charging(s, ids),
            source="schedule",
            requested_by="batch:1",
            hold=lambda invoice: "dunning" if invoice.id == held_id else None,
        )
        assert dict(opened.skipped) == {
            "invoice_void": 1,
            "no_saved_card": 1,
            "payment_method_not_online_card": 1,
            "nothing_due": 1,
            "charge_in_progress": 1,
            "dunning": 1,
        }
        assert [s.get(ChargeAttempt, a).invoice_id for a in opened.attempt_ids] == [chargeable_id]


def test_stripe_not_connected_holds_the_whole_page(
    session_factory: sessionmaker[Session], six_due: list[int]
) -> None:
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=False)
    with session_factory() as s, s.begin():
        opened = charge_requests.open_attempts(
            s, batch.load_for_charging(s, six_due), source="schedule", requested_by="batch:1"
        )
        assert (opened.attempt_ids, dict(opened.skipped)) == ([], {"stripe_not_connected": 6})


def test_amounts_come_from_the_ledger_with_the_key_and_card_fixed_at_opening(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        usd = make_invoice(s, make_client(s, 1), 1, total=10_000)
        jpy = make_invoice(s, make_client(s, 2), 2, currency="jpy", total=5_000)
        s.flush()
        s.add_all(
            [
                Payment(invoice_id=usd.id, amount=2_500, method="cash", received_at=NOW),
                Payment(invoice_id=usd.id, amount=500, method="bank_transfer", received_at=NOW),
                Payment(invoice_id=jpy.id, amount=1_000, method="cash", received_at=NOW - timedelta(days=1)),
            ]
        )
        ids = usd_id, jpy_id = [usd.id, jpy.id]
    with session_factory() as s, s.begin():
        opened = charge_requests.open_attempts(
            s, batch.load_for_charging(s, ids), source="schedule", requested_by="batch:7", batch_run_id=None
        )
    with session_factory() as s:
        attempts = {a.invoice_id: a for a in s.scalars(select(ChargeAttempt))}
        assert {i: (a.amount, a.currency) for i, a in attempts.items()} == {
            usd_id: (7_000, "usd"),
            jpy_id: (4_000, "jpy"),
        }
        for n, invoice_id in enumerate(ids, start=1):
            attempt = attempts[invoice_id]
            assert attempt.idempotency_key == charge_requests.idempotency_key_for(attempt.id)
            assert (attempt.status, attempt.source, attempt.requested_by) == ("queued", "schedule", "batch:7")
            assert (attempt.stripe_customer_id, attempt.payment_method_id) == (f"cus_{n}", f"pm_{n}")
        details: dict[str, Any] = {
            e.charge_attempt_id: e.detail
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "charge.requested"))
        }
        expected = {
            a.id: {"amount": a.amount, "currency": a.currency, "source": "schedule"}
            for a in attempts.values()
        }
        assert details == expected
        assert sorted(opened.attempt_ids) == sorted(details)
