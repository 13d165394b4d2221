"""Edges of the charge pipeline found in review, each with the scenario that exposed it.
A fake gateway stands in for Stripe: these are about what the database records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import ChargeAttempt, Client, DunningState, Invoice
from shared.domain.payments import CardDeclined
from shared.domain.states import AttemptStatus
from shared.services import batch
from shared.services.attempts import apply_outcome, lock_attempt, move_attempt
from shared.services.charge_requests import request_charge
from shared.services.charging import RunResult, run_attempt
from shared.services.janitor import reconcile_stale_attempts
from shared.services.ports import RateBudgetTimeout
from shared.services.settings import update_settings
from tests.support.factories import TODAY, make_client, make_invoice
from tests.support.fake_stripe import FakeStripe
from tests.support.unit_of_work import InSession, units

S = AttemptStatus


def _queued_attempt(factory: sessionmaker[Session], source: str = "admin") -> tuple[int, str]:
    with factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        invoice = make_invoice(s, make_client(s, 1), 1)
        s.flush()
        attempt = request_charge(InSession(s), invoice, source=source, requested_by="test")
        return invoice.id, attempt.id


def test_a_retry_too_old_to_replay_goes_to_the_janitor_not_to_stripe(
    session_factory: sessionmaker[Session],
) -> None:
    _, attempt_id = _queued_attempt(session_factory)
    with session_factory() as s, s.begin():
        attempt = lock_attempt(s, attempt_id)
        attempt.transient_failures = 1  # an earlier call may have reached Stripe
        attempt.created_at = datetime.now(UTC) - timedelta(hours=25)
    stripe = FakeStripe()
    report = run_attempt(session_factory, stripe, attempt_id, lease_seconds=60, max_transient_retries=5)
    assert report.result is RunResult.UNKNOWN and stripe.server.requests == []
    with session_factory() as s:
        assert s.get(ChargeAttempt, attempt_id).status == "unknown"  # type: ignore[union-attr]


def test_a_permanent_error_after_a_webhook_settled_the_attempt_changes_nothing(
    session_factory: sessionmaker[Session],
) -> None:
    _, attempt_id = _queued_attempt(session_factory)

    def webhook_lands_first() -> None:
        with session_factory() as s, s.begin():
            attempt = lock_attempt(s, attempt_id)
            apply_outcome(
                s,
                attempt,
                CardDeclined(
                    code="card_declined",
                    decline_code="generic_decline",
                    message="Declined.",
                    payment_intent_id="pi_1",
                ),
                actor="webhook",
            )

    # Stripe knows neither the attempt's customer nor its card: the call ends in a PermanentStripeError,
    # after the webhook's news landed while it was on its way.
    stripe = FakeStripe(before_request=lambda _account: webhook_lands_first())
    report = run_attempt(session_factory, stripe, attempt_id, lease_seconds=60, max_transient_retries=5)
    assert report.status == "failed"
    with session_factory() as s:
        assert s.get(ChargeAttempt, attempt_id).decline_code == "generic_decline"  # type: ignore[union-attr]


def test_a_soft_decline_of_an_admin_click_does_not_stop_the_schedule(
    session_factory: sessionmaker[Session],
) -> None:
    invoice_id, attempt_id = _queued_attempt(session_factory, source="admin")
    with session_factory() as s, s.begin():
        attempt = lock_attempt(s, attempt_id)
        move_attempt(s, attempt, S.PROCESSING, "worker")
        apply_outcome(
            s,
            attempt,
            CardDeclined(
                code="card_declined",
                decline_code="insufficient_funds",
                message="No funds.",
                payment_intent_id="pi_2",
            ),
            actor="worker",
        )
        assert s.get(DunningState, invoice_id) is None
    report = batch.run_batch(
        units(session_factory, lambda *a: None), slot="schedule:due-date", trigger="schedule", today=TODAY
    )
    assert report.queued == 1


def test_a_due_retry_blocked_for_a_passing_reason_keeps_its_turn(
    session_factory: sessionmaker[Session],
) -> None:
    invoice_id, attempt_id = _queued_attempt(session_factory, source="schedule")
    now = datetime.now(UTC)
    with session_factory() as s, s.begin():
        attempt = lock_attempt(s, attempt_id)
        move_attempt(s, attempt, S.PROCESSING, "worker")
        apply_outcome(
            s,
            attempt,
            CardDeclined(
                code="card_declined",
                decline_code="insufficient_funds",
                message="No funds.",
                payment_intent_id="pi_3",
            ),
            actor="worker",
        )
        s.get(DunningState, invoice_id).next_attempt_at = now - timedelta(minutes=1)  # type: ignore[union-attr]
        update_settings(s, "admin", online_card_payments_enabled=False)
    assert batch.open_due_retries(session_factory, units(session_factory, lambda *a: None), now=now) == 0
    with session_factory() as s, s.begin():
        state = s.get(DunningState, invoice_id)
        assert state is not None and state.next_attempt_at is not None
        assert state.next_attempt_at > now + timedelta(minutes=59)
        update_settings(s, "admin", online_card_payments_enabled=True)
        state.next_attempt_at = now - timedelta(minutes=1)
    assert batch.open_due_retries(session_factory, units(session_factory, lambda *a: None), now=now) == 1
    with session_factory() as s:
        assert s.scalar(select(ChargeAttempt).where(ChargeAttempt.status == "queued")) is not None
        assert s.get(Invoice, invoice_id) is not None


def test_one_charge_the_janitor_cannot_check_does_not_stop_the_sweep(
    session_factory: sessionmaker[Session],
) -> None:
    _, attempt_id = _queued_attempt(session_factory)
    with session_factory() as s, s.begin():
        attempt = lock_attempt(s, attempt_id)
        move_attempt(s, attempt, S.PROCESSING, "worker")
        move_attempt(s, attempt, S.UNKNOWN, "worker")
        attempt.payment_intent_id = "pi_4"
    waited: list[str | None] = []

    def no_token(account: str | None) -> None:
        waited.append(account)
        raise RateBudgetTimeout("platform", 90.0, 60.0)

    stripe = FakeStripe(before_request=no_token)
    report = reconcile_stale_attempts(session_factory, stripe)
    assert report.still_unknown == 1 and waited == [None] and stripe.server.requests == []


def test_client_customers_never_share_an_idempotency_key_even_when_row_ids_repeat(
    session_factory: sessionmaker[Session],
) -> None:
    """SQLite hands a rolled-back row id out again; a key built from it would replay another client's
    customer creation (Stripe: idempotency_error) for a day. Keys are per request instead."""
    from shared.services import clients

    stripe = FakeStripe()
    first = clients.create_client(session_factory, stripe, name="Ada", email="ada@example.com", actor="t")
    with session_factory() as s, s.begin():  # the row goes away, so its id may be handed out again
        s.delete(s.get_one(Client, first))
    clients.create_client(session_factory, stripe, name="Bob", email="bob@example.com", actor="t")
    keys = [r.idempotency_key for r in stripe.server.requests if r.path == "/v1/customers"]
    assert len(keys) == 2 and len(set(keys)) == 2
    assert all(k.startswith("offsession:customer:") for k in keys)
