"""Charging an invoice: open an attempt, run it against Stripe exactly once, apply what Stripe says.

The attempt row, with its idempotency key, is committed before the first Stripe call; the outcome is
recorded after it. While the call runs, the worker keeps the attempt's lease alive (shared.leases). A
crash in between leaves a `processing` attempt whose lease lapses within seconds: a redelivered message
takes it over, or the recovery sweep (shared.reconcile) asks Stripe, both under the attempt's own key.
Nothing here ever charges with a new key.
"""

from __future__ import annotations

import logging
import random
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache

from sqlalchemy import Select, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from shared import audit, outbox, retries
from shared.binding import Mismatch, MismatchReason, payment_intent_mismatch
from shared.eligibility import Blocker, BlockerCode, charge_blockers
from shared.gateway import (
    AuthenticationRequired,
    Canceled,
    CardDeclined,
    ChargeOutcome,
    ChargeRequest,
    PaymentIntentView,
    PermanentStripeError,
    Processing,
    RequiresAction,
    StripeGateway,
    Succeeded,
    TransientStripeError,
    classify_payment_intent,
)
from shared.leases import LeaseKeeper, lease_lapsed, process_owner
from shared.ledger import balance
from shared.logs import bind_log_ids
from shared.models import ChargeAttempt, Client, Invoice, Payment, Settings, utcnow
from shared.money import STRIPE_MAXIMUM_AMOUNT, format_money
from shared.ratelimit import RateBudgetTimeout, RateBudgetUnavailable
from shared.settings import SETTINGS_ROW_ID, get_settings
from shared.states import AttemptStatus, observe, transition

log = logging.getLogger(__name__)
S = AttemptStatus

# Countdowns stay far below the broker's visibility timeout; longer waits go through the outbox's
# available_at, which the relay publishes when due.
MAX_DIRECT_COUNTDOWN_SECONDS = 60.0
RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 600.0
# Stripe keeps idempotency keys at least 24 h; a create is only replayed well inside that.
KEY_REPLAY_WINDOW = timedelta(hours=23)


class ChargeRequestError(ValueError):
    """The request itself is malformed (e.g. an amount above what is due): HTTP 422."""


class NotChargeable(Exception):
    """The invoice cannot be charged now: HTTP 409 with the blockers."""

    def __init__(self, blockers: list[Blocker]) -> None:
        super().__init__("; ".join(b.message for b in blockers))
        self.blockers = blockers


class ChargeNotCancelable(Exception):
    pass


class NotAwaitingAuthentication(Exception):
    """The charge is not waiting for the client to authenticate; the message is fit to show."""


def idempotency_key_for(attempt_id: str) -> str:
    return f"offsession:charge:{attempt_id}"


def load_invoice_for_charge(session: Session, invoice_id: int, *, lock: bool = False) -> Invoice | None:
    query = _invoice_for_charge_query(lock)
    row = session.execute(query, {"invoice_id": invoice_id}).unique().one_or_none()
    if row is None:
        return None
    invoice, settings = row
    # The settings row rode along: get_settings() finds it in the identity map, which holds objects only
    # weakly, so the session keeps a reference to it.
    session.info["loaded_settings"] = settings
    return invoice


@lru_cache(maxsize=2)
def _invoice_for_charge_query(lock: bool) -> Select[tuple[Invoice, Settings]]:
    """Built once per process, the id a bound parameter: composing the statement was a tenth of a click's
    CPU (every option and clause is coerced and validated again on each build)."""
    query = (
        # The settings row (id 1) joined on: the rules need it, and a round trip of its own cost a tenth of
        # a click. Outer: a database built from the models has none until get_settings() adds it.
        select(Invoice, Settings)
        .outerjoin(Settings, Settings.id == SETTINGS_ROW_ID)
        .where(Invoice.id == bindparam("invoice_id"))
        .options(
            # One query for the invoice and all its rule needs: four round trips fewer on every click. The
            # collections multiply each other's rows (cards x payments x attempts), a handful each.
            joinedload(Invoice.client, innerjoin=True).joinedload(Client.cards),
            joinedload(Invoice.payments),
            joinedload(Invoice.charge_attempts),
        )
    )
    if lock:
        # Concurrent clicks on one invoice queue up here (PostgreSQL); SQLite serialises writers anyway.
        # NO KEY UPDATE: inserts that reference the invoice (their FK check takes KEY SHARE) do not wait.
        # OF invoice: only the invoice row is locked, not the joined client and cards.
        query = query.with_for_update(of=Invoice, key_share=True)
    return query


def open_attempt(
    session: Session,
    invoice: Invoice,
    *,
    source: str,
    requested_by: str,
    amount: int | None = None,
) -> tuple[ChargeAttempt, int]:
    """Write a queued attempt and its outbox message in the caller's transaction.

    Returns the attempt and the outbox message id (to publish once the transaction has committed).
    The amount is the server's: all that is due, or a part of it no larger than what is due.
    """
    due = balance(invoice).amount_due
    if amount is not None:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise ChargeRequestError("amount must be a whole number of minor units (1000 is $10.00).")
        if amount <= 0:
            raise ChargeRequestError("amount must be positive.")
        if amount > STRIPE_MAXIMUM_AMOUNT:
            raise ChargeRequestError(f"amount may be at most {STRIPE_MAXIMUM_AMOUNT} minor units.")
        if due > 0 and amount > due:
            raise ChargeRequestError(
                f"{format_money(amount, invoice.currency)} is more than the "
                f"{format_money(due, invoice.currency)} due."
            )
    settings = get_settings(session)
    blockers = charge_blockers(invoice, settings, amount=amount)
    if blockers:
        raise NotChargeable(blockers)
    card = invoice.client.default_card
    assert card is not None  # charge_blockers checked it
    attempt_id = str(uuid.uuid4())
    attempt = ChargeAttempt(
        id=attempt_id,
        invoice=invoice,
        amount=amount if amount is not None else due,
        currency=invoice.currency,
        source=source,
        requested_by=requested_by,
        status=S.QUEUED.value,
        idempotency_key=idempotency_key_for(attempt_id),
        # Resolved now and stored, so every retry sends byte-identical parameters.
        stripe_customer_id=invoice.client.stripe_customer_id,
        payment_method_id=card.stripe_payment_method_id,
        stripe_account_id=settings.stripe_account_id,
    )
    session.add(attempt)
    try:
        session.flush()
    except IntegrityError as exc:
        # The partial unique index: another request opened an attempt for this invoice meanwhile.
        raise NotChargeable(
            [Blocker(BlockerCode.CHARGE_IN_PROGRESS, "A charge for this invoice is already in progress.")]
        ) from exc
    # The outbox and audit rows are plain INSERTs, not ORM objects (nothing reads them back here): the
    # unit of work flushes the attempt alone, and commit finds nothing left to flush.
    message_id = outbox.enqueue_row(session, outbox.TASK_CHARGE_ATTEMPT, _charge_payload(attempt_id))
    audit.record_row(
        session,
        requested_by,
        "charge.requested",
        invoice_id=invoice.id,
        charge_attempt_id=attempt_id,
        amount=attempt.amount,
        currency=attempt.currency,
        source=source,
    )
    return attempt, message_id


def _charge_payload(attempt_id: str) -> dict[str, str]:
    return {"attempt_id": attempt_id}


def charge_message(attempt: ChargeAttempt, message_id: int) -> outbox.PendingMessage:
    """The message open_attempt wrote for `attempt`, to publish once committed without reading it back."""
    return outbox.PendingMessage(message_id, outbox.TASK_CHARGE_ATTEMPT, _charge_payload(attempt.id))


def charge_request_for(attempt: ChargeAttempt, invoice: Invoice) -> ChargeRequest:
    assert attempt.stripe_customer_id and attempt.payment_method_id
    return ChargeRequest(
        amount=attempt.amount,
        currency=attempt.currency,
        customer_id=attempt.stripe_customer_id,
        payment_method_id=attempt.payment_method_id,
        metadata={
            "invoice_id": str(invoice.id),
            "invoice_number": invoice.number,
            "charge_attempt_id": attempt.id,
        },
        description=f"Invoice {invoice.number}",
        idempotency_key=attempt.idempotency_key,
        stripe_account=attempt.stripe_account_id,
    )


# --------------------------------------------------------------------------------------------------
# Running an attempt (the worker)
# --------------------------------------------------------------------------------------------------


class RunResult(StrEnum):
    NOT_CLAIMED = "not_claimed"  # another delivery has it, or it is final, or its retry is not due
    HELD = "held"  # a live worker holds it: look again when its lease would lapse (retry_countdown)
    CANCELED_BY_LAST_LOOK = "canceled_by_last_look"
    APPLIED = "applied"
    RETRY_SCHEDULED = "retry_scheduled"
    UNKNOWN = "unknown"


@dataclass
class RunReport:
    result: RunResult
    status: str | None = None
    retry_message_id: int | None = None
    retry_countdown: float | None = None
    rate_limited: bool = False
    notes: list[str] = field(default_factory=list)


def claim_attempt(
    session: Session, attempt_id: str, *, now: datetime, lease_seconds: float
) -> tuple[ChargeAttempt, Invoice] | RunReport:
    """queued → processing with a lease held by this process, in the caller's transaction; or why not.

    A `processing` attempt whose lease lapsed, or whose holder's process is gone, is taken over: its
    holder's call may have reached Stripe, so it is only ever replayed under its key. One whose holder
    is alive is HELD: the caller looks again once that lease would have lapsed.

    The worker's last look happens here: an attempt that never reached Stripe is canceled if the
    invoice can no longer be charged (paid meanwhile, Stripe disconnected, card removed, ...). One
    that already reached Stripe is always replayed under its key: only Stripe knows what happened.
    """
    attempt = session.scalars(
        select(ChargeAttempt).where(ChargeAttempt.id == attempt_id).with_for_update()
    ).one_or_none()
    if attempt is None:
        return RunReport(RunResult.NOT_CLAIMED, None)
    taking_over = attempt.status == S.PROCESSING.value
    if taking_over:
        if not lease_lapsed(attempt.lease_owner, attempt.lease_expires_at, now):
            assert attempt.lease_expires_at is not None
            left = (attempt.lease_expires_at - now).total_seconds()
            return RunReport(
                RunResult.HELD,
                attempt.status,
                retry_countdown=min(max(left, 0.0) + 1.0, MAX_DIRECT_COUNTDOWN_SECONDS),
                notes=[f"held by {attempt.lease_owner}"],
            )
    elif attempt.status != S.QUEUED.value:
        return RunReport(RunResult.NOT_CLAIMED, attempt.status)
    elif attempt.next_retry_at is not None and attempt.next_retry_at > now:
        return RunReport(RunResult.NOT_CLAIMED, attempt.status, notes=["retry not due yet"])
    invoice = load_invoice_for_charge(session, attempt.invoice_id)
    assert invoice is not None
    # A holder's try went unanswered as far as we know: it counts like a timeout, so from now on the
    # attempt has reached Stripe (no last look, no cancel) and its replays are bounded like any others.
    transient_failures = attempt.transient_failures + (1 if taking_over else 0)
    may_have_reached_stripe = taking_over or reached_stripe(attempt)
    if may_have_reached_stripe and now - attempt.created_at >= KEY_REPLAY_WINDOW:
        # Stripe may have forgotten the key: a replay could charge again. The janitor matches the
        # customer's PaymentIntents on metadata instead.
        if not taking_over:
            move_attempt(session, attempt, S.PROCESSING, "worker", now=now)
        move_attempt(
            session,
            attempt,
            S.UNKNOWN,
            "worker",
            now=now,
            failure_message="Too old to replay under its key; checking with Stripe.",
        )
        return RunReport(RunResult.UNKNOWN, S.UNKNOWN.value)
    if not may_have_reached_stripe:
        blockers = charge_blockers(
            invoice, get_settings(session), amount=attempt.amount, ignore_attempt_id=attempt.id
        )
        due = balance(invoice).amount_due
        if attempt.amount > due and not any(b.code is BlockerCode.NOTHING_DUE for b in blockers):
            blockers.append(
                Blocker(BlockerCode.NOTHING_DUE, f"Only {format_money(due, invoice.currency)} is still due.")
            )
        saved = {card.stripe_payment_method_id for card in invoice.client.cards}
        if saved and attempt.payment_method_id not in saved:
            # Another card is saved now, but this charge was to use the one the client removed.
            blockers.append(
                Blocker(BlockerCode.NO_SAVED_CARD, "The card this charge was to use has been removed.")
            )
        if blockers:
            move_attempt(
                session,
                attempt,
                S.CANCELED,
                "worker",
                now=now,
                failure_code="not_chargeable",
                failure_message=" ".join(b.message for b in blockers),
            )
            return RunReport(
                RunResult.CANCELED_BY_LAST_LOOK, S.CANCELED.value, notes=[b.code.value for b in blockers]
            )
    # The conditional update is the claim: of two deliveries racing here, one changes a row. A takeover
    # changes it only if the lapsed holder still has it.
    lease_owner = process_owner()
    lease_expires_at = now + timedelta(seconds=lease_seconds)
    claimed = session.execute(
        update(ChargeAttempt)
        .where(
            ChargeAttempt.id == attempt_id,
            ChargeAttempt.status == attempt.status,
            ChargeAttempt.lease_owner.is_not_distinct_from(attempt.lease_owner),
        )
        .values(
            status=S.PROCESSING.value,
            lease_owner=lease_owner,
            lease_expires_at=lease_expires_at,
            transient_failures=transient_failures,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        return RunReport(RunResult.NOT_CLAIMED, attempt.status)
    previous_holder, previous_expiry = attempt.lease_owner, attempt.lease_expires_at
    # What the update wrote, without reading the row back (a round trip and an ORM load per charge).
    for name, value in (
        ("status", S.PROCESSING.value),
        ("lease_owner", lease_owner),
        ("lease_expires_at", lease_expires_at),
        ("transient_failures", transient_failures),
        ("updated_at", now),
    ):
        set_committed_value(attempt, name, value)
    if taking_over:
        audit.record_row(
            session,
            "worker",
            "charge.taken_over",
            invoice_id=invoice.id,
            charge_attempt_id=attempt.id,
            previous_holder=previous_holder,
            lease_expired_at=previous_expiry.isoformat() if previous_expiry else None,
        )
    else:
        audit.record_row(
            session,
            "worker",
            "charge.processing",
            invoice_id=invoice.id,
            charge_attempt_id=attempt.id,
            **{"from": S.QUEUED.value, "to": S.PROCESSING.value},
        )
    return attempt, invoice


def reached_stripe(attempt: ChargeAttempt) -> bool:
    """Whether a create may have reached Stripe already (then only a replay under the key is safe)."""
    return attempt.payment_intent_id is not None or attempt.transient_failures > 0


def run_attempt(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    attempt_id: str,
    *,
    lease_seconds: float,
    max_transient_retries: int,
    now: datetime | None = None,
    leases: LeaseKeeper | None = None,
) -> RunReport:
    """Claim, charge under the attempt's key, record the outcome. Safe to run twice, or at once.

    With `leases`, the attempt's lease is renewed while Stripe is asked and the outcome recorded, for
    at most as long as the call can take; without, it lasts `lease_seconds` from the claim.
    """
    started = now or utcnow()
    with factory() as session, session.begin():
        claim = claim_attempt(session, attempt_id, now=started, lease_seconds=lease_seconds)
        if isinstance(claim, RunReport):
            return claim
        attempt, invoice = claim
        request = charge_request_for(attempt, invoice)
    bind_log_ids(invoice_id=invoice.id, payment_intent_id=attempt.payment_intent_id)
    held: AbstractContextManager[None] = (
        leases.holding([attempt_id], at_most_seconds=gateway.longest_call_seconds)
        if leases is not None
        else nullcontext()
    )
    with held:
        return _charge_claimed(factory, gateway, attempt_id, request, max_transient_retries)


def _charge_claimed(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    attempt_id: str,
    request: ChargeRequest,
    max_transient_retries: int,
) -> RunReport:
    try:
        outcome = gateway.create_offsession_payment_intent(request)
    except (RateBudgetTimeout, RateBudgetUnavailable):
        # Nothing was sent: back to the queue, not counted as a Stripe failure.
        return _requeue_unsent(factory, attempt_id)
    except TransientStripeError as exc:
        return _after_transient_error(factory, attempt_id, exc, max_transient_retries)
    except PermanentStripeError as exc:
        # A bug or a misconfiguration (invalid request, bad key, idempotency mismatch): stop, keep the key.
        log.error("permanent Stripe error for charge %s: %s", attempt_id, exc, exc_info=exc)
        with factory() as session, session.begin():
            attempt = lock_attempt(session, attempt_id)
            if not _still_ours(attempt):
                return RunReport(RunResult.APPLIED, attempt.status)  # settled or taken over meanwhile
            move_attempt(
                session,
                attempt,
                S.UNKNOWN if exc.is_idempotency_error else S.FAILED,
                "worker",
                failure_code=exc.code or exc.kind,
                failure_message=exc.message,
                payment_intent_id=exc.payment_intent_id,
            )
            bind_log_ids(payment_intent_id=attempt.payment_intent_id)
            return RunReport(RunResult.APPLIED, attempt.status)

    # Stripe's word is applied whoever holds the lease now: it is the truth, and applying it is monotonic.
    with factory() as session, session.begin():
        attempt = lock_attempt(session, attempt_id)
        apply_outcome(session, attempt, outcome, actor="worker")
        bind_log_ids(payment_intent_id=attempt.payment_intent_id)
        return RunReport(RunResult.APPLIED, attempt.status)


def _still_ours(attempt: ChargeAttempt) -> bool:
    """Still processing under this process's lease: not settled by a webhook or the janitor, nor taken
    over by another worker after our lease lapsed (that one decides what happens next)."""
    return attempt.status == S.PROCESSING.value and attempt.lease_owner == process_owner()


def _after_transient_error(
    factory: sessionmaker[Session], attempt_id: str, exc: TransientStripeError, max_retries: int
) -> RunReport:
    with factory() as session, session.begin():
        attempt = lock_attempt(session, attempt_id)
        if not _still_ours(attempt):
            # A webhook or the janitor settled it, or another worker took it over, while we waited.
            return RunReport(RunResult.APPLIED, attempt.status)
        attempt.transient_failures += 1
        if attempt.transient_failures > max_retries:
            move_attempt(
                session,
                attempt,
                S.UNKNOWN,
                "worker",
                failure_code=exc.code or "stripe_unreachable",
                failure_message=f"No answer from Stripe after {attempt.transient_failures} tries: "
                f"{exc.message}",
            )
            return RunReport(RunResult.UNKNOWN, S.UNKNOWN.value, rate_limited=exc.rate_limited)
        delay = retry_delay(attempt.transient_failures)
        message_id = _requeue(
            session,
            attempt,
            delay,
            failure_code=exc.code or "transient",
            failure_message=f"Stripe did not answer ({exc.message}); retry {attempt.transient_failures} "
            f"of {max_retries} with the same key in {delay:.0f}s",
        )
        return RunReport(
            RunResult.RETRY_SCHEDULED,
            S.QUEUED.value,
            retry_message_id=message_id,
            retry_countdown=delay if delay <= MAX_DIRECT_COUNTDOWN_SECONDS else None,
            rate_limited=exc.rate_limited,
        )


def _requeue_unsent(factory: sessionmaker[Session], attempt_id: str) -> RunReport:
    with factory() as session, session.begin():
        attempt = lock_attempt(session, attempt_id)
        if not _still_ours(attempt):
            return RunReport(RunResult.APPLIED, attempt.status)
        delay = random.uniform(1.0, 5.0)
        message_id = _requeue(
            session,
            attempt,
            delay,
            failure_message="Waiting for the Stripe rate budget; nothing was sent yet.",
        )
        return RunReport(
            RunResult.RETRY_SCHEDULED, S.QUEUED.value, retry_message_id=message_id, retry_countdown=delay
        )


def _requeue(session: Session, attempt: ChargeAttempt, delay: float, **reason: str | None) -> int:
    """processing → queued, due again in `delay` seconds, with the outbox message that will run it."""
    attempt.next_retry_at = utcnow() + timedelta(seconds=delay)
    move_attempt(session, attempt, S.QUEUED, "worker", **reason)
    message = outbox.enqueue(
        session, outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": attempt.id}, available_at=attempt.next_retry_at
    )
    session.flush()
    return message.id


def retry_delay(failures: int) -> float:
    """Exponential backoff with full jitter on the upper half: 2-4 s, 4-8 s, ... up to 10 minutes."""
    ceiling = min(RETRY_BASE_SECONDS * 2 ** (failures - 1) * 2, RETRY_MAX_SECONDS)
    return random.uniform(ceiling / 2, ceiling)


def lock_attempt(session: Session, attempt_id: str) -> ChargeAttempt:
    return session.scalars(
        select(ChargeAttempt).where(ChargeAttempt.id == attempt_id).with_for_update()
    ).one()


# --------------------------------------------------------------------------------------------------
# Applying Stripe's word (worker, webhooks, janitor)
# --------------------------------------------------------------------------------------------------


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
        session.execute(
            select(Invoice.id).where(Invoice.id == attempt.invoice_id).with_for_update(key_share=True)
        )
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
            recorded = _record_card_payment(session, attempt, view)
            if changed:
                retries.clear_for_invoice(session, attempt.invoice_id)
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
                decision = retries.record_decline(session, attempt)
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
                retries.record_decline(session, attempt)
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
    session: Session, attempt: ChargeAttempt, reported: AttemptStatus, actor: str, **fields: str | None
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
    **fields: str | None,
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


def _record_card_payment(session: Session, attempt: ChargeAttempt, view: PaymentIntentView) -> bool:
    """One ledger row per succeeded PaymentIntent, whoever reports it first: what Stripe received, which
    apply_outcome has checked is the attempt's currency and no more than its amount."""
    exists = session.scalar(select(Payment.id).where(Payment.stripe_payment_intent_id == view.id))
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            # A plain INSERT (no ORM object, no flush of one): the row is only read by later transactions.
            session.execute(
                insert(Payment).values(
                    invoice_id=attempt.invoice_id,
                    amount=view.amount_received or attempt.amount,
                    method="card",
                    received_at=utcnow(),
                    reference=view.id,
                    charge_attempt_id=attempt.id,
                    stripe_payment_intent_id=view.id,
                    recorded_by="stripe",
                )
            )
    except IntegrityError:
        return False  # recorded by a concurrent reporter a moment ago
    return True


# --------------------------------------------------------------------------------------------------
# Canceling
# --------------------------------------------------------------------------------------------------


def cancel_charge(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    attempt_id: str,
    *,
    actor: str,
    reason: str | None = None,
    failure_code: str = "canceled_by_admin",
) -> str:
    """Cancel a charge: a queued one that never reached Stripe, or one waiting for the client.

    A queued retry that may already have reached Stripe is not cancelable: canceling it would free the
    invoice for a new attempt while the first might still have charged the card. Stripe is asked
    between transactions, never inside one. Returns the charge's status afterwards.
    """
    with factory() as session:
        attempt = session.get(ChargeAttempt, attempt_id)
        if attempt is None:
            raise LookupError(attempt_id)
        status, pi_id, account = attempt.status_enum, attempt.payment_intent_id, attempt.stripe_account_id
        unsent = not reached_stripe(attempt)
        session.rollback()
    if status is S.QUEUED and unsent:
        with factory() as session, session.begin():
            attempt = lock_attempt(session, attempt_id)
            if attempt.status == S.QUEUED.value and not reached_stripe(attempt):
                move_attempt(
                    session,
                    attempt,
                    S.CANCELED,
                    actor,
                    failure_code=failure_code,
                    failure_message=reason or "Canceled before it was sent to Stripe.",
                )
            return attempt.status
    if status is S.REQUIRES_ACTION:
        view = None
        if pi_id:
            try:
                view = gateway.cancel_payment_intent(pi_id, stripe_account=account)
            except PermanentStripeError:
                # Stripe refuses to cancel a PaymentIntent that has moved on: learn where it went.
                view = gateway.retrieve_payment_intent(pi_id, stripe_account=account)
        with factory() as session, session.begin():
            attempt = lock_attempt(session, attempt_id)
            if view is not None and view.status != "canceled":
                # The client completed (or failed) authentication meanwhile: that is the truth.
                apply_payment_intent(session, attempt, view, actor=actor)
            if attempt.status == S.REQUIRES_ACTION.value:
                move_attempt(
                    session,
                    attempt,
                    S.CANCELED,
                    actor,
                    failure_code=failure_code,
                    failure_message=reason or "Canceled while waiting for the client to authenticate.",
                )
            return attempt.status
    raise ChargeNotCancelable(
        f"A charge that is {status.label.lower()} cannot be canceled; only queued charges that have not "
        "reached Stripe and charges waiting for the client can."
    )


# --------------------------------------------------------------------------------------------------
# The client comes back on-session
# --------------------------------------------------------------------------------------------------


def start_on_session_authentication(
    factory: sessionmaker[Session], gateway: StripeGateway, attempt_id: str, return_url: str, *, actor: str
) -> str | None:
    """Confirm a charge waiting for the client again, with the client present. Returns the bank's page
    to send the browser to (it comes back to `return_url`), or None when Stripe settled it at once,
    which is then recorded. Stripe is asked between transactions."""
    with factory() as session:
        attempt = session.get_one(ChargeAttempt, attempt_id)
        if attempt.status != S.REQUIRES_ACTION.value or not attempt.payment_intent_id:
            raise NotAwaitingAuthentication("This payment does not need authentication.")
        pi_id, pm_id, account = (
            attempt.payment_intent_id,
            attempt.payment_method_id,
            attempt.stripe_account_id,
        )
        session.rollback()
    outcome = gateway.confirm_on_session(pi_id, pm_id or "", return_url, stripe_account=account)
    if isinstance(outcome, RequiresAction) and outcome.payment_intent.next_action_redirect_url:
        return outcome.payment_intent.next_action_redirect_url
    with factory() as session, session.begin():
        apply_outcome(session, lock_attempt(session, attempt_id), outcome, actor=actor)
    return None


def settle_from_stripe(
    factory: sessionmaker[Session], gateway: StripeGateway, attempt_id: str, *, actor: str
) -> str:
    """Ask Stripe where the charge's PaymentIntent is now and record it; returns the charge's status."""
    with factory() as session:
        attempt = session.get_one(ChargeAttempt, attempt_id)
        pi_id, account, status = attempt.payment_intent_id, attempt.stripe_account_id, attempt.status
        session.rollback()
    if not pi_id:
        return status
    view = gateway.retrieve_payment_intent(pi_id, stripe_account=account)
    with factory() as session, session.begin():
        attempt = lock_attempt(session, attempt_id)
        apply_payment_intent(session, attempt, view, actor=actor)
        return attempt.status
