"""Disputes: charge.dispute.* events, late, twice and out of order, end in Stripe's final state; the
ledger loses the disputed amount when the funds are withdrawn and gets it back when they are reinstated,
each once; a dispute that does not match its charge changes nothing; the admins are told by email."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.mail import FileMailer
from shared.domain.models import Dispute, OutboxMessage, Payment, WebhookEvent
from shared.services.admins import create_admin
from shared.services.disputes import TASK_NOTIFY_DISPUTE, count_open_disputes, deliver_dispute_notification
from shared.services.webhooks import process_event, store_event
from tests.shared.services.test_refunds import TOTAL, _ledger, _paid_invoice, _payment_intent
from tests.support.fake_stripe import FakeStripe

DUE_BY = 1_800_000_000


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
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    events = _won_dispute_events(_payment_intent(session_factory, attempt_id))
    _deliver(session_factory, stripe, events[:2])
    assert _ledger(session_factory, invoice_id) == [TOTAL, -TOTAL]
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
    assert _ledger(session_factory, invoice_id) == [TOTAL, -TOTAL, TOTAL]
    with session_factory() as session:
        assert session.scalars(select(Dispute.status)).one() == "won"
        assert count_open_disputes(session) == 0
        notices = session.scalars(select(OutboxMessage).where(OutboxMessage.task_name == TASK_NOTIFY_DISPUTE))
        assert len(list(notices)) == 1


def test_a_reinstatement_that_overtakes_the_withdrawal_still_records_both_once(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    events = _won_dispute_events(_payment_intent(session_factory, attempt_id))
    _deliver(session_factory, stripe, [events[4], events[1], events[0]])
    assert _ledger(session_factory, invoice_id) == [TOTAL, -TOTAL, TOTAL]
    with session_factory() as session:
        assert session.scalars(select(Dispute.status)).one() == "won"  # the newest event's word


def test_a_dispute_from_another_account_or_for_more_than_was_paid_changes_nothing(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    pi_id = _payment_intent(session_factory, attempt_id)
    foreign = {
        **_event(1, "charge.dispute.funds_withdrawn", pi_id, "needs_response", created=1),
        "account": "acct_x",
    }
    larger = _event(2, "charge.dispute.funds_withdrawn", pi_id, "needs_response", created=1, amount=TOTAL + 1)
    outcomes = _deliver(session_factory, stripe, [foreign, larger])
    assert [o.split(" ")[0] for o in outcomes] == ["flagged", "flagged"]
    assert _ledger(session_factory, invoice_id) == [TOTAL]
    with session_factory() as session:
        assert session.scalars(select(Dispute)).all() == []
        reasons = session.scalars(select(WebhookEvent.flagged_reason).order_by(WebhookEvent.id)).all()
        assert reasons == ["account_mismatch", "amount_mismatch"]


def test_the_admins_are_emailed_once_each_about_a_new_dispute(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    stripe = FakeStripe()
    _, attempt_id = _paid_invoice(session_factory, stripe)
    with session_factory() as session, session.begin():
        create_admin(session, "ops@example.com", "a long enough password")
        create_admin(session, "owner@example.com", "a long enough password")
    _deliver(session_factory, stripe, _won_dispute_events(_payment_intent(session_factory, attempt_id))[:2])
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
