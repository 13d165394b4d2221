"""Moving a charge attempt through its states (shared.domain.states), with Stripe's word applied
monotonically: the worker, the webhooks, the janitor and the people's actions all go through here.

A success lands in the ledger once (shared.services.payments); every move is in the audit trail.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TypedDict, Unpack

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from shared.domain.binding import Mismatch, MismatchReason, payment_intent_mismatch
from shared.domain.models import ChargeAttempt, Invoice, utcnow
from shared.domain.payments import (
    AuthenticationRequired,
    Canceled,
    CardDeclined,
    ChargeOutcome,
    PaymentIntentView,
    Processing,
    RequiresAction,
    Succeeded,
    classify_payment_intent,
)
from shared.domain.states import AttemptStatus, observe, transition
from shared.services import audit, dunning, outbox, payments

log = logging.getLogger(__name__)
S = AttemptStatus


class AttemptFields(TypedDict, total=False):
    """What a move may also set on the attempt (move_attempt keeps a PaymentIntent id once it has one)."""

    failure_code: str | None
    decline_code: str | None
    failure_message: str | None
    advice_code: str | None
    network_advice_code: str | None
    payment_intent_id: str | None


def lock_attempt(session: Session, attempt_id: str) -> ChargeAttempt:
    return session.scalars(
        select(ChargeAttempt).where(ChargeAttempt.id == attempt_id).with_for_update()
    ).one()


def reached_stripe(attempt: ChargeAttempt) -> bool:
    """Whether a create may have reached Stripe already (then only a replay under the key is safe)."""
    return attempt.payment_intent_id is not None or attempt.transient_failures > 0


def reported_status(view: PaymentIntentView) -> AttemptStatus:
    """The attempt status a PaymentIntent's state stands for (Processing: still processing)."""
    match classify_payment_intent(view):
        case Succeeded():
            return S.SUCCEEDED
        case CardDeclined():
            return S.FAILED
        case AuthenticationRequired() | RequiresAction():
            return S.REQUIRES_ACTION
        case Canceled():
            return S.CANCELED
    return S.PROCESSING


def _outcome_mismatch(attempt: ChargeAttempt, outcome: ChargeOutcome) -> Mismatch | None:
    view = outcome.payment_intent
    if view is not None:
        return payment_intent_mismatch(attempt, view)
    pi_id = outcome.payment_intent_id  # a decline without its PaymentIntent: the id is all there is
    if pi_id and attempt.payment_intent_id and pi_id != attempt.payment_intent_id:
        return Mismatch(
            MismatchReason.PAYMENT_INTENT,
            f"PaymentIntent {pi_id} is not charge {attempt.id}'s ({attempt.payment_intent_id}).",
            attempt=attempt,
        )
    return None


def apply_payment_intent(
    session: Session, attempt: ChargeAttempt, view: PaymentIntentView, *, actor: str
) -> bool:
    return apply_outcome(session, attempt, classify_payment_intent(view), actor=actor)


# Built once, the id bound at each call (composing a statement costs about as much CPU as running it).
_LOCK_INVOICE = (
    select(Invoice.id).where(Invoice.id == bindparam("invoice_id")).with_for_update(key_share=True)
)


def apply_outcome(session: Session, attempt: ChargeAttempt, outcome: ChargeOutcome, *, actor: str) -> bool:
    """Move the attempt monotonically to what Stripe reports; returns whether anything changed.

    Stale or repeated news changes nothing; a success always lands, and lands in the ledger once.
    Raises Mismatch, having changed nothing, when the PaymentIntent is not the attempt's
    (payment_intent_mismatch): every path that applies Stripe's word goes through here.
    """
    mismatch = _outcome_mismatch(attempt, outcome)
    if mismatch is not None:
        raise mismatch
    if isinstance(outcome, Succeeded):
        # The ledger changes: take the invoice row lock that charge requests take, so a request
        # never reads the new payment beside the attempt's old status, or the other way round. Taken
        # before the attempt changes, so its changes reach the database as one UPDATE, not two.
        session.execute(_LOCK_INVOICE, {"invoice_id": attempt.invoice_id})
    pi_id = outcome.payment_intent_id
    if pi_id and attempt.payment_intent_id is None:
        attempt.payment_intent_id = pi_id
    match outcome:
        case Succeeded(payment_intent=view):
            changed = _move_if_news(
                session,
                attempt,
                S.SUCCEEDED,
                actor,
                failure_code=None,
                decline_code=None,
                failure_message=None,
            )
            recorded = payments.record_card_payment(session, attempt, view)
            if changed:
                dunning.clear_for_invoice(session, attempt.invoice_id)
                _notify(session, attempt, "receipt")
            return changed or recorded
        case CardDeclined():
            changed = _move_if_news(
                session,
                attempt,
                S.FAILED,
                actor,
                failure_code=outcome.code or "card_declined",
                decline_code=outcome.decline_code,
                failure_message=outcome.message,
                advice_code=outcome.advice_code,
                network_advice_code=outcome.network_advice_code,
            )
            if changed:
                decision = dunning.record_decline(session, attempt)
                _notify(
                    session,
                    attempt,
                    "will_retry"
                    if decision.retry_at and attempt.source == "schedule"
                    else "card_update_needed",
                )
            return changed
        case AuthenticationRequired():
            changed = _move_if_news(
                session,
                attempt,
                S.REQUIRES_ACTION,
                actor,
                failure_code="authentication_required",
                decline_code="authentication_required",
                failure_message=outcome.message,
            )
            if changed:
                dunning.record_decline(session, attempt)
                _notify(session, attempt, "authentication_needed")
            return changed
        case RequiresAction():
            return _move_if_news(session, attempt, S.REQUIRES_ACTION, actor)
        case Canceled():
            return _move_if_news(
                session,
                attempt,
                S.CANCELED,
                actor,
                failure_code="payment_intent_canceled",
                failure_message="The PaymentIntent was canceled.",
            )
        case Processing():
            return False  # the final word comes later, by webhook or the janitor
    raise AssertionError(f"unhandled outcome {outcome!r}")


def _notify(session: Session, attempt: ChargeAttempt, kind: str) -> None:
    """Queue the client's email in the transaction of the transition it tells about. A client paying on
    the spot sees the outcome on screen: only the receipt goes out for those."""
    if attempt.source == "client" and kind != "receipt":
        return
    outbox.enqueue_row(session, outbox.TASK_NOTIFY_CHARGE, {"attempt_id": attempt.id, "kind": kind})


def _move_if_news(
    session: Session,
    attempt: ChargeAttempt,
    reported: AttemptStatus,
    actor: str,
    **fields: Unpack[AttemptFields],
) -> bool:
    target = observe(attempt.status, reported)
    if target is None:
        return False
    move_attempt(session, attempt, target, actor, **fields)
    return True


def move_attempt(
    session: Session,
    attempt: ChargeAttempt,
    target: AttemptStatus,
    actor: str,
    *,
    now: datetime | None = None,
    **fields: Unpack[AttemptFields],
) -> None:
    previous = attempt.status
    attempt.status = transition(previous, target).value
    moment = now or utcnow()
    attempt.updated_at = moment
    for name, value in fields.items():
        if name == "payment_intent_id" and (value is None or attempt.payment_intent_id):
            continue
        setattr(attempt, name, value)
    if target is not S.PROCESSING:
        attempt.lease_owner = None
        attempt.lease_expires_at = None
    if target is not S.QUEUED:
        attempt.next_retry_at = None
    attempt.finished_at = moment if target.is_terminal else None
    # A plain INSERT: nothing reads the entry back in the transaction, and as an ORM object it cost a
    # good part of a charge's CPU in the unit of work (the worker moves every charge twice).
    audit.record_row(
        session,
        actor,
        f"charge.{target.value}",
        invoice_id=attempt.invoice_id,
        charge_attempt_id=attempt.id,
        **{"from": previous, "to": target.value},
        failure_code=attempt.failure_code if target is S.FAILED else None,
        decline_code=attempt.decline_code if target is S.FAILED else None,
        payment_intent_id=attempt.payment_intent_id,
    )
