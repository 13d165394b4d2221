"""Refunds of card charges asked here: each lands once, the ledger and the invoice's amount due follow
Stripe's word, a refund that fails is given back, two clicks make one refund, every refusal says why, a
worker that gets no answer tries again under the same key, and a worker lost after Stripe accepted it
is settled by the janitor under that key. Stripe's refund events and refunds made elsewhere:
test_refund_reconciliation.py."""

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
from shared.domain.models import AuditEvent, Client, Invoice, OutboxMessage, Refund, utcnow
from shared.domain.refunds import RefundRefused
from shared.services import invoices
from shared.services.batch import run_batch
from shared.services.charge_requests import load_invoice_for_charge, request_charge
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
    run_refund,
    settle_stale_refunds,
)
from shared.services.webhooks import process_event, store_event
from tests.support.factories import TODAY
from tests.support.fake_stripe import FakeStripe, WorkerCrashed
from tests.support.refunds import (
    TOTAL,
    admin_refund,
    amount_due,
    deliver,
    deliver_events,
    ledger,
    paid_invoice,
    payment_intent_of,
    refund_audit,
    refund_creates,
    refund_row,
)
from tests.support.unit_of_work import InSession, published, units


def test_a_partial_refund_is_pending_until_stripe_says_it_succeeded_then_the_ledger_follows(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    assert amount_due(session_factory, invoice_id) == 0
    refund_id = admin_refund(session_factory, attempt_id, amount=2_500, reason="requested_by_customer")
    refund = refund_row(session_factory, refund_id)
    assert (refund.status, refund.amount, refund.idempotency_key) == (
        "pending",
        2_500,
        f"offsession:refund:{refund_id}",
    )
    with session_factory() as session:  # the key and the message were committed before any call
        assert session.scalar(
            select(OutboxMessage.payload).where(OutboxMessage.task_name == TASK_RUN_REFUND)
        ) == {"refund_id": refund_id}
    assert stripe.server.refunds() == [] and amount_due(session_factory, invoice_id) == 0

    stripe.server.new_refund_status = "pending"  # as pm_card_pendingRefund: pending first
    assert run_refund(session_factory, stripe, refund_id).endswith("pending")
    assert ledger(session_factory, invoice_id) == [TOTAL]  # nothing taken back while pending
    [at_stripe] = stripe.server.refunds()
    assert at_stripe["amount"] == 2_500 and at_stripe["reason"] == "requested_by_customer"
    assert at_stripe["metadata"]["refund_id"] == refund_id

    stripe.server.settle_refund(at_stripe["id"], "succeeded")
    deliver_events(session_factory, stripe, twice=True)
    assert refund_row(session_factory, refund_id).status == "succeeded"
    assert ledger(session_factory, invoice_id) == [TOTAL, -2_500]
    assert amount_due(session_factory, invoice_id) == 2_500
    with session_factory() as session:  # the client's receipt, once
        receipts = session.scalars(
            select(OutboxMessage.payload).where(OutboxMessage.task_name == TASK_NOTIFY_REFUND)
        )
        assert list(receipts) == [{"refund_id": refund_id}]


def test_more_than_remains_refundable_is_refused_with_the_reason(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    _, attempt_id = paid_invoice(session_factory, stripe)
    run_refund(session_factory, stripe, admin_refund(session_factory, attempt_id, amount=6_000))
    with pytest.raises(RefundRefused) as refused:
        admin_refund(session_factory, attempt_id, amount=4_001)
    assert refused.value.code == "amount_too_large"
    assert "$40.01 is more than the $40.00 that remains refundable" in refused.value.message
    with pytest.raises(RefundRefused) as bad_reason:
        admin_refund(session_factory, attempt_id, amount=1, reason="because")
    assert (bad_reason.value.code, bad_reason.value.message) == (
        "invalid_reason",
        "reason must be one of duplicate, fraudulent, requested_by_customer.",
    )
    run_refund(session_factory, stripe, admin_refund(session_factory, attempt_id))  # the rest, by default
    with pytest.raises(RefundRefused) as nothing:
        admin_refund(session_factory, attempt_id)
    assert nothing.value.code == "nothing_refundable"
    assert sorted(r["amount"] for r in stripe.server.refunds()) == [4_000, 6_000]


def test_two_clicks_at_once_make_one_refund(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    start = threading.Barrier(2)
    results: list[object] = []

    def click() -> None:
        start.wait()
        try:
            results.append(admin_refund(session_factory, attempt_id))
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
    assert ledger(session_factory, invoice_id) == [TOTAL, -TOTAL]


def test_a_worker_lost_after_stripe_accepted_the_refund_is_settled_by_the_janitor_under_the_same_key(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=3_000)
    stripe.server.fail_next("crash", "create_refund")  # Stripe commits it, the worker dies
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, refund_id)
    assert len(stripe.server.refunds()) == 1
    assert refund_row(session_factory, refund_id).stripe_refund_id is None
    stripe.server.take_events()  # its webhooks are lost too

    run_janitor(session_factory, stripe, lambda *a: None)  # too early: the worker may still be at it
    assert refund_row(session_factory, refund_id).status == "pending"
    report = run_janitor(
        session_factory, stripe, lambda *a: None, now=utcnow() + STALE_AFTER + timedelta(seconds=1)
    )
    assert report.refunds_settled == {"succeeded": 1}
    refund = refund_row(session_factory, refund_id)
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
    assert ledger(session_factory, invoice_id) == [TOTAL, -3_000]
    run_refund(session_factory, stripe, refund_id)  # the lost message redelivered: nothing more
    assert ledger(session_factory, invoice_id) == [TOTAL, -3_000] and len(stripe.server.refunds()) == 1


def test_a_refund_that_fails_after_succeeding_is_given_back(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=4_000)
    run_refund(session_factory, stripe, refund_id)
    assert ledger(session_factory, invoice_id) == [TOTAL, -4_000]
    stripe.server.settle_refund(refund_row(session_factory, refund_id).stripe_refund_id or "", "failed")
    events = stripe.server.take_events()
    for event in reversed(events * 2):  # late, twice, out of order
        with session_factory() as session, session.begin():
            row = store_event(session, event)
        process_event(session_factory, stripe, row.id)
    refund = refund_row(session_factory, refund_id)
    assert refund.status == "failed" and refund.failure_reason == "expired_or_canceled_card"
    assert ledger(session_factory, invoice_id) == [TOTAL, -4_000, 4_000]
    assert amount_due(session_factory, invoice_id) == 0
    run_refund(session_factory, stripe, admin_refund(session_factory, attempt_id))  # refundable again
    assert ledger(session_factory, invoice_id)[-1] == -TOTAL


def test_a_refund_stripe_refuses_fails_with_stripes_reason_and_moves_no_money(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=1_000)
    stripe.server.dashboard_refund(
        payment_intent_of(session_factory, attempt_id), 9_500
    )  # meanwhile, elsewhere
    stripe.server.take_events()
    assert "refused by Stripe" in run_refund(session_factory, stripe, refund_id)
    refund = refund_row(session_factory, refund_id)
    assert refund.status == "failed" and "greater than unrefunded amount" in (refund.failure_reason or "")
    assert ledger(session_factory, invoice_id) == [TOTAL]
    assert refund_audit(session_factory, refund_id, "refund.failed") == [
        ("stripe", invoice_id, attempt_id, {"refund_id": refund_id, "reason": refund.failure_reason})
    ]


def _auto_charge_changes(
    factory: sessionmaker[Session], invoice_id: int
) -> list[tuple[str, str | None, dict[str, Any]]]:
    with factory() as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.charge_attempt_id, AuditEvent.detail)
            .where(AuditEvent.invoice_id == invoice_id, AuditEvent.action == "invoice.auto_charge_changed")
            .order_by(AuditEvent.id)
        ).all()
        return [(actor, charge, detail) for actor, charge, detail in rows]


def test_a_refund_turns_auto_charge_off_so_the_refunded_amount_is_not_charged_again(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe, auto_charge=True)
    refund_id = admin_refund(session_factory, attempt_id, amount=2_500)
    with session_factory() as session:  # in the refund's own transaction, audited
        assert session.get_one(Invoice, invoice_id).auto_charge is False
    assert _auto_charge_changes(session_factory, invoice_id) == [
        ("admin@example.com", attempt_id, {"from": True, "to": False, "because": f"refund {refund_id}"})
    ]
    run_refund(session_factory, stripe, refund_id)
    assert amount_due(session_factory, invoice_id) == 2_500
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
    admin_refund(session_factory, attempt_id, amount=1_000)
    assert len(_auto_charge_changes(session_factory, invoice_id)) == 1


def test_a_dashboard_refund_turns_auto_charge_off_once(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe, auto_charge=True)
    stripe.server.dashboard_refund(payment_intent_of(session_factory, attempt_id), 7_000)
    deliver_events(session_factory, stripe, twice=True)
    with session_factory() as session:
        assert session.get_one(Invoice, invoice_id).auto_charge is False
        stripe_refund_id = session.scalars(select(Refund.stripe_refund_id)).one()
    assert _auto_charge_changes(session_factory, invoice_id) == [
        ("stripe", attempt_id, {"from": True, "to": False, "because": f"refund {stripe_refund_id}"})
    ]


def test_the_client_gets_a_receipt_for_a_refund_once(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    stripe = FakeStripe()
    _, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=1_250)
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


@pytest.mark.parametrize("account", [None, "acct_1Refunds"])
def test_the_janitor_settles_a_refund_stripe_knows_by_its_id_without_asking_for_it_again(
    session_factory: sessionmaker[Session], account: str | None
) -> None:
    """Stripe took the refund (pending there) and its later success was lost with its webhooks: the
    janitor reads it by its id, leaves a fresh one alone, and books it once; nothing is created again."""
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe, account=account)
    stripe.server.new_refund_status = "pending"
    refund_id = admin_refund(session_factory, attempt_id, amount=2_500)
    run_refund(session_factory, stripe, refund_id)
    stripe_refund_id = refund_row(session_factory, refund_id).stripe_refund_id
    assert stripe_refund_id is not None and ledger(session_factory, invoice_id) == [TOTAL]
    stale = utcnow() + STALE_AFTER + timedelta(seconds=1)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"pending": 1}  # still pending there
    assert settle_stale_refunds(session_factory, stripe, now=utcnow() + STALE_AFTER / 2) == {}
    stripe.server.settle_refund(stripe_refund_id, "succeeded", stripe_account=account)
    stripe.server.take_events()  # lost
    creates = refund_creates(stripe)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"succeeded": 1}
    assert refund_row(session_factory, refund_id).status == "succeeded"
    assert [entry[0] for entry in refund_audit(session_factory, refund_id, "refund.succeeded")] == ["janitor"]
    assert ledger(session_factory, invoice_id) == [TOTAL, -2_500]
    assert refund_creates(stripe) == creates
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {}  # final: looked at no more


@pytest.mark.parametrize("account", [None, "acct_1Refunds"])
def test_past_the_keys_lifetime_the_janitor_looks_for_the_refund_instead_of_replaying_it(
    session_factory: sessionmaker[Session], account: str | None
) -> None:
    """A day later Stripe may have forgotten the key: a replay could refund twice. The janitor lists the
    charge's refunds for the row's own id instead: one Stripe made is booked, one it never saw fails (the
    amount refundable again), and nothing is created."""
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe, account=account)
    other_invoice_id, other_attempt_id = paid_invoice(session_factory, stripe, 2, account=account)
    made = admin_refund(session_factory, attempt_id, amount=1_000)
    stripe.server.fail_next("crash", "create_refund")  # Stripe made it; the worker died
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, made)
    never_sent = admin_refund(session_factory, other_attempt_id, amount=2_000)
    stripe.server.fail_next("crash_before", "create_refund")  # the worker died before the call
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, never_sent)
    stripe.server.take_events()
    creates = refund_creates(stripe)
    later = utcnow() + KEY_REPLAY_WINDOW + timedelta(minutes=1)
    assert settle_stale_refunds(session_factory, stripe, now=later) == {"succeeded": 1, "never_made": 1}
    assert refund_creates(stripe) == creates
    assert refund_row(session_factory, made).status == "succeeded"
    assert ledger(session_factory, invoice_id) == [TOTAL, -1_000]
    failed = refund_row(session_factory, never_sent)
    assert (
        failed.status == "failed" and failed.failure_reason == "Never reached Stripe (no refund of it there)."
    )
    assert ledger(session_factory, other_invoice_id) == [TOTAL]
    assert [entry[:3] for entry in refund_audit(session_factory, never_sent, "refund.failed")] == [
        ("janitor", other_invoice_id, other_attempt_id)
    ]
    run_refund(session_factory, stripe, admin_refund(session_factory, other_attempt_id))  # refundable again
    assert ledger(session_factory, other_invoice_id) == [TOTAL, -TOTAL]


def test_one_sweep_settles_each_stale_refund_by_its_own_outcome(
    session_factory: sessionmaker[Session],
) -> None:
    """A replay Stripe refuses (the charge was refunded in the Dashboard meanwhile) fails the refund with
    Stripe's reason, audited as the janitor's; one Stripe does not answer about stays pending for the next
    sweep; neither stops the sweep from making a third under its own key."""
    stripe = FakeStripe()
    _, unanswered_attempt = paid_invoice(session_factory, stripe)
    made_invoice, made_attempt = paid_invoice(session_factory, stripe, 2)
    refused_invoice, refused_attempt = paid_invoice(session_factory, stripe, 3)
    stripe.server.new_refund_status = "pending"
    unanswered = admin_refund(session_factory, unanswered_attempt, amount=1_000)
    run_refund(session_factory, stripe, unanswered)
    stripe.server.new_refund_status = "succeeded"
    made = admin_refund(session_factory, made_attempt, amount=1_500)  # its worker never ran
    refused = admin_refund(session_factory, refused_attempt, amount=1_000)
    stripe.server.dashboard_refund(payment_intent_of(session_factory, refused_attempt), 9_500)
    stripe.server.take_events()
    stripe.server.fail_next("5xx", "retrieve_refund", times=20)
    stale = utcnow() + STALE_AFTER + timedelta(seconds=1)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {
        "unanswered": 1,
        "succeeded": 1,
        "refused": 1,
    }
    stripe.server.clear_faults()
    assert refund_row(session_factory, unanswered).status == "pending"
    assert refund_row(session_factory, made).status == "succeeded"
    assert ledger(session_factory, made_invoice) == [TOTAL, -1_500]
    failed = refund_row(session_factory, refused)
    assert failed.status == "failed" and "greater than unrefunded amount" in (failed.failure_reason or "")
    assert ledger(session_factory, refused_invoice) == [TOTAL]
    assert refund_audit(session_factory, refused, "refund.failed") == [
        ("janitor", refused_invoice, refused_attempt, {"refund_id": refused, "reason": failed.failure_reason})
    ]
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"pending": 1}


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
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=2_000)
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
        assert refund_row(session_factory, refund_id).tries == tries
    assert (
        run_refund(session_factory, stripe, refund_id)
        == f"refund {refund_id}: no answer, left to the janitor"
    )
    assert len(_run_refund_messages(session_factory, refund_id)) == MAX_TRIES  # no more
    assert refund_row(session_factory, refund_id).tries == MAX_TRIES
    stripe.server.clear_faults()
    assert settle_stale_refunds(
        session_factory, stripe, now=utcnow() + STALE_AFTER + timedelta(seconds=1)
    ) == {"succeeded": 1}
    creates = [r for r in stripe.server.requests if r.method == "post" and r.path == "/v1/refunds"]
    assert {r.idempotency_key for r in creates} == {f"offsession:refund:{refund_id}"}
    assert len(stripe.server.refunds()) == 1
    assert ledger(session_factory, invoice_id) == [TOTAL, -2_000]


def test_a_refund_message_delivered_again_asks_stripe_nothing_once_stripe_has_the_refund(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    stripe.server.new_refund_status = "pending"
    _, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=2_000)
    assert run_refund(session_factory, stripe, refund_id) == f"refund {refund_id}: pending"
    creates = refund_creates(stripe)
    assert run_refund(session_factory, stripe, refund_id) == f"refund {refund_id}: pending already"
    assert refund_creates(stripe) == creates and refund_row(session_factory, refund_id).tries == 1
    assert run_refund(session_factory, stripe, "no-such-refund") == "no such refund"


def test_a_refusal_that_comes_after_a_webhook_recorded_the_refund_does_not_fail_it(
    session_factory: sessionmaker[Session],
) -> None:
    """The webhook of a refund Stripe accepted lands while the worker's call is out, and the call then meets
    a refusal: the refund Stripe holds is not failed (its status follows Stripe's word only)."""
    stripe = FakeStripe()
    _, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=2_000)
    stripe.server.dashboard_refund(
        payment_intent_of(session_factory, attempt_id), TOTAL
    )  # so the call is refused

    def webhook_meanwhile(record: Any) -> None:
        if record.path == "/v1/refunds" and record.method == "post":
            with session_factory() as session, session.begin():
                session.get_one(Refund, refund_id).stripe_refund_id = "re_recorded_meanwhile"

    stripe.server.on_request = webhook_meanwhile
    assert run_refund(session_factory, stripe, refund_id).startswith(
        f"refund {refund_id}: refused by Stripe: "
    )
    refund = refund_row(session_factory, refund_id)
    assert (refund.status, refund.failure_reason) == ("pending", None)
    assert refund_audit(session_factory, refund_id, "refund.failed") == []


def _refusal(factory: sessionmaker[Session], attempt_id: str, **kw: Any) -> tuple[str, str]:
    with pytest.raises(RefundRefused) as refused:
        admin_refund(factory, attempt_id, **kw)
    return refused.value.code, refused.value.message


def test_each_refusal_of_a_refund_says_why_and_only_a_refund_not_yet_at_stripe_holds_the_next(
    session_factory: sessionmaker[Session],
) -> None:
    """The codes and words the API (409) and the invoice page show. Another refund of the charge waits
    only while one is on its way to Stripe (pending, no Stripe id yet): not once Stripe holds it (pending
    there), nor after one failed."""
    stripe = FakeStripe()
    _, attempt_id = paid_invoice(session_factory, stripe)
    with pytest.raises(RefundNotFound):
        admin_refund(session_factory, "no-such-charge")
    first = admin_refund(session_factory, attempt_id, amount=1_000)
    assert _refusal(session_factory, attempt_id, amount=1_000) == ("refund_in_progress", IN_PROGRESS)
    stripe.server.new_refund_status = "pending"
    run_refund(session_factory, stripe, first)  # Stripe holds it now, pending there
    second = admin_refund(session_factory, attempt_id, amount=1_000)
    stripe.server.fail_next("crash_before", "create_refund")
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, second)
    assert settle_stale_refunds(
        session_factory, stripe, now=utcnow() + KEY_REPLAY_WINDOW + timedelta(minutes=1)
    ) == {"pending": 1, "never_made": 1}
    third = admin_refund(session_factory, attempt_id, amount=1_000, reason="requested_by_customer")
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
    assert refund_audit(session_factory, third, "refund.requested") == [
        (
            "admin@example.com",
            row.invoice_id,
            attempt_id,
            {"refund_id": third, "amount": 1_000, "currency": "usd", "reason": "requested_by_customer"},
        )
    ]
    pi_id = payment_intent_of(session_factory, attempt_id)
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
    deliver(session_factory, stripe, dispute)
    assert _refusal(session_factory, attempt_id, amount=1) == (
        "charge_disputed",
        "The client's bank disputes this charge: it cannot be refunded while the dispute is open.",
    )


def test_only_a_card_charge_that_succeeded_can_be_refunded(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    paid_invoice(session_factory, stripe)
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
    invoice_id, attempt_id = paid_invoice(session_factory, stripe, account="acct_1Refunds")
    refund_id = admin_refund(session_factory, attempt_id, amount=1_000)
    assert refund_row(session_factory, refund_id).stripe_account_id == "acct_1Refunds"
    assert run_refund(session_factory, stripe, refund_id) == f"refund {refund_id}: succeeded"
    assert [r["amount"] for r in stripe.server.refunds("acct_1Refunds")] == [1_000]
    assert stripe.server.refunds() == []
    assert ledger(session_factory, invoice_id) == [TOTAL, -1_000]
