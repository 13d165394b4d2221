"""Stripe's word about refunds: its events (late, twice, out of order, forged), refunds made in the
Dashboard (recorded only on their charge's account, currency and remaining amount), and what the janitor
reads back from Stripe."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import AuditEvent, ChargeAttempt, Payment, Refund, utcnow
from shared.domain.refunds import RefundRefused
from shared.services.refunds import STALE_AFTER, run_refund, settle_stale_refunds
from shared.services.webhooks import process_event, store_event
from tests.support.fake_stripe import FakeStripe, WorkerCrashed
from tests.support.refunds import (
    TOTAL,
    admin_refund,
    deliver,
    deliver_events,
    flagged_attempts,
    ledger,
    paid_invoice,
    payment_intent_of,
    refund_row,
)


def test_a_dashboard_refund_lands_once_and_holds_its_amount(session_factory: sessionmaker[Session]) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    stripe.server.dashboard_refund(payment_intent_of(session_factory, attempt_id), 7_000)
    deliver_events(session_factory, stripe, twice=True)
    assert ledger(session_factory, invoice_id) == [TOTAL, -7_000]
    with session_factory() as session:
        [row] = session.scalars(select(Refund)).all()
        assert (row.source, row.status, row.idempotency_key) == ("stripe", "succeeded", None)
    with pytest.raises(RefundRefused) as refused:
        admin_refund(session_factory, attempt_id, amount=3_001)
    assert refused.value.code == "amount_too_large"


def test_an_event_naming_our_refund_from_another_account_or_for_another_amount_changes_nothing(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    stripe.server.new_refund_status = "pending"
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=2_000)
    run_refund(session_factory, stripe, refund_id)
    stripe.server.take_events()
    refund = refund_row(session_factory, refund_id)
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
    assert outcomes[0] == (
        f"flagged (account_mismatch): Refund {refund.stripe_refund_id} comes from account acct_other "
        f"(refund {refund_id})."
    )
    assert refund_row(session_factory, refund_id).status == "pending"
    assert ledger(session_factory, invoice_id) == [TOTAL]


def test_a_refund_made_elsewhere_is_recorded_only_on_its_charges_account_currency_and_remaining_amount(
    session_factory: sessionmaker[Session],
) -> None:
    """A refund with no row of ours (made in the Dashboard) is recorded once it refunds a payment of ours
    on the account it was made on, in its currency, for no more than remains; otherwise the event is
    flagged against the charge with the reason, and the ledger does not move."""
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    pi_id = payment_intent_of(session_factory, attempt_id)

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
        deliver(session_factory, stripe, refund_event(1, account="acct_other")),
        deliver(session_factory, stripe, refund_event(2, currency="EUR")),
        deliver(session_factory, stripe, refund_event(3, amount=TOTAL + 1, status="pending")),
    ]
    assert outcomes == [
        f"flagged (account_mismatch): Refund re_else1 comes from account acct_other; charge {attempt_id} was "
        "made on the platform account.",
        f"flagged (currency_mismatch): Refund re_else2 is in EUR; charge {attempt_id} is in USD.",
        "flagged (amount_mismatch): Refund re_else3 of 10001 would take back more than the $100.00 left of "
        f"payment {pi_id}.",
    ]
    assert [
        deliver(session_factory, stripe, refund_event(5, amount=0)).split(":")[0],
        deliver(session_factory, stripe, refund_event(6, status="mystery")).split(":")[0],
    ] == ["flagged (amount_mismatch)"] * 2
    assert deliver(session_factory, stripe, refund_event(7, currency="")) == (
        f"flagged (currency_mismatch): Refund re_else7 is in no currency; charge {attempt_id} is in USD."
    )
    assert flagged_attempts(session_factory) == [attempt_id] * 6
    assert ledger(session_factory, invoice_id) == [TOTAL]
    # One minor unit, as it is: recorded, as Stripe's.
    assert (
        deliver(session_factory, stripe, refund_event(4, amount=1)) == "refund.created: 1 refund(s) recorded"
    )
    assert ledger(session_factory, invoice_id) == [TOTAL, -1]
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
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    pi_id = payment_intent_of(session_factory, attempt_id)
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
    platform = deliver(
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
    assert deliver(session_factory, stripe, connected) == "refund.created: 1 refund(s) recorded"
    assert ledger(session_factory, invoice_id) == [TOTAL, -1_000]
    with session_factory() as session:  # the janitor and the page ask that account about it
        assert session.scalars(select(Refund.stripe_account_id)).all() == ["acct_connected"]


def test_a_refund_of_a_payment_no_charge_of_ours_made_is_flagged(
    session_factory: sessionmaker[Session],
) -> None:
    """A ledger entry that carries a PaymentIntent but no charge attempt (none of ours made it): a refund
    of it is not ours to record."""
    stripe = FakeStripe()
    invoice_id, _ = paid_invoice(session_factory, stripe)
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
    outcome = deliver(
        session_factory, stripe, {"id": "evt_o", "type": "refund.created", "data": {"object": obj}}
    )
    assert (
        outcome == "flagged (refund_mismatch): Refund re_orphan: payment pi_not_ours is not a charge of ours."
    )
    assert ledger(session_factory, invoice_id) == [TOTAL, 500]


def test_a_dashboard_refund_that_later_fails_is_found_by_its_stripe_id_and_given_back(
    session_factory: sessionmaker[Session],
) -> None:
    """A refund made elsewhere carries none of our metadata: its later events find the row it left by
    Stripe's id, so the failure gives the money back on that row instead of recording another refund."""
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    made = stripe.server.dashboard_refund(payment_intent_of(session_factory, attempt_id), 7_000)
    deliver_events(session_factory, stripe)
    stripe.server.settle_refund(made["id"], "failed")
    outcomes = deliver_events(session_factory, stripe)
    # The first of the failure's two events gives the money back; the other changes nothing.
    assert sorted(outcome.split(": ")[1] for outcome in outcomes) == [
        "0 refund(s) recorded",
        "1 refund(s) recorded",
    ]
    with session_factory() as session:
        [row] = session.scalars(select(Refund)).all()
        assert (row.stripe_refund_id, row.status) == (made["id"], "failed")
        back = session.get_one(Payment, row.reversal_payment_id)
        assert (back.amount, back.method, back.reference, back.charge_attempt_id, back.recorded_by) == (
            7_000,
            "card",
            f"Refund {made['id']} failed: given back",
            attempt_id,
            "stripe",
        )
    assert ledger(session_factory, invoice_id) == [TOTAL, -7_000, 7_000]


def test_a_refund_that_fails_before_it_succeeded_never_touches_the_ledger(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    stripe.server.new_refund_status = "pending"
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=3_000)
    run_refund(session_factory, stripe, refund_id)
    deliver_events(session_factory, stripe)
    stripe.server.settle_refund(refund_row(session_factory, refund_id).stripe_refund_id or "", "failed")
    assert set(deliver_events(session_factory, stripe)) == {
        "refund.failed: 0 refund(s) recorded",
        "refund.updated: 0 refund(s) recorded",
    }
    assert refund_row(session_factory, refund_id).status == "failed"
    assert ledger(session_factory, invoice_id) == [TOTAL]


def test_the_webhook_of_a_refund_whose_worker_died_finds_our_row_by_its_metadata(
    session_factory: sessionmaker[Session],
) -> None:
    """Stripe made the refund but the worker died before storing Stripe's id: the refund's event finds our
    row by metadata.refund_id and completes it, rather than taking it for one made elsewhere."""
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=3_000)
    stripe.server.fail_next("crash", "create_refund")
    with pytest.raises(WorkerCrashed):
        run_refund(session_factory, stripe, refund_id)
    deliver_events(session_factory, stripe)
    with session_factory() as session:
        [row] = session.scalars(select(Refund)).all()
        assert (row.id, row.status, row.stripe_refund_id) == (
            refund_id,
            "succeeded",
            stripe.server.refunds()[0]["id"],
        )
    assert ledger(session_factory, invoice_id) == [TOTAL, -3_000]


def test_a_refund_listed_on_its_charge_without_its_payment_intent_is_bound_by_the_charges(
    session_factory: sessionmaker[Session],
) -> None:
    """A Charge's refunds list (charge.refunded) may name only the charge: the refund is bound to the
    Charge's PaymentIntent, and recorded."""
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    pi_id = payment_intent_of(session_factory, attempt_id)
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
    assert deliver(session_factory, stripe, event) == "charge.refunded: 1 refund(s) recorded"
    assert ledger(session_factory, invoice_id) == [TOTAL, -2_000]


def test_a_refund_already_in_the_ledger_from_before_refunds_had_rows_is_adopted_not_written_again(
    session_factory: sessionmaker[Session],
) -> None:
    """A Dashboard refund recorded straight into the ledger (no refund row): its next event adopts that
    entry for the row it writes; the ledger keeps one."""
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    pi_id = payment_intent_of(session_factory, attempt_id)
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
    outcome = deliver(
        session_factory, stripe, {"id": "evt_b", "type": "refund.updated", "data": {"object": obj}}
    )
    assert outcome == "refund.updated: 0 refund(s) recorded"
    assert ledger(session_factory, invoice_id) == [TOTAL, -1_500]
    with session_factory() as session:
        assert session.scalars(select(Refund.ledger_payment_id)).all() == [entry_id]
    again = deliver(
        session_factory, stripe, {"id": "evt_b2", "type": "refund.updated", "data": {"object": obj}}
    )
    assert again == "refund.updated: 0 refund(s) recorded"
    assert ledger(session_factory, invoice_id) == [TOTAL, -1_500]


def test_the_janitor_settles_a_refund_waiting_for_an_action_too(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    stripe.server.new_refund_status = "requires_action"
    refund_id = admin_refund(session_factory, attempt_id, amount=1_000)
    run_refund(session_factory, stripe, refund_id)
    assert refund_row(session_factory, refund_id).status == "requires_action"
    stripe.server.settle_refund(refund_row(session_factory, refund_id).stripe_refund_id or "", "succeeded")
    stripe.server.take_events()  # lost
    stale = utcnow() + STALE_AFTER + timedelta(seconds=1)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"succeeded": 1}
    assert ledger(session_factory, invoice_id) == [TOTAL, -1_000]


def test_the_janitor_leaves_a_refund_stripe_describes_otherwise_alone_and_counts_each(
    session_factory: sessionmaker[Session],
) -> None:
    """What Stripe answers about a refund does not match the row (another amount): nothing changes, and each
    such refund is counted."""
    stripe = FakeStripe()
    stripe.server.new_refund_status = "pending"
    ids = []
    for n in (1, 2):
        _, attempt_id = paid_invoice(session_factory, stripe, n)
        refund_id = admin_refund(session_factory, attempt_id, amount=1_000)
        run_refund(session_factory, stripe, refund_id)
        stripe.server.settle_refund(
            refund_row(session_factory, refund_id).stripe_refund_id or "", "succeeded"
        )
        ids.append(refund_id)
    stripe.server.take_events()
    with session_factory() as session, session.begin():
        for refund_id in ids:
            session.get_one(Refund, refund_id).amount = 999
    stale = utcnow() + STALE_AFTER + timedelta(seconds=1)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"mismatch": 2}
    assert [refund_row(session_factory, refund_id).status for refund_id in ids] == ["pending", "pending"]


def test_a_janitor_replay_refused_after_a_webhook_recorded_the_refund_does_not_fail_it(
    session_factory: sessionmaker[Session],
) -> None:
    """The refund's webhook lands while the janitor's replay is out, and the replay then meets a refusal:
    the refund Stripe holds is left as Stripe said, not failed."""
    stripe = FakeStripe()
    _, attempt_id = paid_invoice(session_factory, stripe)
    refund_id = admin_refund(session_factory, attempt_id, amount=2_000)  # its worker never ran
    stripe.server.dashboard_refund(payment_intent_of(session_factory, attempt_id), TOTAL)  # so it is refused
    stripe.server.take_events()

    def webhook_meanwhile(record: Any) -> None:
        if record.path == "/v1/refunds" and record.method == "post":
            with session_factory() as session, session.begin():
                session.get_one(Refund, refund_id).stripe_refund_id = "re_recorded_meanwhile"

    stripe.server.on_request = webhook_meanwhile
    stale = utcnow() + STALE_AFTER + timedelta(seconds=1)
    assert settle_stale_refunds(session_factory, stripe, now=stale) == {"refused": 1}
    refund = refund_row(session_factory, refund_id)
    assert (refund.status, refund.failure_reason) == ("pending", None)


def test_the_ledger_entry_of_a_refund_says_what_it_is_and_is_audited(
    session_factory: sessionmaker[Session],
) -> None:
    """The negative entry (what the invoice page lists, and what the ledger is deduplicated by: Stripe's
    refund id) and the audit line of the money given back."""
    stripe = FakeStripe()
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    pi_id = payment_intent_of(session_factory, attempt_id)
    refund_id = admin_refund(session_factory, attempt_id, amount=2_500)
    run_refund(session_factory, stripe, refund_id)
    refund = refund_row(session_factory, refund_id)
    with session_factory() as session:
        entry = session.scalars(select(Payment).where(Payment.amount < 0)).one()
        assert (
            entry.amount,
            entry.method,
            entry.reference,
            entry.charge_attempt_id,
            entry.stripe_refund_id,
            entry.recorded_by,
        ) == (
            -2_500,
            "card",
            f"Refund {refund.stripe_refund_id} of {pi_id}",
            attempt_id,
            refund.stripe_refund_id,
            "stripe",
        )
        assert refund.ledger_payment_id == entry.id
        moved = session.scalars(select(AuditEvent).where(AuditEvent.action == "refund.succeeded")).one()
        assert (moved.actor, moved.invoice_id, moved.charge_attempt_id, moved.detail) == (
            "worker",
            invoice_id,
            attempt_id,
            {"refund_id": refund_id, "stripe_refund_id": refund.stripe_refund_id, "amount": 2_500},
        )
        audited = session.scalars(select(AuditEvent).where(AuditEvent.action == "payment.refunded")).one()
        assert (audited.actor, audited.invoice_id, audited.charge_attempt_id, audited.detail) == (
            "stripe",
            invoice_id,
            attempt_id,
            {"refund_id": refund.stripe_refund_id, "amount": 2_500},
        )


def test_an_event_about_our_refund_that_does_not_match_it_is_flagged_with_what_differs(
    session_factory: sessionmaker[Session],
) -> None:
    """Found by its metadata but under another Stripe id, naming another of our payments, or in another
    currency: flagged with the difference in words, and the refund stays as it was."""
    stripe = FakeStripe()
    stripe.server.new_refund_status = "pending"
    invoice_id, attempt_id = paid_invoice(session_factory, stripe)
    _, other_attempt_id = paid_invoice(session_factory, stripe, 2)
    other_pi = payment_intent_of(session_factory, other_attempt_id)
    refund_id = admin_refund(session_factory, attempt_id, amount=2_000)
    run_refund(session_factory, stripe, refund_id)
    stripe.server.take_events()
    refund = refund_row(session_factory, refund_id)
    ours = {
        "id": refund.stripe_refund_id,
        "object": "refund",
        "amount": 2_000,
        "currency": "usd",
        "payment_intent": refund.payment_intent_id,
        "metadata": {"refund_id": refund_id},
        "status": "succeeded",
    }
    forged = [
        {**ours, "id": "re_another"},
        {**ours, "payment_intent": other_pi},
        {**ours, "currency": "eur"},
    ]
    outcomes = [
        deliver(
            session_factory, stripe, {"id": f"evt_x{n}", "type": "refund.updated", "data": {"object": obj}}
        )
        for n, obj in enumerate(forged)
    ]
    assert outcomes == [
        f"flagged (refund_mismatch): Refund re_another is not refund {refund_id}'s "
        f"({refund.stripe_refund_id}).",
        f"flagged (payment_intent_mismatch): Refund {refund.stripe_refund_id} refunds {other_pi}, not "
        f"{refund.payment_intent_id} (refund {refund_id}).",
        f"flagged (currency_mismatch): Refund {refund.stripe_refund_id} is in EUR (refund {refund_id}).",
    ]
    assert refund_row(session_factory, refund_id).status == "pending"
    assert ledger(session_factory, invoice_id) == [TOTAL]


def test_the_events_of_a_refund_on_a_connected_account_apply_from_that_account(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    stripe.server.new_refund_status = "pending"
    invoice_id, attempt_id = paid_invoice(session_factory, stripe, account="acct_1Refunds")
    refund_id = admin_refund(session_factory, attempt_id, amount=2_000)
    run_refund(session_factory, stripe, refund_id)
    stripe.server.settle_refund(
        refund_row(session_factory, refund_id).stripe_refund_id or "",
        "succeeded",
        stripe_account="acct_1Refunds",
    )
    deliver_events(session_factory, stripe)
    assert refund_row(session_factory, refund_id).status == "succeeded"
    assert ledger(session_factory, invoice_id) == [TOTAL, -2_000]


def test_only_an_open_dispute_of_the_charge_itself_holds_its_refund_back(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    _, attempt_id = paid_invoice(session_factory, stripe)
    _, other_attempt_id = paid_invoice(session_factory, stripe, 2)

    def dispute(n: int, attempt: str, status: str) -> dict[str, Any]:
        obj = {
            "id": f"dp_{n}",
            "object": "dispute",
            "payment_intent": payment_intent_of(session_factory, attempt),
            "amount": 1_000,
            "currency": "usd",
            "status": status,
            "reason": "fraudulent",
        }
        return {"id": f"evt_dp{n}", "type": "charge.dispute.created", "created": n, "data": {"object": obj}}

    deliver(session_factory, stripe, dispute(1, other_attempt_id, "needs_response"))  # another charge's
    deliver(session_factory, stripe, dispute(2, attempt_id, "won"))  # this charge's, closed
    refund_id = admin_refund(session_factory, attempt_id, amount=1_000)
    assert run_refund(session_factory, stripe, refund_id) == f"refund {refund_id}: succeeded"
