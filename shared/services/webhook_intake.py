"""The endpoint's shortcut for an event that only repeats what a charge attempt already recorded.

Most webhooks a worker-run charge causes (payment_intent.succeeded after the worker recorded the
success, .payment_failed after it recorded the decline) tell the attempt nothing new: drained, they would
be claimed, matched and found stale (shared.services.webhooks.process_event) at the cost of a message and
three transactions. The endpoint stores such an event already processed instead ("already_recorded"), in
the one INSERT that stores it: the statement itself reads the attempt by PaymentIntent (its unique index)
and decides, so the decision and the row are one atomic step, and publishes nothing.

An event qualifies only when everything the drain would check already agrees, so that skipping the drain
cannot skip a binding check (shared.domain.binding) of an event that would change anything:
- its type reports where a charge came to rest (EVENT_OUTCOMES) and its PaymentIntent's own state says
  the same;
- event and object are in this deployment's mode, the PaymentIntent received no more than its amount;
- an attempt with that PaymentIntent is already in that very state (final, or waiting for the client to
  authenticate: news the drain would find stale, shared.domain.states.observe), on the event's account,
  in its currency, for its amount, for its customer (when the attempt names one);
- a success is in the ledger already (the drain would record a missing one).
Anything else (an attempt still in flight, another outcome, another amount, refunds, disputes, ...) is
stored unprocessed and goes the full way, unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import Insert, String, bindparam, case, exists, func, literal, null, or_, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shared.domain.models import ChargeAttempt, Payment, WebhookEvent, table_of
from shared.domain.payments import PermanentStripeError, payment_intent_view
from shared.domain.states import AttemptStatus
from shared.services.attempts import reported_status

ALREADY_RECORDED = "already_recorded"
# The events that report where a charge came to rest, and the attempt statuses each may stand for (its
# PaymentIntent's own state decides which, as in the drain): an off-session charge that needs the client
# to authenticate fails with authentication_required, and its attempt waits in requires_action.
EVENT_OUTCOMES: dict[str, frozenset[AttemptStatus]] = {
    "payment_intent.succeeded": frozenset({AttemptStatus.SUCCEEDED}),
    "payment_intent.payment_failed": frozenset({AttemptStatus.FAILED, AttemptStatus.REQUIRES_ACTION}),
    "payment_intent.canceled": frozenset({AttemptStatus.CANCELED}),
    "payment_intent.requires_action": frozenset({AttemptStatus.REQUIRES_ACTION}),
}

_EVENTS = table_of(WebhookEvent)
_ATTEMPTS = table_of(ChargeAttempt)
_PAYMENTS = table_of(Payment)
# The stored columns, in the order of the SELECT below (the others keep their defaults: NULL, 0).
_STORED = ("account", "stripe_event_id", "type", "payload", "payment_intent_id", "received_at")


def recorded_outcome(event: dict[str, Any], livemode: bool) -> dict[str, Any] | None:
    """What an attempt must already say for this event to be a repeat (the parameters of the INSERT
    below), or None when the event can never be one and takes the full path."""
    outcomes = EVENT_OUTCOMES.get(str(event.get("type", "")))
    obj = (event.get("data") or {}).get("object") or {}
    if outcomes is None or not isinstance(obj, dict) or obj.get("object") != "payment_intent":
        return None
    if bool(event.get("livemode", False)) != livemode or obj.get("livemode", livemode) != livemode:
        return None
    try:
        view = payment_intent_view(obj)
        expected = reported_status(view)
    except (KeyError, TypeError, ValueError, AttributeError, PermanentStripeError):
        return None  # a malformed object, or a state we never create: the drain says why
    if not isinstance(view.id, str) or expected not in outcomes:
        return None
    if view.amount_received > view.amount:
        return None
    return {
        "recorded_status": expected.value,
        "attempt_account": event.get("account") or "",
        "currency": view.currency.lower(),
        "amount": view.amount,
        "customer": view.customer,
    }


@lru_cache(maxsize=4)
def insert_unless_recorded(dialect: str) -> Insert | None:
    """INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING id, processed_reason: the event stored, and
    processed at once with reason ALREADY_RECORDED when its attempt already says what it reports. Built
    once per dialect (None: a dialect without ON CONFLICT, which never takes the shortcut)."""
    if dialect not in ("postgresql", "sqlite"):
        return None
    attempt, payment = _ATTEMPTS.c, _PAYMENTS.c
    payment_intent_id = bindparam("payment_intent_id", type_=String)
    in_the_ledger = exists().where(payment.stripe_payment_intent_id == payment_intent_id)
    customer = bindparam("customer", type_=String)
    recorded = (
        select(
            exists()
            .where(
                attempt.payment_intent_id == payment_intent_id,
                attempt.status == bindparam("recorded_status", type_=String),
                func.coalesce(attempt.stripe_account_id, "") == bindparam("attempt_account", type_=String),
                attempt.currency == bindparam("currency", type_=String),
                attempt.amount == bindparam("amount"),
                or_(attempt.stripe_customer_id.is_(None), attempt.stripe_customer_id == customer),
                or_(attempt.status != AttemptStatus.SUCCEEDED.value, in_the_ledger),
            )
            .label("hit")
        )
        .subquery("recorded_attempt")
        .c.hit
    )
    # PostgreSQL types the SELECT's parameters by their values (a str as text); its JSON is cast. SQLite
    # keeps the serialized text as is (a CAST to JSON there would make it a number).
    payload = bindparam("payload", type_=_EVENTS.c.payload.type)
    received_at = bindparam("received_at", type_=_EVENTS.c.received_at.type)
    # One row from the one look-up (a derived table: the CASEs below read it, not run it twice).
    row = select(
        bindparam("account", type_=String),
        bindparam("stripe_event_id", type_=String),
        bindparam("type", type_=String),
        payload.cast(_EVENTS.c.payload.type) if dialect == "postgresql" else payload,
        payment_intent_id,
        received_at,
        case((recorded, received_at), else_=null()),
        case((recorded, literal(ALREADY_RECORDED, String)), else_=null()),
        literal(0),
    ).where(true())  # SQLite parses INSERT ... SELECT ... FROM ... ON CONFLICT only after a WHERE
    dialect_insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        dialect_insert(_EVENTS)
        .from_select([*_STORED, "processed_at", "processed_reason", "processing_attempts"], row)
        .on_conflict_do_nothing(index_elements=[_EVENTS.c.account, _EVENTS.c.stripe_event_id])
        .returning(_EVENTS.c.id, _EVENTS.c.processed_reason)
    )
