"""The endpoint's shortcut (shared/services/webhook_intake.py): an event that repeats what its charge
attempt already recorded (same PaymentIntent, final in that outcome, same account, mode, currency,
amount and customer, a success already in the ledger) is stored processed, with reason
"already_recorded", in its one INSERT, and changes nothing. Every other event is stored unprocessed and
goes the full way, where the binding checks flag what does not match."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import pytest
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.stripe_gateway import StripeGateway
from shared.domain.models import ChargeAttempt, Client, Invoice, Payment, WebhookEvent, utcnow
from shared.services.webhook_drain import drain_events
from shared.services.webhook_intake import ALREADY_RECORDED, mark_recorded_repeats
from shared.services.webhooks import process_event, store_event, store_received_event

# Never called: none of the events below asks Stripe anything (a success snapshot is final; a failure or
# a cancel reported for an attempt already final is no news).
OFFLINE_GATEWAY = StripeGateway("sk_test_offline", "http://127.0.0.1:9", "whsec_offline")
CUSTOMER = "cus_intake"
DECLINE = {"type": "card_error", "code": "card_declined", "decline_code": "generic_decline"}
# How Stripe fails an off-session charge that needs the client: its attempt waits in requires_action.
NEEDS_AUTHENTICATION = {"last_payment_error": {"type": "card_error", "code": "authentication_required"}}


def _attempt(
    factory: sessionmaker[Session], status: str, *, account: str | None = None, pay: bool = True
) -> str:
    """An attempt final in `status` with its PaymentIntent (and, for a success, its ledger row)."""
    pi_id = f"pi_{uuid.uuid4().hex[:16]}"
    with factory() as s, s.begin():
        client = Client(name="Ada", email=f"{pi_id}@example.com", stripe_customer_id=CUSTOMER + pi_id)
        invoice = Invoice(
            number=pi_id, client=client, currency="usd", total=5_000, due_date=date(2026, 11, 1)
        )
        s.add(invoice)
        s.flush()
        attempt = ChargeAttempt(
            invoice_id=invoice.id,
            amount=5_000,
            currency="usd",
            source="admin",
            status=status,
            idempotency_key=f"offsession:charge:{pi_id}",
            stripe_customer_id=client.stripe_customer_id,
            stripe_account_id=account,
            payment_intent_id=pi_id,
            finished_at=utcnow(),
        )
        s.add(attempt)
        s.flush()
        if status == "succeeded" and pay:
            s.add(
                Payment(
                    invoice_id=invoice.id,
                    amount=5_000,
                    method="card",
                    received_at=utcnow(),
                    charge_attempt_id=attempt.id,
                    stripe_payment_intent_id=pi_id,
                    recorded_by="stripe",
                )
            )
    return pi_id


def _event(pi_id: str, event_type: str = "payment_intent.succeeded", **changes: Any) -> dict[str, Any]:
    """Stripe's event for the attempt's PaymentIntent in the outcome `event_type` names; `changes`
    alter the PaymentIntent (or, for `account` and `livemode`, the event)."""
    obj: dict[str, Any] = {
        "id": pi_id,
        "object": "payment_intent",
        "amount": 5_000,
        "currency": "usd",
        "customer": CUSTOMER + pi_id,
        "livemode": False,
        "metadata": {},
    }
    if event_type == "payment_intent.succeeded":
        obj |= {"status": "succeeded", "amount_received": 5_000}
    elif event_type == "payment_intent.payment_failed":
        obj |= {"status": "requires_payment_method", "last_payment_error": DECLINE}
    elif event_type == "payment_intent.requires_action":
        obj["status"] = "requires_action"
    else:
        obj["status"] = "canceled"
    top = {key: changes.pop(key) for key in ("account", "livemode") if key in changes}
    obj |= changes
    return {
        "id": f"evt_{uuid.uuid4().hex[:20]}",
        "object": "event",
        "type": event_type,
        "livemode": False,
        "data": {"object": obj},
        **top,
    }


def _state(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """What an event could change: attempts, the ledger, invoices, the audit trail, the outbox."""
    with engine.connect() as c:
        return {
            table: [tuple(row) for row in c.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in ("charge_attempt", "payment", "invoice", "audit_event", "outbox_message")
        }


def _row(factory: sessionmaker[Session], row_id: int) -> WebhookEvent:
    with factory() as s:
        return s.get_one(WebhookEvent, row_id)


REPEATS = pytest.mark.parametrize(
    ("status", "event_type", "changes"),
    [
        ("succeeded", "payment_intent.succeeded", {}),
        ("failed", "payment_intent.payment_failed", {}),
        ("canceled", "payment_intent.canceled", {}),
        ("requires_action", "payment_intent.payment_failed", NEEDS_AUTHENTICATION),
        ("requires_action", "payment_intent.requires_action", {}),
    ],
)


@REPEATS
def test_a_repeat_of_a_recorded_outcome_is_stored_processed_and_changes_nothing(
    migrated_engine: Engine,
    session_factory: sessionmaker[Session],
    status: str,
    event_type: str,
    changes: dict[str, Any],
) -> None:
    pi_id = _attempt(session_factory, status)
    before = _state(migrated_engine)
    event = _event(pi_id, event_type, **changes)
    stored = store_received_event(migrated_engine, event, livemode=False)
    assert (stored.created, stored.needs_processing) == (True, False)
    row = _row(session_factory, stored.id)
    assert (row.processed_reason, row.processed_at, row.processing_attempts) == (
        ALREADY_RECORDED,
        row.received_at,
        0,
    )
    assert (row.payload, row.payment_intent_id, row.type) == (event, pi_id, event_type)
    assert _state(migrated_engine) == before
    assert process_event(session_factory, OFFLINE_GATEWAY, stored.id) == "already processed"
    # A second delivery of the same event is a duplicate, stored once.
    again = store_received_event(migrated_engine, event, livemode=False)
    assert (again.id, again.created) == (stored.id, False)
    with session_factory() as s:
        assert s.scalars(select(WebhookEvent.id)).all() == [stored.id]


@REPEATS
def test_the_shortcut_is_what_a_drain_would_have_concluded(
    migrated_engine: Engine,
    session_factory: sessionmaker[Session],
    status: str,
    event_type: str,
    changes: dict[str, Any],
) -> None:
    """The same repeat, stored without the shortcut (no mode given), goes to the drain, which changes
    nothing either: the shortcut skips work, not a decision."""
    pi_id = _attempt(session_factory, status)
    before = _state(migrated_engine)
    stored = store_received_event(migrated_engine, _event(pi_id, event_type, **changes))
    assert stored.needs_processing and _row(session_factory, stored.id).processed_reason is None
    outcome = process_event(session_factory, OFFLINE_GATEWAY, stored.id)
    assert outcome in (
        f"{pi_id}: no news",
        f"attempt {_attempt_id(session_factory, pi_id)}: {status} (no change)",
    )
    assert _state(migrated_engine) == before


def _attempt_id(factory: sessionmaker[Session], pi_id: str) -> str:
    with factory() as s:
        return s.scalars(select(ChargeAttempt.id).where(ChargeAttempt.payment_intent_id == pi_id)).one()


def _full_path(engine: Engine, factory: sessionmaker[Session], event: dict[str, Any]) -> str:
    """Store through the endpoint's function; assert the event waits for the drain; drain it."""
    stored = store_received_event(engine, event, livemode=False)
    assert (stored.created, stored.needs_processing) == (True, True)
    row = _row(factory, stored.id)
    assert (row.processed_at, row.processed_reason) == (None, None)
    return process_event(factory, OFFLINE_GATEWAY, stored.id)


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"amount": 4_000, "amount_received": 4_000}, "amount_mismatch"),
        ({"amount_received": 6_000}, "amount_mismatch"),
        ({"currency": "eur"}, "currency_mismatch"),
        ({"customer": "cus_someone_else"}, "customer_mismatch"),
        ({"account": "acct_other"}, "account_mismatch"),
        ({"livemode": True}, "livemode_mismatch"),
    ],
)
def test_a_success_that_does_not_match_its_attempt_goes_the_full_way_and_is_flagged(
    migrated_engine: Engine, session_factory: sessionmaker[Session], changes: dict[str, Any], flag: str
) -> None:
    pi_id = _attempt(session_factory, "succeeded")
    before = _state(migrated_engine)
    event = _event(pi_id, **changes)
    outcome = _full_path(migrated_engine, session_factory, event)
    assert outcome.startswith(f"flagged ({flag})"), outcome
    with session_factory() as s:
        row = s.scalars(select(WebhookEvent).where(WebhookEvent.stripe_event_id == event["id"])).one()
        assert (row.flagged_reason, row.processed_reason) == (flag, None)
    after = _state(migrated_engine)
    assert {k: v for k, v in after.items() if k != "audit_event"} == {
        k: v for k, v in before.items() if k != "audit_event"
    }


def test_an_object_in_the_other_mode_is_not_a_repeat(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    pi_id = _attempt(session_factory, "succeeded")
    event = _event(pi_id)
    event["data"]["object"]["livemode"] = True
    assert _full_path(migrated_engine, session_factory, event).startswith("flagged (livemode_mismatch)")


def test_an_event_of_a_connected_account_is_a_repeat_on_that_account_only(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    pi_id = _attempt(session_factory, "succeeded", account="acct_connected")
    assert not store_received_event(
        migrated_engine, _event(pi_id, account="acct_connected"), livemode=False
    ).needs_processing
    # The platform's event for the same PaymentIntent is not this attempt's.
    assert _full_path(migrated_engine, session_factory, _event(pi_id)).startswith(
        "flagged (account_mismatch)"
    )


@pytest.mark.parametrize(
    ("status", "event_type", "changes"),
    [
        # Another outcome than the one recorded: news (money moved after all) or stale, the drain decides.
        ("failed", "payment_intent.succeeded", {}),
        ("canceled", "payment_intent.succeeded", {}),
        ("succeeded", "payment_intent.payment_failed", {}),
        ("failed", "payment_intent.canceled", {}),
        ("failed", "payment_intent.payment_failed", NEEDS_AUTHENTICATION),
        ("requires_action", "payment_intent.payment_failed", {}),
        ("requires_action", "payment_intent.canceled", {}),
        ("requires_action", "payment_intent.succeeded", {}),
        # Still in flight: the event may carry the outcome.
        ("processing", "payment_intent.succeeded", {}),
        ("unknown", "payment_intent.payment_failed", {}),
        ("queued", "payment_intent.canceled", {}),
        ("processing", "payment_intent.requires_action", {}),
    ],
)
def test_an_event_that_may_be_news_goes_the_full_way(
    migrated_engine: Engine,
    session_factory: sessionmaker[Session],
    status: str,
    event_type: str,
    changes: dict[str, Any],
) -> None:
    pi_id = _attempt(session_factory, status)
    stored = store_received_event(migrated_engine, _event(pi_id, event_type, **changes), livemode=False)
    assert (stored.created, stored.needs_processing) == (True, True)
    assert _row(session_factory, stored.id).processed_at is None


def test_a_success_missing_from_the_ledger_goes_the_full_way_and_is_recorded(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    pi_id = _attempt(session_factory, "succeeded", pay=False)
    outcome = _full_path(migrated_engine, session_factory, _event(pi_id))
    assert outcome.endswith("succeeded"), outcome
    with session_factory() as s:
        assert s.scalars(select(Payment.amount).where(Payment.stripe_payment_intent_id == pi_id)).all() == [
            5_000
        ]


@pytest.mark.parametrize(
    "event_type",
    [
        "payment_intent.processing",
        "payment_intent.amount_capturable_updated",
        "charge.refunded",
        "refund.updated",
    ],
)
def test_other_events_of_a_final_attempt_are_never_a_repeat(
    migrated_engine: Engine, session_factory: sessionmaker[Session], event_type: str
) -> None:
    pi_id = _attempt(session_factory, "succeeded")
    event = _event(pi_id)
    event["type"] = event_type
    if not event_type.startswith("payment_intent."):
        event["data"]["object"] = {"id": "re_1", "object": "refund", "payment_intent": pi_id, "amount": 100}
    stored = store_received_event(migrated_engine, event, livemode=False)
    assert (stored.created, stored.needs_processing) == (True, True)
    assert _row(session_factory, stored.id).processed_reason is None


def test_an_event_for_no_attempt_goes_the_full_way(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    assert (
        _full_path(migrated_engine, session_factory, _event("pi_nobody")) == "no charge attempt for pi_nobody"
    )


def test_store_event_takes_the_shortcut_inside_the_callers_transaction(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    pi_id = _attempt(session_factory, "failed")
    with session_factory() as s, s.begin():
        stored = store_event(s, _event(pi_id, "payment_intent.payment_failed"), livemode=False)
        assert not stored.needs_processing
    with session_factory() as s:
        assert s.get_one(WebhookEvent, stored.id).processed_reason == ALREADY_RECORDED


# The drain's bulk look (webhook_intake.mark_recorded_repeats, called by webhook_drain.drain_events): an
# event that arrived while its attempt was in flight, and repeats what the attempt recorded since, is marked
# processed with the endpoint's predicate, without process_event's claim (processing_attempts stays 0).


def _stored_in_flight(
    engine: Engine,
    factory: sessionmaker[Session],
    event_type: str = "payment_intent.succeeded",
    **changes: Any,
) -> tuple[str, int]:
    """An event for an attempt still processing: the endpoint stores it for the drain."""
    pi_id = _attempt(factory, "processing")
    stored = store_received_event(engine, _event(pi_id, event_type, **changes), livemode=False)
    assert (stored.created, stored.needs_processing) == (True, True)
    return pi_id, stored.id


def _worker_records(factory: sessionmaker[Session], pi_id: str, status: str) -> None:
    """What the charge worker commits after Stripe answered: the outcome, and a success's ledger row."""
    with factory() as s, s.begin():
        attempt = s.scalars(select(ChargeAttempt).where(ChargeAttempt.payment_intent_id == pi_id)).one()
        attempt.status = status
        if status == "succeeded":
            s.add(
                Payment(
                    invoice_id=attempt.invoice_id,
                    amount=attempt.amount,
                    method="card",
                    received_at=utcnow(),
                    charge_attempt_id=attempt.id,
                    stripe_payment_intent_id=pi_id,
                    recorded_by="stripe",
                )
            )


@REPEATS
def test_an_event_stored_while_its_attempt_was_in_flight_is_marked_in_bulk_by_the_drain(
    migrated_engine: Engine,
    session_factory: sessionmaker[Session],
    status: str,
    event_type: str,
    changes: dict[str, Any],
) -> None:
    pi_id, row_id = _stored_in_flight(migrated_engine, session_factory, event_type, **changes)
    _worker_records(session_factory, pi_id, status)
    before = _state(migrated_engine)
    report = drain_events(session_factory, OFFLINE_GATEWAY)
    assert (report.repeats, report.outcomes, report.failed) == (1, 0, set())
    row = _row(session_factory, row_id)
    assert (row.processed_reason, row.processing_attempts, row.error) == (ALREADY_RECORDED, 0, None)
    assert row.processed_at is not None
    assert _state(migrated_engine) == before


def test_a_drain_marks_the_repeats_of_a_batch_together_and_takes_the_rest_the_full_way(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    repeats = [_stored_in_flight(migrated_engine, session_factory) for _ in range(3)]
    for pi_id, _row_id in repeats:
        _worker_records(session_factory, pi_id, "succeeded")
    # Recorded since, but for another amount than the event's: the drain's binding check flags it.
    other_amount, other_row = _stored_in_flight(
        migrated_engine, session_factory, amount=4_000, amount_received=4_000
    )
    _worker_records(session_factory, other_amount, "succeeded")
    # Still in flight when the drain comes: the event is news, applied by the drain.
    in_flight, in_flight_row = _stored_in_flight(migrated_engine, session_factory)
    report = drain_events(session_factory, OFFLINE_GATEWAY)
    assert (report.repeats, report.outcomes, report.failed) == (3, 2, set())
    for _pi_id, row_id in repeats:
        assert _row(session_factory, row_id).processed_reason == ALREADY_RECORDED
    flagged = _row(session_factory, other_row)
    assert (flagged.flagged_reason, flagged.processed_reason, flagged.processing_attempts) == (
        "amount_mismatch",
        None,
        1,
    )
    applied = _row(session_factory, in_flight_row)
    assert (applied.processed_reason, applied.processing_attempts) == (None, 1)
    assert applied.processed_at is not None
    with session_factory() as s:
        attempt = s.scalars(select(ChargeAttempt).where(ChargeAttempt.payment_intent_id == in_flight)).one()
        assert attempt.status == "succeeded"
        assert s.scalars(
            select(Payment.amount).where(Payment.stripe_payment_intent_id == in_flight)
        ).all() == [5_000]


def test_the_drains_bulk_look_marks_nothing_the_endpoint_would_not(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    """The same predicate: an event of the other mode, or a success not yet in the ledger, is left to
    process_event even once its attempt is final."""
    other_mode, other_mode_row = _stored_in_flight(migrated_engine, session_factory)
    _worker_records(session_factory, other_mode, "succeeded")
    unpaid, unpaid_row = _stored_in_flight(migrated_engine, session_factory)
    with session_factory() as s, s.begin():
        s.execute(
            update(ChargeAttempt).where(ChargeAttempt.payment_intent_id == unpaid).values(status="succeeded")
        )
    with session_factory() as s, s.begin():
        for row_id, livemode in ((other_mode_row, True), (unpaid_row, False)):
            look = mark_recorded_repeats(
                s.connection(), [row_id], livemode=livemode, now=utcnow(), young_since=utcnow()
            )
            assert (look.repeats, look.young_in_flight) == ({}, set())
    assert _row(session_factory, unpaid_row).processed_at is None
    assert _row(session_factory, other_mode_row).processed_at is None


def test_a_drain_holds_a_young_event_of_a_charge_still_processing_and_a_later_one_applies_it(
    migrated_engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    """Its worker is about to record the outcome: held, the event costs nothing now (no claim); once
    older than the hold, or once the attempt is recorded, the next drain settles it."""
    in_flight, in_flight_row = _stored_in_flight(migrated_engine, session_factory)
    recorded, recorded_row = _stored_in_flight(migrated_engine, session_factory)
    report = drain_events(session_factory, OFFLINE_GATEWAY, hold_in_flight=600)
    assert (report.held, report.repeats, report.outcomes) == ({in_flight_row, recorded_row}, 0, 0)
    for row_id in (in_flight_row, recorded_row):
        row = _row(session_factory, row_id)
        assert (row.processed_at, row.processing_attempts) == (None, 0)
    _worker_records(session_factory, recorded, "succeeded")
    report = drain_events(session_factory, OFFLINE_GATEWAY, hold_in_flight=600)
    assert (report.held, report.repeats, report.outcomes) == ({in_flight_row}, 1, 0)
    # Older than the hold (the worker died, say): the full way, which applies the success.
    report = drain_events(session_factory, OFFLINE_GATEWAY, hold_in_flight=0)
    assert (report.held, report.repeats, report.outcomes) == (set(), 0, 1)
    with session_factory() as s:
        attempt = s.scalars(select(ChargeAttempt).where(ChargeAttempt.payment_intent_id == in_flight)).one()
        assert attempt.status == "succeeded"
