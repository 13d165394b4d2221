"""The janitor (shared/services/janitor.py) settles what crashed from Stripe's records, flags what it
cannot match, and expires authentications left too long, leaving an audit trail that names it. Against
FakeStripe on the model's clock (conftest.py)."""

from __future__ import annotations

import socket
import subprocess
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import AuditEvent, ChargeAttempt, Invoice, OutboxMessage, Payment
from shared.services import invoices, outbox, webhooks
from shared.services.charge_requests import idempotency_key_for, load_invoice_for_charge, request_charge
from shared.services.charging import charge_request_for
from shared.services.dunning import retry_policy
from shared.services.janitor import (
    NEEDS_OPERATOR,
    RECENTLY_UNKNOWN,
    JanitorReport,
    RecoveryReport,
    expire_authentications,
    recover_charges,
    resolve_attempt,
    run_janitor,
)
from shared.services.settings import update_settings
from tests.shared.services.test_last_look import LEASE_SECONDS, attempt_row, creates, queued_charge, run
from tests.support.fake_stripe import FakeClock, FakeStripe, WorkerCrashed
from tests.support.unit_of_work import InSession

CREATE = "create_offsession_payment_intent"


def another_charge(
    factory: sessionmaker[Session], attempt_id: str, total: int = 7_000, number: str = "L-2"
) -> str:
    """A second invoice of the same client, and its charge, queued."""
    with factory() as session, session.begin():
        first = session.get_one(ChargeAttempt, attempt_id)
        client = session.get_one(Invoice, first.invoice_id).client
        invoice = invoices.create_invoice(
            session,
            client,
            number=number,
            currency="usd",
            total=total,
            due_date=first.created_at.date(),
            actor="admin",
        )
        session.flush()
        loaded = load_invoice_for_charge(session, invoice.id, lock=True)
        assert loaded is not None
        return request_charge(InSession(session), loaded, source="admin", requested_by="admin").id


def crashed_after_stripe(
    factory: sessionmaker[Session], stripe: FakeStripe, attempt_id: str, clock: FakeClock
) -> None:
    """Stripe committed the charge; the worker died before recording it; its lease has lapsed."""
    stripe.server.fail_next("crash", CREATE)
    with pytest.raises(WorkerCrashed):
        run(factory, stripe, attempt_id, clock)
    clock.advance(timedelta(seconds=LEASE_SECONDS + 1))


def knows_payment_intent(factory: sessionmaker[Session], attempt_id: str, pi_id: str) -> None:
    with factory() as session, session.begin():
        session.execute(
            update(ChargeAttempt).where(ChargeAttempt.id == attempt_id).values(payment_intent_id=pi_id)
        )


def trail(factory: sessionmaker[Session], attempt_id: str) -> list[tuple[str, str, int | None, str | None]]:
    with factory() as session:
        return [
            (e.actor, e.action, e.invoice_id, e.detail.get("to"))
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.charge_attempt_id == attempt_id).order_by(AuditEvent.id)
            )
        ]


@pytest.mark.parametrize("account", [None, "acct_1Janitor"])
def test_a_crashed_charge_whose_payment_intent_is_known_is_settled_from_it_without_a_replay(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, account: str | None
) -> None:
    with session_factory() as session, session.begin():  # a connected account: Stripe is asked there
        update_settings(session, "admin", stripe_account_id=account or "")
    attempt_id = queued_charge(session_factory, stripe)
    crashed_after_stripe(session_factory, stripe, attempt_id, clock)
    [(_, pi)] = stripe.server.all_payment_intents()
    knows_payment_intent(session_factory, attempt_id, pi["id"])
    report = run_janitor(session_factory, stripe, lambda *_: None, now=clock.now())
    assert report.resolved["succeeded"] == 1
    assert attempt_row(session_factory, attempt_id).status == "succeeded"
    assert creates(stripe) == [idempotency_key_for(attempt_id)]  # asked, not charged again
    with session_factory() as session:
        assert session.scalars(
            select(Payment.amount).where(Payment.charge_attempt_id == attempt_id)
        ).all() == [5_000]
    invoice_id = attempt_row(session_factory, attempt_id).invoice_id
    moves = [(actor, to) for actor, _, _, to in trail(session_factory, attempt_id) if to]
    assert moves[-2:] == [("janitor", "unknown"), ("janitor", "succeeded")]
    assert all(invoice == invoice_id for _, _, invoice, _ in trail(session_factory, attempt_id))


def test_a_payment_intent_that_is_not_the_charges_own_is_flagged_for_an_operator_once(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    second = queued_charge(session_factory, stripe)
    crashed_after_stripe(session_factory, stripe, second, clock)
    # The charge names a PaymentIntent of another amount than its own (someone else's request).
    with session_factory() as session:
        attempt = session.get_one(ChargeAttempt, second)
        request = charge_request_for(attempt, session.get_one(Invoice, attempt.invoice_id))
    other = stripe.create_offsession_payment_intent(
        replace(request, amount=request.amount + 1, idempotency_key="someone-else")
    )
    assert other.payment_intent_id is not None
    knows_payment_intent(session_factory, second, other.payment_intent_id)
    report = run_janitor(session_factory, stripe, lambda *_: None, now=clock.now())
    assert report.flagged_for_operator == 1
    attempt = attempt_row(session_factory, second)
    assert (attempt.status, attempt.failure_code) == ("unknown", NEEDS_OPERATOR)
    assert attempt.failure_message.startswith("Stripe's PaymentIntent does not match this charge: ")
    clock.advance(timedelta(minutes=11))
    run_janitor(session_factory, stripe, lambda *_: None, now=clock.now())
    flagged = [entry for entry in trail(session_factory, second) if entry[1] == "charge.flagged_for_operator"]
    assert flagged == [("janitor", "charge.flagged_for_operator", attempt.invoice_id, None)]
    with session_factory() as session:  # nothing credited for a PaymentIntent that is not its own
        assert session.scalars(select(Payment).where(Payment.charge_attempt_id == second)).all() == []


def waiting_for_the_client(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> str:
    attempt_id = queued_charge(session_factory, stripe, "pm_card_authenticationRequired")
    assert run(session_factory, stripe, attempt_id, clock).status == "requires_action"
    return attempt_id


def test_an_authentication_expires_only_once_its_time_is_past_by_the_sweeps_own_clock(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = waiting_for_the_client(session_factory, stripe, clock)
    ttl = retry_policy().authentication_ttl
    since = attempt_row(session_factory, attempt_id).updated_at
    # `now` is the sweep's moment (the product's clock has not moved): exactly the TTL is not past it.
    assert expire_authentications(session_factory, stripe, now=since + ttl, ttl=ttl) == 0
    assert attempt_row(session_factory, attempt_id).status == "requires_action"
    assert (
        expire_authentications(session_factory, stripe, now=since + ttl + timedelta(seconds=1), ttl=ttl) == 1
    )
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.failure_code) == ("canceled", "authentication_expired")
    assert attempt.failure_message == "The client did not authenticate in time."
    assert trail(session_factory, attempt_id)[-1][0] == "janitor"


def test_expiring_authentications_leaves_every_other_charge_alone(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    queued = queued_charge(session_factory, stripe)  # a charge no worker has run yet, old enough
    ttl = retry_policy().authentication_ttl
    assert expire_authentications(session_factory, stripe, now=clock.now() + ttl * 2, ttl=ttl) == 0
    assert attempt_row(session_factory, queued).status == "queued"


# ---- one sweep, by its own clock (the product's clock stays where it is) -------------------------


def recorder() -> tuple[list[tuple[str, dict, float | None]], Any]:
    sent: list[tuple[str, dict, float | None]] = []
    return sent, lambda task, payload, countdown: sent.append((task, payload, countdown))


def test_the_sweep_settles_a_lapsed_lease_by_its_own_clock_and_relays_the_outbox(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)  # its message still in the outbox
    stripe.server.fail_next("crash", CREATE)
    with pytest.raises(WorkerCrashed):
        run(session_factory, stripe, attempt_id, clock)
    sent, publish = recorder()
    report = run_janitor(
        session_factory, stripe, publish, now=clock.now() + timedelta(seconds=LEASE_SECONDS + 1)
    )
    assert report.resolved["succeeded"] == 1
    assert attempt_row(session_factory, attempt_id).status == "succeeded"
    # The click's message, and the client's email about the success.
    assert report.outbox_published == len(sent) == 2
    assert (outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": attempt_id}, None) in sent


def test_the_sweep_expires_authentications_by_the_configured_time_and_its_own_clock(
    session_factory: sessionmaker[Session],
    stripe: FakeStripe,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OFFSESSION_AUTH_TTL_DAYS", "1")
    attempt_id = waiting_for_the_client(session_factory, stripe, clock)
    since = attempt_row(session_factory, attempt_id).updated_at
    assert (
        run_janitor(
            session_factory, stripe, recorder()[1], now=since + timedelta(hours=23)
        ).expired_authentications
        == 0
    )
    report = run_janitor(session_factory, stripe, recorder()[1], now=since + timedelta(days=1, minutes=1))
    assert report.expired_authentications == 1
    assert attempt_row(session_factory, attempt_id).status == "canceled"


def test_the_sweep_sends_a_stranded_charge_again(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    assert outbox.relay_outbox(session_factory, recorder()[1], now=clock.now()) == 1  # sent, then lost
    sent, publish = recorder()
    report = run_janitor(session_factory, stripe, publish, now=clock.now() + timedelta(seconds=11))
    assert report.requeued == 1
    assert sent == [(outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": attempt_id}, None)]


@pytest.mark.parametrize("broker_down", [False, True])
def test_the_sweep_redrives_stored_events_no_worker_finished(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, broker_down: bool
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    assert run(session_factory, stripe, attempt_id, clock).status == "succeeded"
    stripe.server.dashboard_refund(attempt_row(session_factory, attempt_id).payment_intent_id, 1_000)
    with session_factory() as session, session.begin():
        stored = [webhooks.store_event(session, event) for event in stripe.server.take_events()]
    waiting = [s.id for s in stored if s.needs_processing]
    assert len(waiting) >= 2  # the success and the refund, published by no one
    sent, publish = recorder()

    def broker(task: str, payload: dict, countdown: float | None) -> None:
        if broker_down and task == outbox.TASK_PROCESS_WEBHOOK_EVENT:
            raise ConnectionError("broker down")
        publish(task, payload, countdown)

    report = run_janitor(session_factory, stripe, broker, now=clock.now() + timedelta(seconds=31))
    redriven = [(task, payload) for task, payload, _ in sent if task == outbox.TASK_PROCESS_WEBHOOK_EVENT]
    if broker_down:
        # The next sweep tries again; the rest of this one still runs (the click's message is relayed).
        assert (report.webhook_events_redriven, redriven) == (0, [])
    else:
        assert redriven == [(outbox.TASK_PROCESS_WEBHOOK_EVENT, {"event_id": id_}) for id_ in waiting]
        assert report.webhook_events_redriven == len(waiting)
    relayed = [task for task, _, _ in sent if task != outbox.TASK_PROCESS_WEBHOOK_EVENT]
    assert report.outbox_published == len(relayed) >= 1


def test_the_quick_sweep_works_by_its_own_clock_and_leaves_long_unknown_charges_to_the_janitor(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    stripe.server.fail_next("crash", CREATE)
    with pytest.raises(WorkerCrashed):
        run(session_factory, stripe, attempt_id, clock)
    lapsed = clock.now() + timedelta(seconds=LEASE_SECONDS + 1)
    # Unknown for longer than the quick sweep looks back: left to the periodic janitor.
    with session_factory() as session, session.begin():
        session.execute(update(ChargeAttempt).where(ChargeAttempt.id == attempt_id).values(status="unknown"))
    later = lapsed + RECENTLY_UNKNOWN + timedelta(seconds=1)
    assert recover_charges(session_factory, stripe, recorder()[1], now=later).stale.resolved == {}
    assert attempt_row(session_factory, attempt_id).status == "unknown"
    assert run_janitor(session_factory, stripe, recorder()[1], now=later).resolved["succeeded"] == 1


def test_the_quick_sweep_settles_a_lapsed_lease_and_sends_a_stranded_charge_by_its_own_clock(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    crashed = queued_charge(session_factory, stripe)
    stripe.server.fail_next("crash", CREATE)
    with pytest.raises(WorkerCrashed):
        run(session_factory, stripe, crashed, clock)
    stranded = another_charge(session_factory, crashed)
    assert outbox.relay_outbox(session_factory, recorder()[1], now=clock.now()) >= 1  # sent, then lost
    sent, publish = recorder()
    sweep_moment = clock.now() + timedelta(seconds=LEASE_SECONDS + 1)
    report = recover_charges(session_factory, stripe, publish, now=sweep_moment)
    assert report.stale.resolved["succeeded"] == 1
    assert report.republished == 1
    assert (outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": stranded}, None) in sent
    with session_factory() as session:  # marked published at the sweep's moment, as the relay would
        published_at = session.scalars(
            select(OutboxMessage.published_at)
            .where(OutboxMessage.published_at.is_not(None))
            .order_by(OutboxMessage.id.desc())
        ).first()
    assert published_at == sweep_moment


def test_the_sweeps_reports_say_what_they_did_for_the_operator() -> None:
    """`offsession reconcile` prints the janitor's summary; the worker logs both."""
    report = JanitorReport(
        resolved=Counter({"succeeded": 2, "failed": 1}),
        still_unknown=3,
        flagged_for_operator=4,
        requeued=5,
        webhook_events_redriven=6,
        outbox_published=7,
        expired_authentications=8,
    )
    assert report.summary() == (
        "resolved: 1 failed, 2 succeeded; still unknown: 3; flagged for an operator: 4; re-queued: 5; "
        "webhook events re-driven: 6; outbox messages published: 7; authentications expired: 8"
    )
    assert JanitorReport().summary().startswith("resolved: none; still unknown: 0;")
    quick = RecoveryReport(stale=report, republished=9)
    assert quick.summary() == (
        "resolved: 1 failed, 2 succeeded; still unknown: 3; queued charges whose message was lost, "
        "re-published: 9"
    )
    assert RecoveryReport().summary() == (
        "resolved: none; still unknown: 0; queued charges whose message was lost, re-published: 0"
    )
    assert quick.anything and not RecoveryReport().anything
    assert RecoveryReport(republished=1).anything and RecoveryReport(JanitorReport(still_unknown=1)).anything


@pytest.mark.parametrize("holder", ["dead", "alive elsewhere"])
def test_the_janitor_takes_a_charge_from_a_dead_holder_and_leaves_a_renewed_lease_to_its_live_holder(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, holder: str
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    stripe.server.fail_next("crash", CREATE)
    with pytest.raises(WorkerCrashed):
        run(session_factory, stripe, attempt_id, clock)
    if holder == "dead":
        finished = subprocess.Popen(["true"])
        finished.wait()
        owner = f"{socket.gethostname()[:64]}/{finished.pid}/abcd"  # this host, no such process now
    else:
        owner = "elsewhere/1/abcd"  # only its lease's expiry can tell
    with session_factory() as session, session.begin():
        session.execute(update(ChargeAttempt).where(ChargeAttempt.id == attempt_id).values(lease_owner=owner))
    # Asked about it once its lease seemed lapsed, resolve_attempt looks again under the row lock: the
    # lease has not run out (its holder renewed it meanwhile, or died with it still running).
    resolve_attempt(session_factory, stripe, attempt_id, now=clock.now())
    expected = "succeeded" if holder == "dead" else "processing"
    assert attempt_row(session_factory, attempt_id).status == expected


def test_a_crashed_charge_stripe_cannot_be_asked_about_stays_unknown_and_says_why(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    crashed_after_stripe(session_factory, stripe, attempt_id, clock)
    stripe.server.fail_next("5xx", CREATE)  # the replay under its key meets a 5xx
    report = run_janitor(session_factory, stripe, recorder()[1], now=clock.now())
    assert report.still_unknown == 1
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.failure_message) == (
        "unknown",
        "The worker handling it stopped; checking with Stripe.",
    )
    assert [(actor, to) for actor, _, _, to in trail(session_factory, attempt_id) if to][-1] == (
        "janitor",
        "unknown",
    )


def test_the_sweep_relays_a_retry_that_came_due_by_its_own_clock(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)  # the click's message, never published
    stripe.server.fail_next("5xx", CREATE)
    assert run(session_factory, stripe, attempt_id, clock).result.value == "retry_scheduled"  # due in 2-4 s
    sent, publish = recorder()
    report = run_janitor(session_factory, stripe, publish, now=clock.now() + timedelta(seconds=5))
    assert report.outbox_published == 2
    assert sent == [(outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": attempt_id}, None)] * 2


def test_one_authentication_that_cannot_be_expired_does_not_stop_the_others(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    first = waiting_for_the_client(session_factory, stripe, clock)
    others = [another_charge(session_factory, first, number=f"L-{n}") for n in (2, 3)]
    for attempt_id in others:
        assert run(session_factory, stripe, attempt_id, clock).status == "requires_action"
    stripe.server.fail_next("5xx", "cancel_payment_intent")  # the first one asked about meets a 5xx
    ttl = retry_policy().authentication_ttl
    later = clock.now() + ttl + timedelta(minutes=1)
    assert expire_authentications(session_factory, stripe, now=later, ttl=ttl) == 2
    statuses = sorted(attempt_row(session_factory, a).status for a in (first, *others))
    assert statuses == ["canceled", "canceled", "requires_action"]  # the next sweep tries it again
    assert expire_authentications(session_factory, stripe, now=later, ttl=ttl) == 1
