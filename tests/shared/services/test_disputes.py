"""Disputes: charge.dispute.* events, late, twice and out of order, end in Stripe's final state; the
ledger loses the disputed amount when the funds are withdrawn and gets it back when they are reinstated,
each once; a dispute that does not match its charge changes nothing; the admins are told by email."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.mail import FileMailer
from shared.domain.models import (
    AuditEvent,
    ChargeAttempt,
    Client,
    Dispute,
    DunningState,
    Invoice,
    OutboxMessage,
    Payment,
    WebhookEvent,
)
from shared.services import batch, clients, invoices
from shared.services.admins import create_admin
from shared.services.charge_requests import NotChargeable, load_invoice_for_charge, request_charge
from shared.services.charging import RunResult, run_attempt
from shared.services.disputes import TASK_NOTIFY_DISPUTE, count_open_disputes, deliver_dispute_notification
from shared.services.settings import update_settings
from shared.services.webhooks import process_event, store_event
from tests.support.factories import TODAY
from tests.support.fake_stripe import FakeStripe
from tests.support.refunds import TOTAL, ledger, paid_invoice, payment_intent_of
from tests.support.unit_of_work import InSession, published, units

DUE_BY = 1_800_000_000
NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)


def _event(
    n: int, event_type: str, pi_id: str, status: str, *, created: int, **changes: Any
) -> dict[str, Any]:
    movements = {
        "charge.dispute.funds_withdrawn": [-TOTAL],
        "charge.dispute.funds_reinstated": [-TOTAL, TOTAL],
    }
    dispute = {
        "id": "du_test1",
        "object": "dispute",
        "amount": TOTAL,
        "currency": "usd",
        "charge": "ch_1",
        "payment_intent": pi_id,
        "reason": "product_not_received",
        "status": status,
        "evidence_details": {"due_by": DUE_BY},
        "balance_transactions": [{"amount": a} for a in movements.get(event_type, [])],
        **changes,
    }
    return {
        "id": f"evt_d{n}",
        "type": event_type,
        "created": created,
        "livemode": False,
        "data": {"object": dispute},
    }


def _deliver(factory: sessionmaker[Session], stripe: FakeStripe, events: list[dict[str, Any]]) -> list[str]:
    outcomes = []
    for event in events:
        with factory() as session, session.begin():
            row = store_event(session, event)
        outcomes.append(process_event(factory, stripe, row.id))
    return outcomes


def _won_dispute_events(pi_id: str) -> list[dict[str, Any]]:
    return [
        _event(1, "charge.dispute.created", pi_id, "needs_response", created=100),
        _event(2, "charge.dispute.funds_withdrawn", pi_id, "needs_response", created=101),
        _event(3, "charge.dispute.updated", pi_id, "under_review", created=102),
        _event(4, "charge.dispute.closed", pi_id, "won", created=103),
        _event(5, "charge.dispute.funds_reinstated", pi_id, "won", created=104),
    ]


def test_a_won_dispute_takes_the_money_out_then_puts_it_back_whatever_the_order(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    events = _won_dispute_events(payment_intent_of(session_factory, attempt_id))
    _deliver(session_factory, stripe, events[:2])
    assert ledger(session_factory, invoice_id) == [TOTAL, -TOTAL]
    with session_factory() as session:
        dispute = session.scalars(select(Dispute)).one()
        assert (dispute.status, dispute.reason, dispute.amount) == (
            "needs_response",
            "product_not_received",
            TOTAL,
        )
        assert dispute.evidence_due_by is not None and int(dispute.evidence_due_by.timestamp()) == DUE_BY
        assert count_open_disputes(session) == 1

    _deliver(session_factory, stripe, list(reversed(events)) + events)  # late, twice, out of order
    assert ledger(session_factory, invoice_id) == [TOTAL, -TOTAL, TOTAL]
    with session_factory() as session:
        assert session.scalars(select(Dispute.status)).one() == "won"
        assert count_open_disputes(session) == 0
        notices = session.scalars(select(OutboxMessage).where(OutboxMessage.task_name == TASK_NOTIFY_DISPUTE))
        assert len(list(notices)) == 1


def test_a_reinstatement_that_overtakes_the_withdrawal_still_records_both_once(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    events = _won_dispute_events(payment_intent_of(session_factory, attempt_id))
    _deliver(session_factory, stripe, [events[4], events[1], events[0]])
    assert ledger(session_factory, invoice_id) == [TOTAL, -TOTAL, TOTAL]
    with session_factory() as session:
        assert session.scalars(select(Dispute.status)).one() == "won"  # the newest event's word


def test_a_dispute_from_another_account_or_for_more_than_was_paid_changes_nothing(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    pi_id = payment_intent_of(session_factory, attempt_id)
    foreign = {
        **_event(1, "charge.dispute.funds_withdrawn", pi_id, "needs_response", created=1),
        "account": "acct_x",
    }
    larger = _event(2, "charge.dispute.funds_withdrawn", pi_id, "needs_response", created=1, amount=TOTAL + 1)
    outcomes = _deliver(session_factory, stripe, [foreign, larger])
    assert [o.split(" ")[0] for o in outcomes] == ["flagged", "flagged"]
    assert ledger(session_factory, invoice_id) == [TOTAL]
    with session_factory() as session:
        assert session.scalars(select(Dispute)).all() == []
        reasons = session.scalars(select(WebhookEvent.flagged_reason).order_by(WebhookEvent.id)).all()
        assert reasons == ["account_mismatch", "amount_mismatch"]


def test_the_admins_are_emailed_once_each_about_a_new_dispute(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    stripe = FakeStripe()
    _, attempt_id = paid_invoice(session_factory, stripe)
    with session_factory() as session, session.begin():
        create_admin(session, "ops@example.com", "a long enough password")
        create_admin(session, "owner@example.com", "a long enough password")
    _deliver(session_factory, stripe, _won_dispute_events(payment_intent_of(session_factory, attempt_id))[:2])
    with session_factory() as session:
        dispute_id = session.scalars(select(Dispute.id)).one()
    mailer = FileMailer(tmp_path)
    config = SimpleNamespace(public_base_url="https://billing.example.com")
    assert deliver_dispute_notification(session_factory, config, mailer, dispute_id) == 2  # type: ignore[arg-type]
    assert deliver_dispute_notification(session_factory, config, mailer, dispute_id) == 0  # type: ignore[arg-type]
    messages = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(tmp_path.glob("*.eml"))
    ]
    assert sorted(m["To"] for m in messages) == ["ops@example.com", "owner@example.com"]
    text = messages[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "disputes $100.00" in text and "product not received" in text and "Evidence is due by" in text
    assert "https://billing.example.com/admin/invoices/" in text
    assert messages[0]["Subject"].startswith("Dispute: $100.00 of invoice INV-1")
    with session_factory() as session:
        assert session.scalars(select(Payment.amount).order_by(Payment.id)).all() == [TOTAL, -TOTAL]


def _half_paid_invoice_with_a_queued_charge(
    factory: sessionmaker[Session], stripe: FakeStripe
) -> tuple[int, str, str]:
    """An invoice of 2 x TOTAL, TOTAL paid by card, a charge of the rest queued (not run yet):
    (invoice id, the paid charge's PaymentIntent, the queued attempt's id)."""
    with factory() as session, session.begin():
        update_settings(session, "test", stripe_connected=True)
    client_id = clients.create_client(factory, stripe, name="Dee Spute", email="d@example.com", actor="t")
    clients.add_card(factory, stripe, client_id, "pm_card_visa", actor="t")
    with factory() as session, session.begin():
        invoice = invoices.create_invoice(
            session,
            session.get_one(Client, client_id),
            number="INV-D",
            currency="usd",
            total=2 * TOTAL,
            due_date=date(2026, 11, 1),
            actor="t",
        )
        first = request_charge(InSession(session), invoice, source="admin", requested_by="t", amount=TOTAL).id
        invoice_id = invoice.id
    run_attempt(factory, stripe, first, lease_seconds=60, max_transient_retries=3)
    with factory() as session, session.begin():
        invoice = load_invoice_for_charge(session, invoice_id, lock=True)
        assert invoice is not None
        queued = request_charge(InSession(session), invoice, source="admin", requested_by="t").id
    return invoice_id, payment_intent_of(factory, first), queued


def test_an_open_dispute_stops_every_way_of_charging_the_card_again_until_it_is_closed(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, pi_id, queued_id = _half_paid_invoice_with_a_queued_charge(session_factory, stripe)
    _deliver(session_factory, stripe, _won_dispute_events(pi_id)[:2])  # opened, funds withdrawn
    assert ledger(session_factory, invoice_id) == [TOTAL, -TOTAL]
    intents_before = len(stripe.server.payment_intents())

    # The worker's last look cancels the charge queued before the dispute opened.
    report = run_attempt(session_factory, stripe, queued_id, lease_seconds=60, max_transient_retries=3)
    assert report.result is RunResult.CANCELED_BY_LAST_LOOK and "charge_disputed" in report.notes
    assert len(stripe.server.payment_intents()) == intents_before  # Stripe never asked
    with session_factory() as session:
        attempt = session.get_one(ChargeAttempt, queued_id)
        assert attempt.status == "canceled" and "disputed" in (attempt.failure_message or "")

    # A click (the admin page, the API, the Client Zone) is refused with the code and the sentence.
    with session_factory() as session, session.begin():
        invoice = load_invoice_for_charge(session, invoice_id, lock=True)
        assert invoice is not None
        with pytest.raises(NotChargeable) as refused:
            request_charge(InSession(session), invoice, source="admin", requested_by="t")
        [blocker] = refused.value.blockers
        assert blocker.code.value == "charge_disputed"
        assert blocker.message.startswith("A card payment of $100.00 is disputed")
        session.get_one(Invoice, invoice_id).auto_charge = True
        session.add(
            DunningState(
                invoice_id=invoice_id,
                first_failure_at=NOW,
                failures=1,
                decline_class="soft",
                next_attempt_at=NOW,
                attempts_left=2,
            )
        )

    # The batch does not select it; the due retry is skipped and looked at again later.
    _, publish = published()
    report_run = batch.run_batch(
        units(session_factory, publish), slot="schedule:d", trigger="schedule", today=TODAY, now=NOW
    )
    assert (report_run.selected, report_run.queued) == (0, 0)
    assert batch.open_due_retries(session_factory, units(session_factory, publish), now=NOW) == 0
    with session_factory() as session:
        skipped = session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "dunning.retry_skipped")
        ).one()
        assert skipped["reasons"] == ["charge_disputed"]
        assert session.get_one(DunningState, invoice_id).next_attempt_at == NOW + batch.RETRY_BLOCKED_DELAY
        assert session.scalar(select(func.count()).select_from(ChargeAttempt)) == 2

    # Closed (lost: the money stays with the cardholder): the retry may collect the rest again.
    _deliver(session_factory, stripe, [_event(9, "charge.dispute.closed", pi_id, "lost", created=200)])
    later = NOW + batch.RETRY_BLOCKED_DELAY
    assert batch.open_due_retries(session_factory, units(session_factory, publish), now=later) == 1
