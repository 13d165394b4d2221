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

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Insert,
    String,
    Update,
    bindparam,
    case,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    true,
    update,
)
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


def _recorded_attempt_exists(payment_intent_id: BindParameter[str]) -> ColumnElement[bool]:
    """The one predicate of a repeat: an attempt with this PaymentIntent already says what the event reports
    (recorded_outcome's parameters, bound by name). Shared by the endpoint's INSERT and the drain's
    UPDATE (mark_recorded_repeats), so both decide alike."""
    attempt, payment = _ATTEMPTS.c, _PAYMENTS.c
    in_the_ledger = exists().where(payment.stripe_payment_intent_id == payment_intent_id)
    customer = bindparam("customer", type_=String)
    return exists().where(
        attempt.payment_intent_id == payment_intent_id,
        attempt.status == bindparam("recorded_status", type_=String),
        func.coalesce(attempt.stripe_account_id, "") == bindparam("attempt_account", type_=String),
        attempt.currency == bindparam("currency", type_=String),
        attempt.amount == bindparam("amount"),
        or_(attempt.stripe_customer_id.is_(None), attempt.stripe_customer_id == customer),
        or_(attempt.status != AttemptStatus.SUCCEEDED.value, in_the_ledger),
    )


@lru_cache(maxsize=4)
def insert_unless_recorded(dialect: str) -> Insert | None:
    """INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING id, processed_reason: the event stored, and
    processed at once with reason ALREADY_RECORDED when its attempt already says what it reports. Built
    once per dialect (None: a dialect without ON CONFLICT, which never takes the shortcut)."""
    if dialect not in ("postgresql", "sqlite"):
        return None
    payment_intent_id = bindparam("payment_intent_id", type_=String)
    recorded = (
        select(_recorded_attempt_exists(payment_intent_id).label("hit")).subquery("recorded_attempt").c.hit
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


# The drain's bulk look (mark_recorded_repeats): an event stored while its attempt was still in flight is,
# by the time a drain comes, usually a repeat too. Marked with the endpoint's predicate, in one transaction
# for a whole batch, it skips process_event's claim, attempt lock and transactions.
_MARK_IF_RECORDED: Update = (
    update(_EVENTS)
    .where(
        _EVENTS.c.id == bindparam("event_row_id"),
        _EVENTS.c.processed_at.is_(None),
        # Not "payment_intent_id": an UPDATE reserves its columns' names for its SET clause.
        _recorded_attempt_exists(bindparam("event_payment_intent_id", type_=String)),
    )
    .values(processed_at=bindparam("now"), processed_reason=ALREADY_RECORDED, error=None)
    .returning(_EVENTS.c.id)
)
# The batch's unprocessed events with the status of their PaymentIntent's attempt (unique), so that the
# UPDATE above runs only for an event whose attempt is in the outcome it reports (the UPDATE decides), and
# whether each arrived after `young_since`.
_PAYLOADS = (
    select(
        _EVENTS.c.id,
        _EVENTS.c.payload,
        _EVENTS.c.payment_intent_id,
        _ATTEMPTS.c.status,
        (_EVENTS.c.received_at > bindparam("young_since", type_=_EVENTS.c.received_at.type)).label("young"),
    )
    .select_from(_EVENTS.outerjoin(_ATTEMPTS, _ATTEMPTS.c.payment_intent_id == _EVENTS.c.payment_intent_id))
    .where(_EVENTS.c.id.in_(bindparam("event_row_ids", expanding=True)), _EVENTS.c.processed_at.is_(None))
)


@dataclass
class BulkLook:
    # Marked processed (ALREADY_RECORDED): they repeat what their attempt recorded. Row id: (Stripe's
    # event id, PaymentIntent id), for the drain's log line.
    repeats: dict[int, tuple[str, str]] = field(default_factory=dict)
    # Received after young_since for an attempt still processing: its worker is most likely about to
    # record what they report.
    young_in_flight: set[int] = field(default_factory=set)


def mark_recorded_repeats(
    connection: Connection, event_row_ids: list[int], *, livemode: bool, now: datetime, young_since: datetime
) -> BulkLook:
    """Of these stored, unprocessed events, mark processed (ALREADY_RECORDED) every one that now repeats
    what its attempt recorded, as the endpoint would have had the attempt been recorded then; and name the
    young ones whose attempt is still processing. The caller commits (one transaction for the batch)."""
    look = BulkLook()
    if not event_row_ids:
        return look
    rows = connection.execute(_PAYLOADS, {"event_row_ids": event_row_ids, "young_since": young_since}).all()
    for row in rows:
        if row.status is None or not isinstance(row.payload, dict):
            continue
        if row.status == AttemptStatus.PROCESSING.value and row.young:
            look.young_in_flight.add(row.id)
            continue
        repeat = recorded_outcome(row.payload, livemode)
        if repeat is None or repeat["recorded_status"] != row.status:
            continue
        key = {"event_row_id": row.id, "event_payment_intent_id": row.payment_intent_id, "now": now}
        if connection.execute(_MARK_IF_RECORDED, key | repeat).scalar_one_or_none() is not None:
            look.repeats[row.id] = (str(row.payload.get("id")), str(row.payment_intent_id))
    return look
