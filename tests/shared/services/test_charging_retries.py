"""A charge Stripe does not answer, or that waits for the rate budget (shared/services/charging.py
_after_transient_error, _requeue_unsent, _requeue, retry_delay): back to the queue under the same key,
due again after the backoff, with the outbox message that runs it then and not before; the tries counted
only when Stripe may have been reached. Against FakeStripe, on the model's clock (conftest.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import AuditEvent, ChargeAttempt, OutboxMessage
from shared.domain.payments import PermanentStripeError
from shared.services import charging, outbox
from shared.services.ports import RateBudgetTimeout, RateBudgetUnavailable
from tests.shared.services.test_last_look import attempt_row, creates, queued_charge
from tests.support.charge_model import LEASE_SECONDS
from tests.support.fake_stripe import FakeClock, FakeStripe

CREATE = "create_offsession_payment_intent"


def run(
    factory: sessionmaker[Session], gateway: Any, attempt_id: str, clock: FakeClock, max_retries: int = 3
) -> charging.RunReport:
    return charging.run_attempt(
        factory,
        gateway,
        attempt_id,
        lease_seconds=LEASE_SECONDS,
        max_transient_retries=max_retries,
        now=clock.now(),
    )


def retry_messages(factory: sessionmaker[Session]) -> list[OutboxMessage]:
    with factory() as session:
        rows = list(
            session.scalars(
                select(OutboxMessage)
                .where(
                    OutboxMessage.task_name == outbox.TASK_CHARGE_ATTEMPT,
                    OutboxMessage.available_at.is_not(None),
                )
                .order_by(OutboxMessage.id)
            )
        )
        session.expunge_all()
        return rows


def worker_moves(factory: sessionmaker[Session], attempt_id: str) -> list[tuple[str, str, str]]:
    with factory() as session:
        return [
            (event.actor, event.detail.get("from"), event.detail.get("to"))
            for event in session.scalars(
                select(AuditEvent).where(AuditEvent.charge_attempt_id == attempt_id).order_by(AuditEvent.id)
            )
            if event.detail.get("to")
        ]


@pytest.mark.parametrize(
    ("fault", "code", "rate_limited"), [("5xx", "transient", False), ("429", "rate_limit", True)]
)
def test_an_unanswered_try_is_queued_again_under_its_key_due_after_the_backoff(
    session_factory: sessionmaker[Session],
    stripe: FakeStripe,
    clock: FakeClock,
    fault: str,
    code: str,
    rate_limited: bool,
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    stripe.server.fail_next(fault, CREATE)  # type: ignore[arg-type]
    report = run(session_factory, stripe, attempt_id, clock)
    assert (report.result, report.status, report.rate_limited) == (
        charging.RunResult.RETRY_SCHEDULED,
        "queued",
        rate_limited,
    )
    assert report.retry_countdown is not None and 2 <= report.retry_countdown <= 4  # the first backoff
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.transient_failures, attempt.failure_code) == ("queued", 1, code)
    assert attempt.failure_message.endswith(
        f"retry 1 of 3 with the same key in {report.retry_countdown:.0f}s"
    )
    due = clock.now() + timedelta(seconds=report.retry_countdown)
    assert attempt.next_retry_at == due
    # The message that runs it again is in the outbox, published no earlier than the retry is due.
    [message] = retry_messages(session_factory)
    assert (message.id, message.payload, message.available_at) == (
        report.retry_message_id,
        {"attempt_id": attempt_id},
        due,
    )
    # (The relay's first pass publishes only the click's message, its second the retry.)
    assert outbox.relay_outbox(session_factory, lambda *_: None, now=due - timedelta(seconds=1)) == 1
    assert outbox.relay_outbox(session_factory, lambda *_: None, now=due) == 1
    assert worker_moves(session_factory, attempt_id)[-2:] == [
        ("worker", "queued", "processing"),
        ("worker", "processing", "queued"),
    ]
    # Before it is due, a delivery of the message leaves it; once due, the same key goes to Stripe.
    assert run(session_factory, stripe, attempt_id, clock).result is charging.RunResult.NOT_CLAIMED
    clock.advance(timedelta(seconds=report.retry_countdown))
    assert run(session_factory, stripe, attempt_id, clock).status == "succeeded"
    assert len(set(creates(stripe))) == 1 and len(creates(stripe)) == 2


def test_a_long_backoff_is_left_to_the_relay(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    with session_factory() as session, session.begin():
        session.execute(
            update(ChargeAttempt).where(ChargeAttempt.id == attempt_id).values(transient_failures=5)
        )
    stripe.server.fail_next("5xx", CREATE)
    report = run(session_factory, stripe, attempt_id, clock, max_retries=8)
    # The sixth try waits 64-128 s: too long to hold in the broker, so the relay publishes it when due.
    assert report.result is charging.RunResult.RETRY_SCHEDULED and report.retry_countdown is None
    attempt = attempt_row(session_factory, attempt_id)
    assert attempt.transient_failures == 6
    assert timedelta(seconds=64) <= attempt.next_retry_at - clock.now() <= timedelta(seconds=128)


@pytest.mark.parametrize("fault", ["5xx", "429"])
def test_the_last_unanswered_try_leaves_the_charge_unknown_for_the_janitor(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, fault: str
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    stripe.server.fail_next(fault, CREATE)  # type: ignore[arg-type]
    report = run(session_factory, stripe, attempt_id, clock, max_retries=0)
    assert (report.result, report.status, report.rate_limited) == (
        charging.RunResult.UNKNOWN,
        "unknown",
        fault == "429",
    )
    attempt = attempt_row(session_factory, attempt_id)
    assert attempt.status == "unknown"
    assert attempt.failure_code == ("rate_limit" if fault == "429" else "stripe_unreachable")
    assert attempt.failure_message.startswith("No answer from Stripe after 1 tries: ")
    assert worker_moves(session_factory, attempt_id)[-1] == ("worker", "processing", "unknown")
    assert retry_messages(session_factory) == []


class Interrupted:
    """The gateway, with `before` run as a call starts; with `error`, the call raises it instead of
    reaching Stripe (a rate budget that is spent, or whose Redis is down: nothing is sent)."""

    def __init__(self, stripe: FakeStripe, error: Exception | None = None, before: Any = None) -> None:
        self.stripe, self.error, self.before = stripe, error, before
        self.longest_call_seconds = stripe.longest_call_seconds

    def create_offsession_payment_intent(self, request: Any) -> Any:
        if self.before is not None:
            self.before()
        if self.error is not None:
            raise self.error
        return self.stripe.create_offsession_payment_intent(request)


@pytest.mark.parametrize(
    "error",
    [
        RateBudgetTimeout("platform", 90.0, 60.0),
        RateBudgetUnavailable("platform", ConnectionError("redis down")),
    ],
)
def test_a_charge_waiting_for_the_rate_budget_is_queued_again_without_counting_a_try(
    session_factory: sessionmaker[Session],
    stripe: FakeStripe,
    clock: FakeClock,
    error: Exception,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    drawn: list[tuple[float, float]] = []
    uniform = charging.random.uniform
    monkeypatch.setattr(charging.random, "uniform", lambda a, b: drawn.append((a, b)) or uniform(a, b))
    report = run(session_factory, Interrupted(stripe, error), attempt_id, clock)
    assert drawn == [(1.0, 5.0)]  # a short wait of its own, jittered so waiting charges spread out
    assert (report.result, report.status) == (charging.RunResult.RETRY_SCHEDULED, "queued")
    assert report.retry_countdown is not None and 1 <= report.retry_countdown <= 5
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.transient_failures) == ("queued", 0)
    assert attempt.failure_message == "Waiting for the Stripe rate budget; nothing was sent yet."
    due = clock.now() + timedelta(seconds=report.retry_countdown)
    assert attempt.next_retry_at == due
    [message] = retry_messages(session_factory)
    assert (message.id, message.payload, message.available_at) == (
        report.retry_message_id,
        {"attempt_id": attempt_id},
        due,
    )
    assert creates(stripe) == []
    # Nothing reached Stripe, so it is still the charge the last look guards.
    clock.advance(timedelta(seconds=report.retry_countdown))
    assert run(session_factory, stripe, attempt_id, clock).status == "succeeded"


@pytest.mark.parametrize("fault", ["budget", "5xx", "permanent"])
def test_a_worker_whose_lease_was_taken_over_meanwhile_leaves_the_charge_to_its_new_holder(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock, fault: str
) -> None:
    attempt_id = queued_charge(session_factory, stripe)

    def taken_over() -> None:
        with session_factory() as session, session.begin():
            session.execute(
                update(ChargeAttempt)
                .where(ChargeAttempt.id == attempt_id)
                .values(lease_owner="elsewhere/1/new")
            )

    if fault == "budget":
        gateway = Interrupted(stripe, RateBudgetTimeout("platform", 90.0, 60.0), before=taken_over)
    elif fault == "permanent":
        gateway = Interrupted(stripe, PermanentStripeError("Invalid API Key provided"), before=taken_over)
    else:
        stripe.server.fail_next("5xx", CREATE)
        gateway = Interrupted(stripe, before=taken_over)
    report = run(session_factory, gateway, attempt_id, clock)
    assert (report.result, report.status) == (charging.RunResult.APPLIED, "processing")
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.lease_owner, attempt.transient_failures) == (
        "processing",
        "elsewhere/1/new",
        0,
    )
    assert retry_messages(session_factory) == []


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [(1, 2.0, 4.0), (2, 4.0, 8.0), (3, 8.0, 16.0), (9, 300.0, 600.0), (20, 300.0, 600.0)],
)
def test_the_backoff_doubles_from_two_seconds_up_to_ten_minutes_jittered_on_its_upper_half(
    monkeypatch: pytest.MonkeyPatch, failures: int, low: float, high: float
) -> None:
    drawn: list[tuple[float, float]] = []
    monkeypatch.setattr(charging.random, "uniform", lambda a, b: drawn.append((a, b)) or b)
    assert charging.retry_delay(failures) == high
    assert drawn == [(low, high)]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (
            PermanentStripeError(
                "No such payment_method",
                kind="invalid_request",
                code="resource_missing",
                payment_intent_id="pi_1",
            ),
            "failed",
            "resource_missing",
        ),
        (PermanentStripeError("Invalid API Key provided", kind="authentication"), "failed", "authentication"),
        (
            PermanentStripeError(
                "Keys for idempotent requests can only be used with the same parameters", kind="idempotency"
            ),
            "unknown",
            "idempotency",
        ),
    ],
)
def test_a_permanent_error_stops_the_charge_keeping_stripes_words(
    session_factory: sessionmaker[Session],
    stripe: FakeStripe,
    clock: FakeClock,
    error: PermanentStripeError,
    status: str,
    code: str,
) -> None:
    """A bug or a misconfiguration: never retried; an idempotency error leaves it for the janitor to ask."""
    attempt_id = queued_charge(session_factory, stripe)
    report = run(session_factory, Interrupted(stripe, error), attempt_id, clock)
    assert (report.result, report.status) == (charging.RunResult.APPLIED, status)
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.failure_code, attempt.failure_message) == (status, code, error.message)
    assert attempt.payment_intent_id == error.payment_intent_id
    assert worker_moves(session_factory, attempt_id)[-1] == ("worker", "processing", status)
    assert retry_messages(session_factory) == []
