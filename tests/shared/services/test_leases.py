"""Charge leases and recovery (shared.services.leases, shared.services.charging's claim,
shared.services.janitor's quick sweep): a
holder that renews keeps its charge, a dead or silent one loses it within seconds, and whoever takes it
over replays it under the same key. A fake gateway stands in for Stripe."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import AuditEvent, ChargeAttempt, OutboxMessage, Payment
from shared.services import leases, outbox
from shared.services.attempts import lock_attempt
from shared.services.charge_requests import request_charge
from shared.services.charging import RunResult, charge_request_for, claim_attempt, run_attempt
from shared.services.janitor import STRANDED_AFTER, recover_charges, republish_stranded
from shared.services.leases import LeaseKeeper, holder_is_gone, lease_lapsed, process_owner
from shared.services.ports import Publisher
from shared.services.settings import update_settings
from tests.support.factories import make_client, make_invoice
from tests.support.fake_stripe import FakeStripe
from tests.support.unit_of_work import InSession
from tests.support.waiting import wait_until

LEASE = 15.0


def charge_keys(stripe: FakeStripe) -> list[str | None]:
    """The idempotency keys of the charges that reached the fake Stripe, in order."""
    return [r.idempotency_key for r in stripe.server.requests if r.path == "/v1/payment_intents"]


def queued_attempt(factory: sessionmaker[Session], n: int = 1, stripe: FakeStripe | None = None) -> str:
    """A queued charge of invoice `n`; with `stripe`, its client's customer and card exist there."""
    with factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        client = make_client(s, n)
        if stripe is not None:
            client.stripe_customer_id = stripe.ensure_customer(
                client.name, client.email, idempotency_key=f"customer:{n}"
            )
            card = stripe.attach_payment_method(
                client.stripe_customer_id, "pm_card_visa", idempotency_key=f"card:{n}"
            )
            client.cards[0].stripe_payment_method_id = card.payment_method_id
        invoice = make_invoice(s, client, n)
        s.flush()
        attempt = request_charge(InSession(s), invoice, source="admin", requested_by="test")
        return attempt.id


def claimed_by(factory: sessionmaker[Session], attempt_id: str, owner: str, expires_at: datetime) -> None:
    """The attempt as another worker process left it: processing under its lease."""
    with factory() as s, s.begin():
        s.execute(
            update(ChargeAttempt)
            .where(ChargeAttempt.id == attempt_id)
            .values(status="processing", lease_owner=owner, lease_expires_at=expires_at)
        )


def row(factory: sessionmaker[Session], attempt_id: str) -> ChargeAttempt:
    with factory() as s:
        attempt = s.get(ChargeAttempt, attempt_id)
        assert attempt is not None
        return attempt


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def now() -> datetime:
    return datetime.now(UTC)


# ---- who is alive ---------------------------------------------------------------------------------


def test_a_holder_on_this_host_whose_process_ended_is_gone() -> None:
    host = process_owner().split("/")[0]
    assert holder_is_gone(f"{host}/{dead_pid()}/abcd")
    assert not holder_is_gone(process_owner())
    # Same pid, another tag: an earlier process that had this pid.
    assert holder_is_gone(f"{host}/{process_owner().split('/')[1]}/other")
    # Another host, or nothing to go on: only the lease's expiry can tell.
    assert not holder_is_gone(f"elsewhere/{dead_pid()}/abcd")
    assert not holder_is_gone(None)
    assert lease_lapsed(process_owner(), now() - timedelta(seconds=1), now())
    assert not lease_lapsed(process_owner(), now() + timedelta(seconds=10), now())


def test_a_holder_on_this_host_whose_process_runs_is_alive_and_is_not_disturbed() -> None:
    host = process_owner().split("/")[0]
    # A live process that says so should anything signal it; it ends when its stdin closes.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys\n"
            "for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):\n"
            "    signal.signal(s, lambda n, f: print('signal', n, flush=True))\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    assert not holder_is_gone(f"{host}/{child.pid}/abcd")
    output, _ = child.communicate("", timeout=10)
    assert output == ""  # asking whether it lives sent it nothing (signal 0)


def test_a_pid_another_user_owns_now_counts_as_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(pid: int, signal_number: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(leases.os, "kill", refused)
    host = process_owner().split("/")[0]
    assert not holder_is_gone(f"{host}/{dead_pid()}/abcd")


# ---- renewing ---------------------------------------------------------------------------------------


def test_one_update_renews_every_lease_the_process_holds_and_no_other(
    session_factory: sessionmaker[Session],
) -> None:
    ours = [queued_attempt(session_factory, n) for n in (1, 2)]
    theirs = queued_attempt(session_factory, 3)
    soon = now() + timedelta(seconds=2)
    for attempt_id in ours:
        claimed_by(session_factory, attempt_id, process_owner(), soon)
    claimed_by(session_factory, theirs, "elsewhere/1/x", soon)
    before = {a: row(session_factory, a).updated_at for a in ours}
    keeper = LeaseKeeper(lambda: session_factory, LEASE)
    with keeper.holding([*ours, theirs], at_most_seconds=60):
        assert keeper.renew() == 2
    for attempt_id in ours:
        attempt = row(session_factory, attempt_id)
        assert attempt.lease_expires_at is not None and attempt.lease_expires_at > now() + timedelta(
            seconds=10
        )
        assert attempt.updated_at == before[attempt_id]  # a renewal is not a move
    assert row(session_factory, theirs).lease_expires_at == soon
    # Released: nothing left to renew, and nothing is asked of the database.
    assert keeper.held() == [] and keeper.renew() == 0


def test_a_lease_is_renewed_no_longer_than_the_call_can_take(session_factory: sessionmaker[Session]) -> None:
    attempt_id = queued_attempt(session_factory)
    claimed_by(session_factory, attempt_id, process_owner(), now() + timedelta(seconds=2))
    keeper = LeaseKeeper(lambda: session_factory, LEASE)
    with keeper.holding([attempt_id], at_most_seconds=0.2):
        started = time.monotonic()
        assert keeper.renew() == 1
        # Once the call has taken as long as it can, it is renewed no more: the lease is left to lapse.
        wait_until(lambda: keeper.renew() == 0, timeout=5, what="the renewals to stop")
        assert time.monotonic() - started >= 0.2


def test_the_renewer_thread_keeps_a_lease_alive_past_its_length(
    session_factory: sessionmaker[Session],
) -> None:
    attempt_id = queued_attempt(session_factory)
    keeper = LeaseKeeper(lambda: session_factory, 3.0)  # renewed every second
    first_expiry = now() + timedelta(seconds=3)
    claimed_by(session_factory, attempt_id, process_owner(), first_expiry)
    with keeper.holding([attempt_id], at_most_seconds=60):

        def renewed() -> bool:
            expiry = row(session_factory, attempt_id).lease_expires_at
            return expiry is not None and expiry > first_expiry

        wait_until(renewed, timeout=20, what="the lease renewed by the keeper's thread")
        # Renewed before it lapsed: the new expiry is a lease's length after the renewal.
        expiry = row(session_factory, attempt_id).lease_expires_at
        assert expiry is not None and expiry - timedelta(seconds=3) < first_expiry


def test_only_the_leases_held_and_still_processing_are_renewed_and_an_overdue_one_is_logged_once(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    held, settled, not_held, overdue = (queued_attempt(session_factory, n) for n in range(1, 5))
    soon = now() + timedelta(seconds=2)
    for attempt_id in (held, settled, not_held, overdue):
        claimed_by(session_factory, attempt_id, process_owner(), soon)
    with session_factory() as session, session.begin():
        session.execute(update(ChargeAttempt).where(ChargeAttempt.id == settled).values(status="succeeded"))
    keeper = LeaseKeeper(lambda: session_factory, LEASE)
    with (
        keeper.holding([held, settled], at_most_seconds=60),
        keeper.holding([overdue], at_most_seconds=0),
        caplog.at_level("WARNING", logger=leases.log.name),
    ):
        assert keeper.renew() == 1
        assert keeper.renew() == 1
    assert row(session_factory, held).lease_expires_at > soon
    for attempt_id in (settled, not_held, overdue):
        assert row(session_factory, attempt_id).lease_expires_at == soon
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"charge {overdue}: its Stripe call has run longer than it can; its lease is left to run out"
    ]


# ---- claiming a processing attempt ------------------------------------------------------------------


def test_a_live_holder_keeps_its_charge_and_the_redelivery_looks_again_when_the_lease_would_lapse(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    attempt_id = queued_attempt(session_factory, stripe=stripe)
    claimed_by(session_factory, attempt_id, "elsewhere/1/x", now() + timedelta(seconds=12))
    report = run_attempt(session_factory, stripe, attempt_id, lease_seconds=LEASE, max_transient_retries=3)
    assert report.result is RunResult.HELD and charge_keys(stripe) == []
    assert report.retry_countdown is not None and 11 <= report.retry_countdown <= 14
    assert row(session_factory, attempt_id).lease_owner == "elsewhere/1/x"


@pytest.mark.parametrize("holder", ["lapsed", "process gone"])
def test_a_redelivery_takes_over_from_a_dead_holder_and_replays_under_the_same_key(
    session_factory: sessionmaker[Session], holder: str
) -> None:
    stripe = FakeStripe()
    attempt_id = queued_attempt(session_factory, stripe=stripe)
    if holder == "lapsed":
        claimed_by(session_factory, attempt_id, "elsewhere/1/x", now() - timedelta(seconds=1))
    else:  # killed a moment ago: its lease has most of its length left, but its process is gone
        host = process_owner().split("/")[0]
        claimed_by(session_factory, attempt_id, f"{host}/{dead_pid()}/x", now() + timedelta(seconds=14))
    # Paid by bank transfer meanwhile: a fresh claim would cancel at its last look, but the dead holder's
    # call may have charged the card, so only Stripe can say.
    with session_factory() as s, s.begin():
        invoice_id = s.get_one(ChargeAttempt, attempt_id).invoice_id
        s.add(
            Payment(
                invoice_id=invoice_id,
                amount=10_000,
                method="bank_transfer",
                received_at=now(),
                recorded_by="test",
            )
        )
    report = run_attempt(session_factory, stripe, attempt_id, lease_seconds=LEASE, max_transient_retries=3)
    assert report.result is RunResult.APPLIED and report.status == "succeeded"
    assert charge_keys(stripe) == [f"offsession:charge:{attempt_id}"]
    attempt = row(session_factory, attempt_id)
    assert attempt.transient_failures == 1 and attempt.lease_owner is None
    with session_factory() as s:
        actions = s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.charge_attempt_id == attempt_id)
            .order_by(AuditEvent.id)
        ).all()
    assert actions[-2:] == ["charge.taken_over", "charge.succeeded"]


def test_a_worker_whose_charge_was_taken_over_does_not_requeue_it(
    session_factory: sessionmaker[Session],
) -> None:
    """Its lease lapsed while it waited for Stripe (a database outage stopped the renewals); another worker
    took the charge over. Its own timeout must not send the charge back to the queue behind the new
    holder's back."""
    stripe = FakeStripe()
    attempt_id = queued_attempt(session_factory, stripe=stripe)

    def taken_over_meanwhile() -> None:
        with session_factory() as s, s.begin():
            s.execute(
                update(ChargeAttempt).where(ChargeAttempt.id == attempt_id).values(lease_owner="other/2/y")
            )

    stripe = FakeStripe(server=stripe.server, before_request=lambda _account: taken_over_meanwhile())
    stripe.server.fail_next("5xx", "create_offsession_payment_intent")  # no answer
    report = run_attempt(session_factory, stripe, attempt_id, lease_seconds=LEASE, max_transient_retries=3)
    assert report.result is RunResult.APPLIED and report.status == "processing"
    attempt = row(session_factory, attempt_id)
    assert attempt.status == "processing" and attempt.lease_owner == "other/2/y"
    assert attempt.transient_failures == 0


def test_run_attempt_keeps_the_lease_alive_while_stripe_is_asked(
    session_factory: sessionmaker[Session],
) -> None:
    server = FakeStripe().server
    attempt_id = queued_attempt(session_factory, stripe=FakeStripe(server=server))
    keeper = LeaseKeeper(lambda: session_factory, LEASE)
    seen: list[list[str]] = []
    stripe = FakeStripe(server=server, before_request=lambda _account: seen.append(keeper.held()))
    run_attempt(
        session_factory, stripe, attempt_id, lease_seconds=LEASE, max_transient_retries=3, leases=keeper
    )
    assert seen == [[attempt_id]] and keeper.held() == []


def test_concurrent_redeliveries_take_over_once(session_factory: sessionmaker[Session]) -> None:
    attempt_id = queued_attempt(session_factory)
    claimed_by(session_factory, attempt_id, "elsewhere/1/x", now() - timedelta(seconds=1))
    claimed: list[bool] = []
    refused: list[RunResult] = []

    def deliver() -> None:
        with session_factory() as s, s.begin():
            claim = claim_attempt(s, attempt_id, now=now(), lease_seconds=LEASE)
            if isinstance(claim, tuple):
                claimed.append(True)
            else:
                refused.append(claim.result)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One took it over; the other found it held by the first (or lost the conditional update to it).
    assert claimed == [True] and refused[0] in (RunResult.HELD, RunResult.NOT_CLAIMED)
    assert row(session_factory, attempt_id).transient_failures == 1


# ---- the quick sweep --------------------------------------------------------------------------------


def sent() -> tuple[list[tuple[str, dict[str, Any]]], Publisher]:
    out: list[tuple[str, dict[str, Any]]] = []
    return out, lambda name, payload, countdown: out.append((name, payload))


def test_the_sweep_settles_a_charge_whose_holder_stopped_renewing(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    attempt_id = queued_attempt(session_factory, stripe=stripe)
    claimed_by(session_factory, attempt_id, "elsewhere/1/x", now() - timedelta(seconds=1))
    alive = queued_attempt(session_factory, 2, stripe=stripe)
    claimed_by(session_factory, alive, "elsewhere/1/x", now() + timedelta(seconds=10))
    report = recover_charges(session_factory, stripe, sent()[1])
    assert dict(report.stale.resolved) == {"succeeded": 1}
    assert charge_keys(stripe) == [
        f"offsession:charge:{attempt_id}"
    ]  # replayed under its key; the live one left be
    assert row(session_factory, attempt_id).status == "succeeded"
    assert row(session_factory, alive).status == "processing"
    with session_factory() as s:
        assert s.scalar(select(Payment.id).where(Payment.charge_attempt_id == attempt_id)) is not None


def test_a_replay_meeting_the_original_in_flight_waits_for_the_next_sweep(
    session_factory: sessionmaker[Session],
) -> None:
    stripe = FakeStripe()
    attempt_id = queued_attempt(session_factory, stripe=stripe)
    claimed_by(session_factory, attempt_id, "elsewhere/1/x", now() - timedelta(seconds=1))
    # The dead holder's call, still executing at Stripe (slowed down) when the sweep replays it.
    with session_factory() as s:
        attempt = s.get_one(ChargeAttempt, attempt_id)
        request = charge_request_for(attempt, attempt.invoice)
    stripe.server.fail_next("latency", "create_offsession_payment_intent")
    original = threading.Thread(target=lambda: stripe.create_offsession_payment_intent(request))
    original.start()
    wait_until(lambda: charge_keys(stripe), timeout=5, what="the original call at Stripe")
    report = recover_charges(session_factory, stripe, sent()[1])
    original.join()
    assert [r.outcome for r in stripe.server.requests if r.path == "/v1/payment_intents"][-1] == "in_use"
    assert report.stale.still_unknown == 1 and row(session_factory, attempt_id).status == "unknown"
    # The original's answer is saved at Stripe now: the next sweep's replay gets it.
    report = recover_charges(session_factory, stripe, sent()[1])
    assert dict(report.stale.resolved) == {"succeeded": 1}


def age(factory: sessionmaker[Session], attempt_id: str, seconds: float) -> None:
    """Make the attempt as old as if its message went out `seconds` ago."""
    moment = now() - timedelta(seconds=seconds)
    with factory() as s, s.begin():
        s.execute(
            update(ChargeAttempt)
            .where(ChargeAttempt.id == attempt_id)
            .values(created_at=moment, updated_at=moment)
        )


def mark_all_published(factory: sessionmaker[Session]) -> None:
    with factory() as s, s.begin():
        s.execute(update(OutboxMessage).values(published_at=now()))


def test_a_queued_charge_whose_message_was_lost_is_sent_again(session_factory: sessionmaker[Session]) -> None:
    attempt_id = queued_attempt(session_factory)
    mark_all_published(session_factory)
    age(session_factory, attempt_id, STRANDED_AFTER.total_seconds() - 3)
    assert republish_stranded(session_factory) == []  # not yet: it may still be on its way
    age(session_factory, attempt_id, STRANDED_AFTER.total_seconds() + 1)
    messages, publish = sent()
    report = recover_charges(session_factory, FakeStripe(), publish)
    assert report.republished == 1 and messages == [(outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": attempt_id})]
    # Sent again a moment ago: not again at the next sweep, nor until it has waited as long again.
    assert republish_stranded(session_factory) == []


def test_a_charge_behind_a_backlog_is_not_sent_again(session_factory: sessionmaker[Session]) -> None:
    """A big batch drains at the rate limit: its waiting charges are not lost, the workers are busy with
    the ones queued before them. Re-sending each would double the queue."""
    waiting = queued_attempt(session_factory, 1)
    older = queued_attempt(session_factory, 2)
    mark_all_published(session_factory)
    age(session_factory, older, 60)
    age(session_factory, waiting, 50)
    with session_factory() as s, s.begin():  # a worker took the older one a moment ago
        s.execute(
            update(ChargeAttempt)
            .where(ChargeAttempt.id == older)
            .values(status="processing", updated_at=now())
        )
    assert republish_stranded(session_factory) == []
    # Then one queued after it is taken: it was overtaken, so its message is gone.
    later = queued_attempt(session_factory, 3)
    with session_factory() as s, s.begin():
        s.execute(
            update(ChargeAttempt)
            .where(ChargeAttempt.id == later)
            .values(status="succeeded", updated_at=now())
        )
    message_ids = republish_stranded(session_factory)
    with session_factory() as s:
        payloads = [s.get_one(OutboxMessage, message_id).payload for message_id in message_ids]
    assert payloads == [{"attempt_id": waiting}]


def test_a_retry_waiting_in_the_outbox_is_not_sent_twice(session_factory: sessionmaker[Session]) -> None:
    attempt_id = queued_attempt(session_factory)  # its message is still unpublished (broker down)
    age(session_factory, attempt_id, 120)
    assert republish_stranded(session_factory) == []


def test_an_attempt_with_no_worker_running_is_sent_again_ever_less_often(
    session_factory: sessionmaker[Session],
) -> None:
    attempt_id = queued_attempt(session_factory)
    mark_all_published(session_factory)
    start = now()
    age(session_factory, attempt_id, 11)
    assert len(republish_stranded(session_factory, now=start)) == 1
    mark_all_published(session_factory)
    # It had waited 11 s before: the next one after 11 s more, not after 10.
    assert republish_stranded(session_factory, now=start + timedelta(seconds=10.5)) == []
    assert len(republish_stranded(session_factory, now=start + timedelta(seconds=11.5))) == 1


def test_a_takeover_changes_the_holder_not_the_status(session_factory: sessionmaker[Session]) -> None:
    """The takeover is one transaction: status stays processing, the holder changes, nothing else moves."""
    attempt_id = queued_attempt(session_factory)
    claimed_by(session_factory, attempt_id, "elsewhere/1/x", now() - timedelta(seconds=1))
    with session_factory() as s, s.begin():
        claim = claim_attempt(s, attempt_id, now=now(), lease_seconds=LEASE)
        assert isinstance(claim, tuple)
    with session_factory() as s:
        attempt = lock_attempt(s, attempt_id)
        assert attempt.status == "processing" and attempt.lease_owner == process_owner()
        assert attempt.lease_expires_at is not None and attempt.lease_expires_at > now() + timedelta(
            seconds=10
        )
