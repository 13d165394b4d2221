"""What happens to a charge after its first call to Stripe, against FakeStripe: retries that run out,
cancels, the client's authentication and its expiry (shared/services/charging.py, charge_actions.py,
janitor.py). Fast tests the mutation run (`make mutate`) relies on; the exploration covers the same
ground at random."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.services import charge_actions, charging
from shared.services.charge_requests import idempotency_key_for
from shared.services.dunning import retry_policy
from shared.services.janitor import run_janitor
from tests.shared.services.test_last_look import attempt_row, creates, queued_charge, run
from tests.support.fake_stripe import FakeClock, FakeStripe

CREATE = "create_offsession_payment_intent"
RETURN_URL = "https://offsession.example/client/return"


def test_a_charge_stripe_never_answers_goes_unknown_after_its_retries_and_the_janitor_settles_it(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    stripe.server.fail_next("lost", CREATE)  # the first try charged the card; its answer was lost
    stripe.server.fail_next("5xx", CREATE, times=3)
    results = []
    for _ in range(4):
        results.append(run(session_factory, stripe, attempt_id, clock).result)
        clock.advance(timedelta(minutes=11))
    assert results == [charging.RunResult.RETRY_SCHEDULED] * 3 + [charging.RunResult.UNKNOWN]
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.transient_failures) == ("unknown", 4)
    assert attempt.failure_message.startswith("No answer from Stripe after 4 tries")
    run_janitor(session_factory, stripe, lambda *_: None, now=clock.now())
    assert attempt_row(session_factory, attempt_id).status == "succeeded"
    key = idempotency_key_for(attempt_id)
    assert set(creates(stripe)) == {key} and len(stripe.server.payment_intents()) == 1


def test_a_queued_charge_is_canceled_before_it_reaches_stripe(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    assert charge_actions.cancel_charge(session_factory, stripe, attempt_id, actor="admin") == "canceled"
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.failure_code, attempt.failure_message) == (
        "canceled_by_admin",
        "Canceled before it was sent to Stripe.",
    )
    assert creates(stripe) == []


def test_a_retry_that_may_have_reached_stripe_cannot_be_canceled(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id = queued_charge(session_factory, stripe)
    stripe.server.fail_next("lost", CREATE)
    assert run(session_factory, stripe, attempt_id, clock).result is charging.RunResult.RETRY_SCHEDULED
    with pytest.raises(charge_actions.ChargeNotCancelable):
        charge_actions.cancel_charge(session_factory, stripe, attempt_id, actor="admin")
    assert attempt_row(session_factory, attempt_id).status == "queued"


def waiting_for_the_client(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> tuple[str, str]:
    attempt_id = queued_charge(session_factory, stripe, "pm_card_authenticationRequired")
    run(session_factory, stripe, attempt_id, clock)
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.failure_code) == ("requires_action", "authentication_required")
    assert attempt.payment_intent_id is not None
    return attempt_id, attempt.payment_intent_id


def test_the_client_authenticates_on_session_and_the_charge_succeeds(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id, pi_id = waiting_for_the_client(session_factory, stripe, clock)
    page = charge_actions.start_on_session_authentication(
        session_factory, stripe, attempt_id, RETURN_URL, actor="client"
    )
    assert page is not None and page.startswith("https://")
    assert attempt_row(session_factory, attempt_id).status == "requires_action"  # until the bank says so
    stripe.server.complete_authentication(pi_id)
    settled = charge_actions.settle_from_stripe(session_factory, stripe, attempt_id, actor="client")
    assert settled == "succeeded"
    with pytest.raises(charge_actions.NotAwaitingAuthentication):
        charge_actions.start_on_session_authentication(
            session_factory, stripe, attempt_id, RETURN_URL, actor="client"
        )


def test_a_charge_waiting_for_the_client_is_canceled_at_stripe_too(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id, _ = waiting_for_the_client(session_factory, stripe, clock)
    assert charge_actions.cancel_charge(session_factory, stripe, attempt_id, actor="admin") == "canceled"
    assert [pi["status"] for pi in stripe.server.payment_intents()] == ["canceled"]
    assert attempt_row(session_factory, attempt_id).failure_code == "canceled_by_admin"


def test_a_cancel_after_the_client_paid_records_the_payment_instead(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id, pi_id = waiting_for_the_client(session_factory, stripe, clock)
    charge_actions.start_on_session_authentication(
        session_factory, stripe, attempt_id, RETURN_URL, actor="client"
    )
    stripe.server.complete_authentication(pi_id)  # the client finished at the bank a moment ago
    assert charge_actions.cancel_charge(session_factory, stripe, attempt_id, actor="admin") == "succeeded"


def test_an_authentication_left_too_long_expires_and_is_canceled_at_stripe(
    session_factory: sessionmaker[Session], stripe: FakeStripe, clock: FakeClock
) -> None:
    attempt_id, _ = waiting_for_the_client(session_factory, stripe, clock)
    report = run_janitor(session_factory, stripe, lambda *_: None, now=clock.now())
    assert report.expired_authentications == 0
    clock.advance(retry_policy().authentication_ttl + timedelta(minutes=1))
    report = run_janitor(session_factory, stripe, lambda *_: None, now=clock.now())
    assert report.expired_authentications == 1
    attempt = attempt_row(session_factory, attempt_id)
    assert (attempt.status, attempt.failure_code) == ("canceled", "authentication_expired")
    assert [pi["status"] for pi in stripe.server.payment_intents()] == ["canceled"]
