"""Refunds of card charges: asked here or made in Stripe's dashboard, each lands once; the ledger and the
invoice's amount due follow Stripe's word, a refund that fails is given back, two clicks make one
refund, and a worker lost after Stripe accepted it is settled by the janitor under the same key."""

from __future__ import annotations

import email
import email.policy
import threading
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.mail import FileMailer
from shared.domain.ledger import balance
from shared.domain.models import (
    AuditEvent,
    ChargeAttempt,
    Client,
    Invoice,
    OutboxMessage,
    Payment,
    Refund,
    utcnow,
)
from shared.domain.refunds import RefundRefused
from shared.services import clients, invoices
from shared.services.batch import run_batch
from shared.services.charge_requests import load_invoice_for_charge, request_charge
from shared.services.charging import run_attempt
from shared.services.janitor import run_janitor
from shared.services.notifications import deliver_refund_receipt
from shared.services.refunds import (
    IN_PROGRESS,
    KEY_REPLAY_WINDOW,
    MAX_TRIES,
    RETRY_DELAY,
    STALE_AFTER,
    TASK_NOTIFY_REFUND,
    TASK_RUN_REFUND,
    RefundNotFound,
    request_refund,
    run_refund,
    settle_stale_refunds,
)
from shared.services.settings import update_settings
from shared.services.webhooks import process_event, store_event
from tests.support.factories import TODAY
from tests.support.fake_stripe import FakeStripe, WorkerCrashed
from tests.support.unit_of_work import InSession, published, units

TOTAL = 10_000


def _paid_invoice(
    factory: sessionmaker[Session],
    stripe: FakeStripe,
    n: int = 1,
    *,
    auto_charge: bool = False,
    account: str | None = None,
) -> tuple[int, str]:
    """An invoice paid in full by card (on the platform, or on the connected `account`): (invoice id,
    charge attempt id)."""
    with factory() as session, session.begin():
        update_settings(session, "test", stripe_connected=True, stripe_account_id=account or "")
    client_id = clients.create_client(
        factory, stripe, name=f"Client {n}", email=f"c{n}@example.com", actor="t"
    )
    clients.add_card(factory, stripe, client_id, "pm_card_visa", actor="t")
    with factory() as session, session.begin():
        invoice = invoices.create_invoice(
            session,
            session.get_one(Client, client_id),
            number=f"INV-{n}",
            currency="usd",
            total=TOTAL,
            due_date=date(2026, 11, 1),
            auto_charge=auto_charge,
            actor="t",
        )
        attempt_id = request_charge(InSession(session), invoice, source="admin", requested_by="t").id
        invoice_id = invoice.id
    run_attempt(factory, stripe, attempt_id, lease_seconds=60, max_transient_retries=3)
    return invoice_id, attempt_id


def _request(factory: sessionmaker[Session], attempt_id: str, **kw: Any) -> str:
    with factory() as session, session.begin():
        return request_refund(InSession(session), attempt_id, requested_by="admin@example.com", **kw).id


def _due(factory: sessionmaker[Session], invoice_id: int) -> int:
    with factory() as session:
        return balance(session.get_one(Invoice, invoice_id)).amount_due


def _ledger(factory: sessionmaker[Session], invoice_id: int) -> list[int]:
    with factory() as session:
        return list(
            session.scalars(
                select(Payment.amount).where(Payment.invoice_id == invoice_id).order_by(Payment.id)
            )
        )


def _refund(factory: sessionmaker[Session], refund_id: str) -> Refund:
    with factory() as session:
        refund = session.get_one(Refund, refund_id)
        session.expunge(refund)
        return refund


def _deliver_events(factory: sessionmaker[Session], stripe: FakeStripe, *, twice: bool = False) -> list[str]:
    outcomes = []
    for event in stripe.server.take_events() * (2 if twice else 1):
        with factory() as session, session.begin():
            row = store_event(session, event)
        outcomes.append(process_event(factory, stripe, row.id))
    return outcomes


def test_a_partial_refund_is_pending_until_stripe_says_it_succeeded_then_the_ledger_follows(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    assert _due(session_factory, invoice_id) == 0
    refund_id = _request(session_factory, attempt_id, amount=2_500, reason="requested_by_customer")
    refund = _refund(session_factory, refund_id)
    assert (refund.status, refund.amount, refund.idempotency_key) == (
        "pending",
        2_500,
        f"offsession:refund:{refund_id}",
    )
    with session_factory() as session:  # the key and the message were committed before any call
        assert session.scalar(
            select(OutboxMessage.payload).where(OutboxMessage.task_name == TASK_RUN_REFUND)
        ) == {"refund_id": refund_id}
    assert stripe.server.refunds() == [] and _due(session_factory, invoice_id) == 0

    stripe.server.new_refund_status = "pending"  # as pm_card_pendingRefund: pending first
    assert run_refund(session_factory, stripe, refund_id).endswith("pending")
    assert _ledger(session_factory, invoice_id) == [TOTAL]  # nothing taken back while pending
    [at_stripe] = stripe.server.refunds()
    assert at_stripe["amount"] == 2_500 and at_stripe["reason"] == "requested_by_customer"
    assert at_stripe["metadata"]["refund_id"] == refund_id

    stripe.server.settle_refund(at_stripe["id"], "succeeded")
    _deliver_events(session_factory, stripe, twice=True)
    assert _refund(session_factory, refund_id).status == "succeeded"
    assert _ledger(session_factory, invoice_id) == [TOTAL, -2_500]
    assert _due(session_factory, invoice_id) == 2_500
    with session_factory() as session:  # the client's receipt, once
        receipts = session.scalars(
            select(OutboxMessage.payload).where(OutboxMessage.task_name == TASK_NOTIFY_REFUND)
        )
        assert list(receipts) == [{"refund_id": refund_id}]


def test_more_than_remains_refundable_is_refused_with_the_reason(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    _, attempt_id = _paid_invoice(session_factory, stripe)
    run_refund(session_factory, stripe, _request(session_factory, attempt_id, amount=6_000))
    with pytest.raises(RefundRefused) as refused:
        _request(session_factory, attempt_id, amount=4_001)
    assert refused.value.code == "amount_too_large"
    assert "$40.01 is more than the $40.00 that remains refundable" in refused.value.message
    with pytest.raises(RefundRefused) as bad_reason:
        _request(session_factory, attempt_id, amount=1, reason="because")
    assert (bad_reason.value.code, bad_reason.value.message) == (
        "invalid_reason",
        "reason must be one of duplicate, fraudulent, requested_by_customer.",
    )
    run_refund(session_factory, stripe, _request(session_factory, attempt_id))  # the rest, by default
    with pytest.raises(RefundRefused) as nothing:
        _request(session_factory, attempt_id)
    assert nothing.value.code == "nothing_refundable"
    assert sorted(r["amount"] for r in stripe.server.refunds()) == [4_000, 6_000]


def test_two_clicks_at_once_make_one_refund(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    start = threading.Barrier(2)
    results: list[object] = []

    def click() -> None:
        start.wait()
        try:
            results.append(_request(session_factory, attempt_id))
        except RefundRefused as exc:
            results.append(exc.code)
        except Exception as exc:  # SQLite's writer lock under two threads
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    opened = [r for r in results if isinstance(r, str) and len(r) == 36]
    assert len(opened) == 1, results
    for refund_id in opened * 2:  # the message delivered twice: one refund at Stripe
        run_refund(session_factory, stripe, refund_id)
    assert len(stripe.server.refunds()) == 1
    assert _ledger(session_factory, invoice_id) == [TOTAL, -TOTAL]


def test_a_worker_lost_after_stripe_accepted_the_refund_is_settled_by_the_janitor_under_the_same_key(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    refund_id = _request(session_factory, attempt_id, amount=3_000)
    stripe.server.fail_next("crash", "create_refund")  # Stripe commits it, the worker dies
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, refund_id)
    assert len(stripe.server.refunds()) == 1
    assert _refund(session_factory, refund_id).stripe_refund_id is None
    stripe.server.take_events()  # its webhooks are lost too

    run_janitor(session_factory, stripe, lambda *a: None)  # too early: the worker may still be at it
    assert _refund(session_factory, refund_id).status == "pending"
    report = run_janitor(
        session_factory, stripe, lambda *a: None, now=utcnow() + STALE_AFTER + timedelta(seconds=1)
    )
    assert report.refunds_settled == {"succeeded": 1}
    refund = _refund(session_factory, refund_id)
    assert refund.status == "succeeded" and refund.stripe_refund_id == stripe.server.refunds()[0]["id"]
    assert len(stripe.server.refunds()) == 1
    creates = [r for r in stripe.server.requests if r.method == "post" and r.path == "/v1/refunds"]
    assert len(creates) == 2  # the lost call and the janitor's replay: same key, same parameters
    assert {r.idempotency_key for r in creates} == {f"offsession:refund:{refund_id}"}
    assert creates[0].params == creates[1].params
    # What the Dashboard shows of it, and what the janitor finds it by once the key is gone.
    assert stripe.server.refunds()[0]["metadata"] == {
        "refund_id": refund_id,
        "invoice_id": str(invoice_id),
        "charge_attempt_id": attempt_id,
    }
    assert _ledger(session_factory, invoice_id) == [TOTAL, -3_000]
    run_refund(session_factory, stripe, refund_id)  # the lost message redelivered: nothing more
    assert _ledger(session_factory, invoice_id) == [TOTAL, -3_000] and len(stripe.server.refunds()) == 1


def test_a_refund_that_fails_after_succeeding_is_given_back(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    refund_id = _request(session_factory, attempt_id, amount=4_000)
    run_refund(session_factory, stripe, refund_id)
    assert _ledger(session_factory, invoice_id) == [TOTAL, -4_000]
    stripe.server.settle_refund(_refund(session_factory, refund_id).stripe_refund_id or "", "failed")
    events = stripe.server.take_events()
    for event in reversed(events * 2):  # late, twice, out of order
        with session_factory() as session, session.begin():
            row = store_event(session, event)
        process_event(session_factory, stripe, row.id)
    refund = _refund(session_factory, refund_id)
    assert refund.status == "failed" and refund.failure_reason == "expired_or_canceled_card"
    assert _ledger(session_factory, invoice_id) == [TOTAL, -4_000, 4_000]
    assert _due(session_factory, invoice_id) == 0
    run_refund(session_factory, stripe, _request(session_factory, attempt_id))  # refundable again
    assert _ledger(session_factory, invoice_id)[-1] == -TOTAL


def test_a_refund_stripe_refuses_fails_with_stripes_reason_and_moves_no_money(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    refund_id = _request(session_factory, attempt_id, amount=1_000)
    stripe.server.dashboard_refund(
        _payment_intent(session_factory, attempt_id), 9_500
    )  # meanwhile, elsewhere
    stripe.server.take_events()
    assert "refused by Stripe" in run_refund(session_factory, stripe, refund_id)
    refund = _refund(session_factory, refund_id)
    assert refund.status == "failed" and "greater than unrefunded amount" in (refund.failure_reason or "")
    assert _ledger(session_factory, invoice_id) == [TOTAL]
    assert _refund_audit(session_factory, refund_id, "refund.failed") == [
        ("stripe", invoice_id, attempt_id, {"refund_id": refund_id, "reason": refund.failure_reason})
    ]


def _payment_intent(factory: sessionmaker[Session], attempt_id: str) -> str:
    with factory() as session:
        return (
            session.scalars(
                select(Payment.stripe_payment_intent_id).where(Payment.charge_attempt_id == attempt_id)
            ).one()
            or ""
        )


def test_a_dashboard_refund_lands_once_and_holds_its_amount(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    stripe.server.dashboard_refund(_payment_intent(session_factory, attempt_id), 7_000)
    _deliver_events(session_factory, stripe, twice=True)
    assert _ledger(session_factory, invoice_id) == [TOTAL, -7_000]
    with session_factory() as session:
        [row] = session.scalars(select(Refund)).all()
        assert (row.source, row.status, row.idempotency_key) == ("stripe", "succeeded", None)
    with pytest.raises(RefundRefused) as refused:
        _request(session_factory, attempt_id, amount=3_001)
    assert refused.value.code == "amount_too_large"


def _auto_charge_changes(factory: sessionmaker[Session], invoice_id: int) -> list[tuple[str, dict[str, Any]]]:
    with factory() as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.detail)
            .where(AuditEvent.invoice_id == invoice_id, AuditEvent.action == "invoice.auto_charge_changed")
            .order_by(AuditEvent.id)
        ).all()
        return [(actor, detail) for actor, detail in rows]


def test_a_refund_turns_auto_charge_off_so_the_refunded_amount_is_not_charged_again(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe, auto_charge=True)
    refund_id = _request(session_factory, attempt_id, amount=2_500)
    with session_factory() as session:  # in the refund's own transaction, audited
        assert session.get_one(Invoice, invoice_id).auto_charge is False
    assert _auto_charge_changes(session_factory, invoice_id) == [
        ("admin@example.com", {"from": True, "to": False, "because": f"refund {refund_id}"})
    ]
    run_refund(session_factory, stripe, refund_id)
    assert _due(session_factory, invoice_id) == 2_500
    _, publish = published()
    report = run_batch(
        units(session_factory, publish), slot="schedule:r", trigger="schedule", today=TODAY, now=utcnow()
    )
    assert (report.selected, report.queued) == (0, 0)  # the batch leaves the refunded money alone
    with session_factory() as session, session.begin():  # a click stays the admin's explicit decision
        invoice = load_invoice_for_charge(session, invoice_id, lock=True)
        assert invoice is not None
        again = request_charge(InSession(session), invoice, source="admin", requested_by="t")
        assert again.amount == 2_500
    # A second refund finds it off already: nothing more to turn off, nothing more audited.
    _request(session_factory, attempt_id, amount=1_000)
    assert len(_auto_charge_changes(session_factory, invoice_id)) == 1


def test_a_dashboard_refund_turns_auto_charge_off_once(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe, auto_charge=True)
    stripe.server.dashboard_refund(_payment_intent(session_factory, attempt_id), 7_000)
    _deliver_events(session_factory, stripe, twice=True)
    with session_factory() as session:
        assert session.get_one(Invoice, invoice_id).auto_charge is False
        stripe_refund_id = session.scalars(select(Refund.stripe_refund_id)).one()
    assert _auto_charge_changes(session_factory, invoice_id) == [
        ("stripe", {"from": True, "to": False, "because": f"refund {stripe_refund_id}"})
    ]


def test_the_client_gets_a_receipt_for_a_refund_once(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    stripe = FakeStripe()
    _, attempt_id = _paid_invoice(session_factory, stripe)
    refund_id = _request(session_factory, attempt_id, amount=1_250)
    mailer = FileMailer(tmp_path)
    assert deliver_refund_receipt(session_factory, mailer, refund_id) is False  # not refunded yet
    run_refund(session_factory, stripe, refund_id)
    assert deliver_refund_receipt(session_factory, mailer, refund_id) is True
    assert deliver_refund_receipt(session_factory, mailer, refund_id) is False
    [sent] = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in tmp_path.glob("*.eml")
    ]
    assert sent["To"] == "c1@example.com" and sent["Subject"] == "Refund: $12.50 for invoice INV-1"
    assert "Visa card ending in 4242" in sent.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_an_event_naming_our_refund_from_another_account_or_for_another_amount_changes_nothing(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    stripe.server.new_refund_status = "pending"
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    refund_id = _request(session_factory, attempt_id, amount=2_000)
    run_refund(session_factory, stripe, refund_id)
    stripe.server.take_events()
    refund = _refund(session_factory, refund_id)
    succeeded = {
        "id": refund.stripe_refund_id,
        "object": "refund",
        "amount": 2_000,
        "currency": "usd",
        "payment_intent": refund.payment_intent_id,
        "metadata": {"refund_id": refund_id},
        "status": "succeeded",
    }
    forged = [
        {"id": "evt_f1", "type": "refund.updated", "account": "acct_other", "data": {"object": succeeded}},
        {"id": "evt_f2", "type": "refund.updated", "data": {"object": {**succeeded, "amount": 9_000}}},
    ]
    outcomes = []
    for event in forged:
        with session_factory() as session, session.begin():
            row = store_event(session, event)
        outcomes.append(process_event(session_factory, stripe, row.id))
    assert [o.split(" ")[0] for o in outcomes] == ["flagged", "flagged"], outcomes
    assert _refund(session_factory, refund_id).status == "pending"
    assert _ledger(session_factory, invoice_id) == [TOTAL]


def _refund_audit(
    factory: sessionmaker[Session], refund_id: str, action: str
) -> list[tuple[str, int | None, str | None, dict[str, Any]]]:
    """(actor, invoice id, charge attempt id, detail) of the refund's audit entries of `action`: what the
    invoice's and the charge's history show."""
    with factory() as session:
        return [
            (e.actor, e.invoice_id, e.charge_attempt_id, e.detail)
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
            if e.detail.get("refund_id") == refund_id
        ]


def _refund_creates(stripe: FakeStripe) -> int:
    return len([r for r in stripe.server.requests if r.method == "post" and r.path == "/v1/refunds"])


@pytest.mark.parametrize("account", [None, "acct_1Refunds"])
def test_the_janitor_settles_a_refund_stripe_knows_by_its_id_without_asking_for_it_again(
    session_factory: sessionmaker[Session], account: str | None
) -> None:
    """Stripe took the refund (pending there) and its later success was lost with its webhooks: the
    janitor reads it by its id, leaves a fresh one alone, and books it once; nothing is created again."""
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe, account=account)
    stripe.server.new_refund_status = "pending"
    refund_id = _request(session_factory, attempt_id, amount=2_500)
    run_refund(session_factory, stripe, refund_id)
    stripe_refund_id = _refund(session_factory, refund_id).stripe_refund_id
    assert stripe_refund_id is not None and _ledger(session_factory, invoice_id) == [TOTAL]
    stale = utcnow() + STALE_AFTER + timedelta(seconds=1)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"pending": 1}  # still pending there
    assert settle_stale_refunds(session_factory, stripe, now=utcnow() + STALE_AFTER / 2) == {}
    stripe.server.settle_refund(stripe_refund_id, "succeeded", stripe_account=account)
    stripe.server.take_events()  # lost
    creates = _refund_creates(stripe)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"succeeded": 1}
    assert _refund(session_factory, refund_id).status == "succeeded"
    assert _ledger(session_factory, invoice_id) == [TOTAL, -2_500]
    assert _refund_creates(stripe) == creates
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {}  # final: looked at no more


@pytest.mark.parametrize("account", [None, "acct_1Refunds"])
def test_past_the_keys_lifetime_the_janitor_looks_for_the_refund_instead_of_replaying_it(
    session_factory: sessionmaker[Session], account: str | None
) -> None:
    """A day later Stripe may have forgotten the key: a replay could refund twice. The janitor lists the
    charge's refunds for the row's own id instead: one Stripe made is booked, one it never saw fails (the
    amount refundable again), and nothing is created."""
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe, account=account)
    other_invoice_id, other_attempt_id = _paid_invoice(session_factory, stripe, 2, account=account)
    made = _request(session_factory, attempt_id, amount=1_000)
    stripe.server.fail_next("crash", "create_refund")  # Stripe made it; the worker died
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, made)
    never_sent = _request(session_factory, other_attempt_id, amount=2_000)
    stripe.server.fail_next("crash_before", "create_refund")  # the worker died before the call
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, never_sent)
    stripe.server.take_events()
    creates = _refund_creates(stripe)
    later = utcnow() + KEY_REPLAY_WINDOW + timedelta(minutes=1)
    assert settle_stale_refunds(session_factory, stripe, now=later) == {"succeeded": 1, "never_made": 1}
    assert _refund_creates(stripe) == creates
    assert _refund(session_factory, made).status == "succeeded"
    assert _ledger(session_factory, invoice_id) == [TOTAL, -1_000]
    failed = _refund(session_factory, never_sent)
    assert (
        failed.status == "failed" and failed.failure_reason == "Never reached Stripe (no refund of it there)."
    )
    assert _ledger(session_factory, other_invoice_id) == [TOTAL]
    assert [entry[:3] for entry in _refund_audit(session_factory, never_sent, "refund.failed")] == [
        ("janitor", other_invoice_id, other_attempt_id)
    ]
    run_refund(session_factory, stripe, _request(session_factory, other_attempt_id))  # refundable again
    assert _ledger(session_factory, other_invoice_id) == [TOTAL, -TOTAL]


def test_one_sweep_settles_each_stale_refund_by_its_own_outcome(
    session_factory: sessionmaker[Session],
) -> None:
    """A replay Stripe refuses (the charge was refunded in the Dashboard meanwhile) fails the refund with
    Stripe's reason, audited as the janitor's; one Stripe does not answer about stays pending for the next
    sweep; neither stops the sweep from making a third under its own key."""
    stripe = FakeStripe()
    _, unanswered_attempt = _paid_invoice(session_factory, stripe)
    made_invoice, made_attempt = _paid_invoice(session_factory, stripe, 2)
    refused_invoice, refused_attempt = _paid_invoice(session_factory, stripe, 3)
    stripe.server.new_refund_status = "pending"
    unanswered = _request(session_factory, unanswered_attempt, amount=1_000)
    run_refund(session_factory, stripe, unanswered)
    stripe.server.new_refund_status = "succeeded"
    made = _request(session_factory, made_attempt, amount=1_500)  # its worker never ran
    refused = _request(session_factory, refused_attempt, amount=1_000)
    stripe.server.dashboard_refund(_payment_intent(session_factory, refused_attempt), 9_500)
    stripe.server.take_events()
    stripe.server.fail_next("5xx", "retrieve_refund", times=20)
    stale = utcnow() + STALE_AFTER + timedelta(seconds=1)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {
        "unanswered": 1,
        "succeeded": 1,
        "refused": 1,
    }
    stripe.server.clear_faults()
    assert _refund(session_factory, unanswered).status == "pending"
    assert _refund(session_factory, made).status == "succeeded"
    assert _ledger(session_factory, made_invoice) == [TOTAL, -1_500]
    failed = _refund(session_factory, refused)
    assert failed.status == "failed" and "greater than unrefunded amount" in (failed.failure_reason or "")
    assert _ledger(session_factory, refused_invoice) == [TOTAL]
    assert _refund_audit(session_factory, refused, "refund.failed") == [
        ("janitor", refused_invoice, refused_attempt, {"refund_id": refused, "reason": failed.failure_reason})
    ]
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"pending": 1}


def _deliver(factory: sessionmaker[Session], stripe: FakeStripe, event: dict[str, Any]) -> str:
    with factory() as session, session.begin():
        row = store_event(session, event)
    return process_event(factory, stripe, row.id)


def _flagged_attempts(factory: sessionmaker[Session]) -> list[str | None]:
    with factory() as session:
        return list(
            session.scalars(
                select(AuditEvent.charge_attempt_id)
                .where(AuditEvent.action == "webhook.flagged")
                .order_by(AuditEvent.id)
            )
        )


def test_a_refund_made_elsewhere_is_recorded_only_on_its_charges_account_currency_and_remaining_amount(
    session_factory: sessionmaker[Session],
) -> None:
    """A refund with no row of ours (made in the Dashboard) is recorded once it refunds a payment of ours
    on the account it was made on, in its currency, for no more than remains; otherwise the event is
    flagged against the charge with the reason, and the ledger does not move."""
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    pi_id = _payment_intent(session_factory, attempt_id)

    def refund_event(n: int, **changes: Any) -> dict[str, Any]:
        account = changes.pop("account", None)
        obj = {
            "id": f"re_else{n}",
            "object": "refund",
            "amount": 1_000,
            "currency": "usd",
            "payment_intent": pi_id,
            "metadata": {},
            "status": "succeeded",
            **changes,
        }
        return {"id": f"evt_else{n}", "type": "refund.created", "account": account, "data": {"object": obj}}

    outcomes = [
        _deliver(session_factory, stripe, refund_event(1, account="acct_other")),
        _deliver(session_factory, stripe, refund_event(2, currency="EUR")),
        _deliver(session_factory, stripe, refund_event(3, amount=TOTAL + 1, status="pending")),
    ]
    assert outcomes == [
        f"flagged (account_mismatch): Refund re_else1 comes from account acct_other; charge {attempt_id} was "
        "made on the platform account.",
        f"flagged (currency_mismatch): Refund re_else2 is in EUR; charge {attempt_id} is in USD.",
        "flagged (amount_mismatch): Refund re_else3 of 10001 would take back more than the $100.00 left of "
        f"payment {pi_id}.",
    ]
    assert [
        _deliver(session_factory, stripe, refund_event(5, amount=0)).split(":")[0],
        _deliver(session_factory, stripe, refund_event(6, status="mystery")).split(":")[0],
    ] == ["flagged (amount_mismatch)"] * 2
    assert _deliver(session_factory, stripe, refund_event(7, currency="")) == (
        f"flagged (currency_mismatch): Refund re_else7 is in no currency; charge {attempt_id} is in USD."
    )
    assert _flagged_attempts(session_factory) == [attempt_id] * 6
    assert _ledger(session_factory, invoice_id) == [TOTAL]
    # One minor unit, as it is: recorded, as Stripe's.
    assert (
        _deliver(session_factory, stripe, refund_event(4, amount=1)) == "refund.created: 1 refund(s) recorded"
    )
    assert _ledger(session_factory, invoice_id) == [TOTAL, -1]
    with session_factory() as session:
        row = session.scalars(select(Refund).where(Refund.stripe_refund_id == "re_else4")).one()
        assert (row.source, row.requested_by, row.status, row.payment_intent_id, row.stripe_account_id) == (
            "stripe",
            "stripe",
            "succeeded",
            pi_id,
            None,
        )


def test_a_refund_made_elsewhere_on_a_connected_account_is_recorded_from_that_account_only(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    pi_id = _payment_intent(session_factory, attempt_id)
    with session_factory() as session, session.begin():  # the charge was made on a connected account
        session.get_one(ChargeAttempt, attempt_id).stripe_account_id = "acct_connected"
    obj = {
        "id": "re_conn",
        "object": "refund",
        "amount": 1_000,
        "currency": "usd",
        "payment_intent": pi_id,
        "metadata": {},
        "status": "succeeded",
    }
    platform = _deliver(
        session_factory, stripe, {"id": "evt_p", "type": "refund.created", "data": {"object": obj}}
    )
    assert platform == (
        f"flagged (account_mismatch): Refund re_conn comes from account platform; charge {attempt_id} was "
        "made on acct_connected."
    )
    connected = {
        "id": "evt_c",
        "type": "refund.created",
        "account": "acct_connected",
        "data": {"object": obj},
    }
    assert _deliver(session_factory, stripe, connected) == "refund.created: 1 refund(s) recorded"
    assert _ledger(session_factory, invoice_id) == [TOTAL, -1_000]
    with session_factory() as session:  # the janitor and the page ask that account about it
        assert session.scalars(select(Refund.stripe_account_id)).all() == ["acct_connected"]


def test_a_refund_of_a_payment_no_charge_of_ours_made_is_flagged(
    session_factory: sessionmaker[Session],
) -> None:
    """A ledger entry that carries a PaymentIntent but no charge attempt (none of ours made it): a refund
    of it is not ours to record."""
    stripe = FakeStripe()
    invoice_id, _ = _paid_invoice(session_factory, stripe)
    with session_factory() as session, session.begin():
        session.add(
            Payment(
                invoice_id=invoice_id,
                amount=500,
                method="card",
                received_at=utcnow(),
                stripe_payment_intent_id="pi_not_ours",
                recorded_by="t",
            )
        )
    obj = {
        "id": "re_orphan",
        "object": "refund",
        "amount": 500,
        "currency": "usd",
        "payment_intent": "pi_not_ours",
        "metadata": {},
        "status": "succeeded",
    }
    outcome = _deliver(
        session_factory, stripe, {"id": "evt_o", "type": "refund.created", "data": {"object": obj}}
    )
    assert (
        outcome == "flagged (refund_mismatch): Refund re_orphan: payment pi_not_ours is not a charge of ours."
    )
    assert _ledger(session_factory, invoice_id) == [TOTAL, 500]


def _run_refund_messages(factory: sessionmaker[Session], refund_id: str) -> list[OutboxMessage]:
    with factory() as session:
        return [
            m
            for m in session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.task_name == TASK_RUN_REFUND)
                .order_by(OutboxMessage.id)
            )
            if m.payload == {"refund_id": refund_id}
        ]


def test_a_refund_stripe_does_not_answer_is_tried_again_later_under_its_key_then_left_to_the_janitor(
    session_factory: sessionmaker[Session],
) -> None:
    """No answer: the worker asks again later, each wait longer (RETRY_DELAY times the tries so far), under
    the same key; after MAX_TRIES it stops and the janitor settles it, still under that key."""
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    refund_id = _request(session_factory, attempt_id, amount=2_000)
    assert len(_run_refund_messages(session_factory, refund_id)) == 1  # request_refund's own
    stripe.server.fail_next("5xx", "create_refund", times=1_000)
    for tries in range(1, MAX_TRIES):
        before = utcnow()
        outcome = run_refund(session_factory, stripe, refund_id)
        after = utcnow()
        assert outcome.startswith(f"refund {refund_id}: no answer (")
        assert outcome.endswith("), retried later under the same key")
        messages = _run_refund_messages(session_factory, refund_id)
        assert len(messages) == 1 + tries
        due = messages[-1].available_at
        assert due is not None
        assert (
            before + RETRY_DELAY * tries <= due.replace(tzinfo=before.tzinfo) <= after + RETRY_DELAY * tries
        )
        assert _refund(session_factory, refund_id).tries == tries
    assert (
        run_refund(session_factory, stripe, refund_id)
        == f"refund {refund_id}: no answer, left to the janitor"
    )
    assert len(_run_refund_messages(session_factory, refund_id)) == MAX_TRIES  # no more
    assert _refund(session_factory, refund_id).tries == MAX_TRIES
    stripe.server.clear_faults()
    assert settle_stale_refunds(
        session_factory, stripe, now=utcnow() + STALE_AFTER + timedelta(seconds=1)
    ) == {"succeeded": 1}
    creates = [r for r in stripe.server.requests if r.method == "post" and r.path == "/v1/refunds"]
    assert {r.idempotency_key for r in creates} == {f"offsession:refund:{refund_id}"}
    assert len(stripe.server.refunds()) == 1
    assert _ledger(session_factory, invoice_id) == [TOTAL, -2_000]


def test_a_refund_message_delivered_again_asks_stripe_nothing_once_stripe_has_the_refund(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    stripe.server.new_refund_status = "pending"
    _, attempt_id = _paid_invoice(session_factory, stripe)
    refund_id = _request(session_factory, attempt_id, amount=2_000)
    assert run_refund(session_factory, stripe, refund_id) == f"refund {refund_id}: pending"
    creates = _refund_creates(stripe)
    assert run_refund(session_factory, stripe, refund_id) == f"refund {refund_id}: pending already"
    assert _refund_creates(stripe) == creates and _refund(session_factory, refund_id).tries == 1
    assert run_refund(session_factory, stripe, "no-such-refund") == "no such refund"


def test_a_refusal_that_comes_after_a_webhook_recorded_the_refund_does_not_fail_it(
    session_factory: sessionmaker[Session],
) -> None:
    """The webhook of a refund Stripe accepted lands while the worker's call is out, and the call then meets
    a refusal: the refund Stripe holds is not failed (its status follows Stripe's word only)."""
    stripe = FakeStripe()
    _, attempt_id = _paid_invoice(session_factory, stripe)
    refund_id = _request(session_factory, attempt_id, amount=2_000)
    stripe.server.dashboard_refund(
        _payment_intent(session_factory, attempt_id), TOTAL
    )  # so the call is refused

    def webhook_meanwhile(record: Any) -> None:
        if record.path == "/v1/refunds" and record.method == "post":
            with session_factory() as session, session.begin():
                session.get_one(Refund, refund_id).stripe_refund_id = "re_recorded_meanwhile"

    stripe.server.on_request = webhook_meanwhile
    assert run_refund(session_factory, stripe, refund_id).startswith(
        f"refund {refund_id}: refused by Stripe: "
    )
    refund = _refund(session_factory, refund_id)
    assert (refund.status, refund.failure_reason) == ("pending", None)
    assert _refund_audit(session_factory, refund_id, "refund.failed") == []


def _refusal(factory: sessionmaker[Session], attempt_id: str, **kw: Any) -> tuple[str, str]:
    with pytest.raises(RefundRefused) as refused:
        _request(factory, attempt_id, **kw)
    return refused.value.code, refused.value.message


def test_each_refusal_of_a_refund_says_why_and_only_a_refund_not_yet_at_stripe_holds_the_next(
    session_factory: sessionmaker[Session],
) -> None:
    """The codes and words the API (409) and the invoice page show. Another refund of the charge waits
    only while one is on its way to Stripe (pending, no Stripe id yet): not once Stripe holds it (pending
    there), nor after one failed."""
    stripe = FakeStripe()
    _, attempt_id = _paid_invoice(session_factory, stripe)
    with pytest.raises(RefundNotFound):
        _request(session_factory, "no-such-charge")
    first = _request(session_factory, attempt_id, amount=1_000)
    assert _refusal(session_factory, attempt_id, amount=1_000) == ("refund_in_progress", IN_PROGRESS)
    stripe.server.new_refund_status = "pending"
    run_refund(session_factory, stripe, first)  # Stripe holds it now, pending there
    second = _request(session_factory, attempt_id, amount=1_000)
    stripe.server.fail_next("crash_before", "create_refund")
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, second)
    assert settle_stale_refunds(
        session_factory, stripe, now=utcnow() + KEY_REPLAY_WINDOW + timedelta(minutes=1)
    ) == {"pending": 1, "never_made": 1}
    third = _request(session_factory, attempt_id, amount=1_000, reason="requested_by_customer")
    with session_factory() as session:
        row = session.get_one(Refund, third)
        assert (row.status, row.requested_by, row.source, row.reason, row.amount, row.currency) == (
            "pending",
            "admin@example.com",
            "admin",
            "requested_by_customer",
            1_000,
            "usd",
        )
    assert _refund_audit(session_factory, third, "refund.requested") == [
        (
            "admin@example.com",
            row.invoice_id,
            attempt_id,
            {"refund_id": third, "amount": 1_000, "currency": "usd", "reason": "requested_by_customer"},
        )
    ]
    pi_id = _payment_intent(session_factory, attempt_id)
    dispute = {
        "id": "evt_dispute",
        "type": "charge.dispute.created",
        "created": 1,
        "data": {
            "object": {
                "id": "dp_1",
                "object": "dispute",
                "payment_intent": pi_id,
                "amount": 1_000,
                "currency": "usd",
                "status": "needs_response",
                "reason": "fraudulent",
            }
        },
    }
    run_refund(session_factory, stripe, third)
    _deliver(session_factory, stripe, dispute)
    assert _refusal(session_factory, attempt_id, amount=1) == (
        "charge_disputed",
        "The client's bank disputes this charge: it cannot be refunded while the dispute is open.",
    )


def test_only_a_card_charge_that_succeeded_can_be_refunded(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    _paid_invoice(session_factory, stripe)
    with session_factory() as session, session.begin():
        invoice = invoices.create_invoice(
            session,
            session.scalars(select(Client)).one(),
            number="INV-Q",
            currency="usd",
            total=TOTAL,
            due_date=date(2026, 11, 1),
            actor="t",
        )
        queued = request_charge(InSession(session), invoice, source="admin", requested_by="t").id
    assert _refusal(session_factory, queued) == (
        "not_refundable",
        "Only a card charge that succeeded can be refunded.",
    )


def test_a_refund_of_a_charge_on_a_connected_account_is_made_there(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe, account="acct_1Refunds")
    refund_id = _request(session_factory, attempt_id, amount=1_000)
    assert _refund(session_factory, refund_id).stripe_account_id == "acct_1Refunds"
    assert run_refund(session_factory, stripe, refund_id) == f"refund {refund_id}: succeeded"
    assert [r["amount"] for r in stripe.server.refunds("acct_1Refunds")] == [1_000]
    assert stripe.server.refunds() == []
    assert _ledger(session_factory, invoice_id) == [TOTAL, -1_000]


def test_a_dashboard_refund_that_later_fails_is_found_by_its_stripe_id_and_given_back(
    session_factory: sessionmaker[Session],
) -> None:
    """A refund made elsewhere carries none of our metadata: its later events find the row it left by
    Stripe's id, so the failure gives the money back on that row instead of recording another refund."""
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    made = stripe.server.dashboard_refund(_payment_intent(session_factory, attempt_id), 7_000)
    _deliver_events(session_factory, stripe)
    stripe.server.settle_refund(made["id"], "failed")
    _deliver_events(session_factory, stripe)
    with session_factory() as session:
        [row] = session.scalars(select(Refund)).all()
        assert (row.stripe_refund_id, row.status) == (made["id"], "failed")
    assert _ledger(session_factory, invoice_id) == [TOTAL, -7_000, 7_000]


def test_the_webhook_of_a_refund_whose_worker_died_finds_our_row_by_its_metadata(
    session_factory: sessionmaker[Session],
) -> None:
    """Stripe made the refund but the worker died before storing Stripe's id: the refund's event finds our
    row by metadata.refund_id and completes it, rather than taking it for one made elsewhere."""
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    refund_id = _request(session_factory, attempt_id, amount=3_000)
    stripe.server.fail_next("crash", "create_refund")
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, refund_id)
    _deliver_events(session_factory, stripe)
    with session_factory() as session:
        [row] = session.scalars(select(Refund)).all()
        assert (row.id, row.status, row.stripe_refund_id) == (
            refund_id,
            "succeeded",
            stripe.server.refunds()[0]["id"],
        )
    assert _ledger(session_factory, invoice_id) == [TOTAL, -3_000]


def test_a_refund_listed_on_its_charge_without_its_payment_intent_is_bound_by_the_charges(
    session_factory: sessionmaker[Session],
) -> None:
    """A Charge's refunds list (charge.refunded) may name only the charge: the refund is bound to the
    Charge's PaymentIntent, and recorded."""
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    pi_id = _payment_intent(session_factory, attempt_id)
    refund = {
        "id": "re_listed",
        "object": "refund",
        "amount": 2_000,
        "currency": "usd",
        "metadata": {},
        "status": "succeeded",
        "charge": "ch_x",
    }
    charge = {"id": "ch_x", "object": "charge", "payment_intent": pi_id, "refunds": {"data": [refund]}}
    event = {"id": "evt_listed", "type": "charge.refunded", "data": {"object": charge}}
    assert _deliver(session_factory, stripe, event) == "charge.refunded: 1 refund(s) recorded"
    assert _ledger(session_factory, invoice_id) == [TOTAL, -2_000]


def test_the_janitor_settles_a_refund_waiting_for_an_action_too(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    stripe.server.new_refund_status = "requires_action"
    refund_id = _request(session_factory, attempt_id, amount=1_000)
    run_refund(session_factory, stripe, refund_id)
    assert _refund(session_factory, refund_id).status == "requires_action"
    stripe.server.settle_refund(_refund(session_factory, refund_id).stripe_refund_id or "", "succeeded")
    stripe.server.take_events()  # lost
    stale = utcnow() + STALE_AFTER + timedelta(seconds=1)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"succeeded": 1}
    assert _ledger(session_factory, invoice_id) == [TOTAL, -1_000]


def test_the_janitor_leaves_a_refund_stripe_describes_otherwise_alone_and_counts_each(
    session_factory: sessionmaker[Session],
) -> None:
    """What Stripe answers about a refund does not match the row (another amount): nothing changes, and each
    such refund is counted."""
    stripe = FakeStripe()
    stripe.server.new_refund_status = "pending"
    ids = []
    for n in (1, 2):
        _, attempt_id = _paid_invoice(session_factory, stripe, n)
        refund_id = _request(session_factory, attempt_id, amount=1_000)
        run_refund(session_factory, stripe, refund_id)
        stripe.server.settle_refund(_refund(session_factory, refund_id).stripe_refund_id or "", "succeeded")
        ids.append(refund_id)
    stripe.server.take_events()
    with session_factory() as session, session.begin():
        for refund_id in ids:
            session.get_one(Refund, refund_id).amount = 999
    stale = utcnow() + STALE_AFTER + timedelta(seconds=1)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"mismatch": 2}
    assert [_refund(session_factory, refund_id).status for refund_id in ids] == ["pending", "pending"]


def test_a_refund_already_in_the_ledger_from_before_refunds_had_rows_is_adopted_not_written_again(
    session_factory: sessionmaker[Session],
) -> None:
    """A Dashboard refund recorded straight into the ledger (no refund row): its next event adopts that
    entry for the row it writes; the ledger keeps one."""
    stripe = FakeStripe()
    invoice_id, attempt_id = _paid_invoice(session_factory, stripe)
    pi_id = _payment_intent(session_factory, attempt_id)
    with session_factory() as session, session.begin():
        entry = Payment(
            invoice_id=invoice_id,
            amount=-1_500,
            method="card",
            received_at=utcnow(),
            stripe_refund_id="re_before",
            charge_attempt_id=attempt_id,
            recorded_by="stripe",
        )
        session.add(entry)
        session.flush()
        entry_id = entry.id
    obj = {
        "id": "re_before",
        "object": "refund",
        "amount": 1_500,
        "currency": "usd",
        "payment_intent": pi_id,
        "metadata": {},
        "status": "succeeded",
    }
    outcome = _deliver(
        session_factory, stripe, {"id": "evt_b", "type": "refund.updated", "data": {"object": obj}}
    )
    assert outcome == "refund.updated: 0 refund(s) recorded"
    assert _ledger(session_factory, invoice_id) == [TOTAL, -1_500]
    with session_factory() as session:
        assert session.scalars(select(Refund.ledger_payment_id)).all() == [entry_id]
    again = _deliver(
        session_factory, stripe, {"id": "evt_b2", "type": "refund.updated", "data": {"object": obj}}
    )
    assert again == "refund.updated: 0 refund(s) recorded"
    assert _ledger(session_factory, invoice_id) == [TOTAL, -1_500]
