"""Running a charge (the worker): claim the attempt, charge under its key exactly once, apply what
Stripe says.

The attempt row, with its idempotency key, was committed before the first Stripe call
(shared.services.charge_requests); the outcome is recorded after it. While the call runs, the worker
keeps the attempt's lease alive (shared.services.leases). A crash in between leaves a `processing`
attempt whose lease lapses within seconds: a redelivered message takes it over, or the recovery sweep
(shared.services.janitor) asks Stripe, both under the attempt's own key. Nothing here ever charges with a
new key.
"""

from __future__ import annotations

import logging
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Unpack, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from shared.domain.eligibility import Blocker, BlockerCode, charge_blockers
from shared.domain.ledger import balance
from shared.domain.models import ChargeAttempt, Invoice, utcnow
from shared.domain.money import format_money
from shared.domain.payments import (
    ChargeOutcome,
    ChargeRequest,
    PermanentStripeError,
    TransientStripeError,
)
from shared.log_context import bind_log_ids
from shared.services import audit, outbox, stripe_connection
from shared.services.attempts import (
    AttemptFields,
    S,
    apply_outcome,
    lock_attempt,
    move_attempt,
    reached_stripe,
)
from shared.services.charge_requests import load_invoice_for_charge
from shared.services.leases import LeaseKeeper, lease_lapsed, process_owner
from shared.services.ports import RateBudgetTimeout, RateBudgetUnavailable, StripePort
from shared.services.settings import get_settings

log = logging.getLogger(__name__)


# Countdowns stay far below the broker's visibility timeout; longer waits go through the outbox's
# available_at, which the relay publishes when due.
MAX_DIRECT_COUNTDOWN_SECONDS = 60.0
RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 600.0
# Stripe keeps idempotency keys at least 24 h; a create is only replayed well inside that.
KEY_REPLAY_WINDOW = timedelta(hours=23)


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


class RunResult(StrEnum):
    NOT_CLAIMED = "not_claimed"  # another delivery has it, or it is final, or its retry is not due
    HELD = "held"  # a live worker holds it: look again when its lease would lapse (retry_countdown)
    CANCELED_BY_LAST_LOOK = "canceled_by_last_look"
    APPLIED = "applied"
    RETRY_SCHEDULED = "retry_scheduled"
    UNKNOWN = "unknown"
    # Recording it raised (a fault of ours): left processing, its lease runs out and the recovery sweep
    # asks Stripe under its key.
    ERROR = "error"


@dataclass
class RunReport:
    result: RunResult
    status: str | None = None
    retry_message_id: int | None = None
    retry_countdown: float | None = None
    rate_limited: bool = False
    notes: list[str] = field(default_factory=list)
    # Which invoice and PaymentIntent, once the outcome is recorded (for the log line that tells it).
    invoice_id: int | None = None
    payment_intent_id: str | None = None


def last_look_blockers(session: Session, attempt: ChargeAttempt, invoice: Invoice) -> list[Blocker]:
    """Why an attempt that never reached Stripe may no longer be charged (none: it may). The invoice is
    loaded for charging (load_invoice_for_charge), the settings with it."""
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
    return blockers


def cancel_at_last_look(
    session: Session, attempt: ChargeAttempt, blockers: list[Blocker], *, now: datetime
) -> RunReport:
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


def new_lease(now: datetime, lease_seconds: float) -> tuple[str, datetime]:
    """The lease a claim made now takes: (this process as its holder, when it runs out unless renewed)."""
    return process_owner(), now + timedelta(seconds=lease_seconds)


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
        return hand_to_janitor(session, attempt, now)
    if not may_have_reached_stripe:
        blockers = last_look_blockers(session, attempt, invoice)
        if blockers:
            return cancel_at_last_look(session, attempt, blockers, now=now)
    # The conditional update is the claim: of two deliveries racing here, one changes a row. A takeover
    # changes it only if the lapsed holder still has it.
    lease_owner, lease_expires_at = new_lease(now, lease_seconds)
    claimed = cast(
        "CursorResult[Any]",
        session.execute(
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
        ),
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


def hand_to_janitor(session: Session, attempt: ChargeAttempt, now: datetime) -> RunReport:
    """A processing attempt that may have reached Stripe longer ago than Stripe keeps its key: replaying
    could charge again, so it goes to `unknown` and the janitor matches the customer's PaymentIntents on
    metadata instead (shared.services.janitor)."""
    move_attempt(
        session,
        attempt,
        S.UNKNOWN,
        "worker",
        now=now,
        failure_message="Too old to replay under its key; checking with Stripe.",
    )
    return RunReport(RunResult.UNKNOWN, S.UNKNOWN.value)


def run_attempt(
    factory: sessionmaker[Session],
    gateway: StripePort,
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


# What a Stripe call came back with: the outcome, or the error that says nothing was decided there.
StripeAnswer = (
    ChargeOutcome | RateBudgetTimeout | RateBudgetUnavailable | TransientStripeError | PermanentStripeError
)


def ask_stripe(gateway: StripePort, request: ChargeRequest) -> StripeAnswer:
    """The create under the attempt's key; the errors the worker records are returned, not raised (any
    other exception is a fault of ours: it propagates, and the attempt's lease runs out)."""
    try:
        return gateway.create_offsession_payment_intent(request)
    except (RateBudgetTimeout, RateBudgetUnavailable, TransientStripeError, PermanentStripeError) as exc:
        return exc


def _charge_claimed(
    factory: sessionmaker[Session],
    gateway: StripePort,
    attempt_id: str,
    request: ChargeRequest,
    max_transient_retries: int,
) -> RunReport:
    answer = ask_stripe(gateway, request)
    with factory() as session, session.begin():
        report = record_answer(session, lock_attempt(session, attempt_id), answer, max_transient_retries)
        bind_log_ids(payment_intent_id=report.payment_intent_id)
        return report


def record_answer(
    session: Session, attempt: ChargeAttempt, answer: StripeAnswer, max_transient_retries: int
) -> RunReport:
    """Record what Stripe answered for a claimed attempt, locked (lock_attempt), in the caller's
    transaction: the outcome with its ledger row, or a retry under the same key, or why it stopped."""
    report = _record_answer(session, attempt, answer, max_transient_retries)
    report.invoice_id, report.payment_intent_id = attempt.invoice_id, attempt.payment_intent_id
    return report


def _record_answer(
    session: Session, attempt: ChargeAttempt, answer: StripeAnswer, max_transient_retries: int
) -> RunReport:
    if isinstance(answer, RateBudgetTimeout | RateBudgetUnavailable):
        # Nothing was sent: back to the queue, not counted as a Stripe failure.
        return _requeue_unsent(session, attempt)
    if isinstance(answer, TransientStripeError):
        return _after_transient_error(session, attempt, answer, max_transient_retries)
    if isinstance(answer, PermanentStripeError):
        # A bug or a misconfiguration (invalid request, bad key, idempotency mismatch): stop, keep the key.
        log.error("permanent Stripe error for charge %s: %s", attempt.id, answer, exc_info=answer)
        if not _still_ours(attempt):
            return RunReport(RunResult.APPLIED, attempt.status)  # settled or taken over meanwhile
        move_attempt(
            session,
            attempt,
            S.UNKNOWN if answer.is_idempotency_error else S.FAILED,
            "worker",
            failure_code=answer.code or answer.kind,
            failure_message=answer.message,
            payment_intent_id=answer.payment_intent_id,
        )
        # A refused key or account blocks every charge, with the reason, until an admin connects.
        stripe_connection.record_refusal(session, answer, attempt.stripe_account_id)
        return RunReport(RunResult.APPLIED, attempt.status)
    # Stripe's word is applied whoever holds the lease now: it is the truth, and applying it is monotonic.
    apply_outcome(session, attempt, answer, actor="worker")
    return RunReport(RunResult.APPLIED, attempt.status)


def _still_ours(attempt: ChargeAttempt) -> bool:
    """Still processing under this process's lease: not settled by a webhook or the janitor, nor taken
    over by another worker after our lease lapsed (that one decides what happens next)."""
    return attempt.status == S.PROCESSING.value and attempt.lease_owner == process_owner()


def _after_transient_error(
    session: Session, attempt: ChargeAttempt, exc: TransientStripeError, max_retries: int
) -> RunReport:
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
            failure_message=f"No answer from Stripe after {attempt.transient_failures} tries: {exc.message}",
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


def _requeue_unsent(session: Session, attempt: ChargeAttempt) -> RunReport:
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


def _requeue(session: Session, attempt: ChargeAttempt, delay: float, **reason: Unpack[AttemptFields]) -> int:
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
