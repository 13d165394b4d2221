"""Running several charges from one message (the batch's fan-out): one claim, the Stripe calls at once,
the outcomes recorded a few at a time.

A click keeps a message of its own (shared.services.charge_requests): its worker starts at once and
records it alone. The batch and the automatic retries open many attempts together; sending them
CHARGES_PER_MESSAGE to a message spares the broker round trips, the claim transaction and the log
lines that each message costs, and the calls still run side by side.

Every guarantee of a single charge holds for each attempt of a group (shared.services.charging): the
claim is one UPDATE of the queued ones, followed in the same transaction by each one's last look (an
invoice that can no longer be charged cancels its attempt there, before Stripe); the key was committed
with the attempt; the leases are kept while the calls run; each outcome commits with its ledger row,
and one attempt's trouble (an error, a retry, a decline, a failed commit) never undoes another's.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime

from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from shared.domain.models import AuditEvent, ChargeAttempt, Invoice, table_of, utcnow
from shared.services import outbox
from shared.services.attempts import S, lock_attempt, reached_stripe
from shared.services.charge_requests import load_invoices_for_charge
from shared.services.charging import (
    KEY_REPLAY_WINDOW,
    RunReport,
    RunResult,
    StripeAnswer,
    ask_stripe,
    cancel_at_last_look,
    charge_request_for,
    claim_attempt,
    hand_to_janitor,
    last_look_blockers,
    new_lease,
    record_answer,
)
from shared.services.leases import LeaseKeeper
from shared.services.ports import StripePort, UnitOfWork

log = logging.getLogger(__name__)

# At most ten per message: a page of the batch (50) makes five. Ten divides the per-message costs (the
# broker's round trips, the claim's transaction, the task's bookkeeping) by ten, most of what grouping can
# save. A message's charges are claimed together and then wait for their rate-budget slots, so a message
# is kept to MESSAGE_BUDGET_SECONDS of the budget (charges_per_message): at 95 requests/s ten, at the
# default 20/s two. Larger, a dead worker would leave many charges that never reached Stripe to the
# recovery sweep, which then competes for the same slots (`make chaos` at 20/s: groups of ten kept charges
# of a killed worker open 73 s p50; of two, 19.5 s).
CHARGES_PER_MESSAGE = 10
MESSAGE_BUDGET_SECONDS = 0.1


def charges_per_message(stripe_rate_limit: float) -> int:
    """How many charges one message carries under a rate budget of `stripe_rate_limit` requests/s."""
    return max(1, min(CHARGES_PER_MESSAGE, math.ceil(stripe_rate_limit * MESSAGE_BUDGET_SECONDS)))
# Outcomes that arrive this close to the first of a round are recorded with it, in one transaction.
GATHER_SECONDS = 0.05
# Stripe calls in flight at once per process, across all its messages: as many as the charge worker's
# threads (the Procfile's worker-charges, 64), so grouping never adds waiters on the rate budget.
STRIPE_CALL_THREADS = 64

_AUDIT = table_of(AuditEvent)
_calls: tuple[int, ThreadPoolExecutor] | None = None
_calls_lock = threading.Lock()


def enqueue_grouped(
    uow: UnitOfWork, attempt_ids: Sequence[str], per_message: int = CHARGES_PER_MESSAGE
) -> int:
    """The messages that run `attempt_ids` (opened with request_charge(own_message=False) in the unit of
    work), `per_message` to a message (charges_per_message), published once the unit of work has
    committed. Returns how many messages."""
    count = 0
    for start in range(0, len(attempt_ids), per_message):
        group = list(attempt_ids[start : start + per_message])
        if len(group) == 1:
            outbox.enqueue_after_commit(uow, outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": group[0]})
        else:
            outbox.enqueue_after_commit(uow, outbox.TASK_CHARGE_ATTEMPTS, {"attempt_ids": group})
        count += 1
    return count


def claim_attempts(
    session: Session, attempt_ids: Iterable[str], *, now: datetime, lease_seconds: float
) -> tuple[list[tuple[ChargeAttempt, Invoice]], dict[str, RunReport]]:
    """claim_attempt() for several attempts in the caller's transaction: (the claimed attempts with
    their invoices, a report for each of the others).

    The queued attempts that are due are claimed by one UPDATE ... RETURNING; each then has its last
    look, and one whose invoice can no longer be charged is canceled (queued → canceled, as the other
    transactions see it). The rest (taken already, held by a live worker, lapsed, final, not yet due) go
    through claim_attempt one by one, as a message of their own would.
    """
    ids = sorted(set(attempt_ids))
    owner, expires_at = new_lease(now, lease_seconds)
    claimed = list(
        session.scalars(
            update(ChargeAttempt)
            .where(
                ChargeAttempt.id.in_(ids),
                ChargeAttempt.status == S.QUEUED.value,
                or_(ChargeAttempt.next_retry_at.is_(None), ChargeAttempt.next_retry_at <= now),
            )
            .values(status=S.PROCESSING.value, lease_owner=owner, lease_expires_at=expires_at, updated_at=now)
            .returning(ChargeAttempt)
            .execution_options(synchronize_session=False)
        )
    )
    reports: dict[str, RunReport] = {}
    ready: list[tuple[ChargeAttempt, Invoice]] = []
    claimed_ids = {attempt.id for attempt in claimed}
    for attempt_id in ids:
        if attempt_id not in claimed_ids:
            claim = claim_attempt(session, attempt_id, now=now, lease_seconds=lease_seconds)
            if isinstance(claim, RunReport):
                reports[attempt_id] = claim
            else:
                ready.append(claim)
    invoices = load_invoices_for_charge(session, sorted({a.invoice_id for a in claimed}))
    moved: list[dict[str, object]] = []
    for attempt in claimed:
        invoice = invoices[attempt.invoice_id]
        if reached_stripe(attempt):
            # A retry: only a replay under its key is safe, and only while Stripe keeps the key.
            if now - attempt.created_at >= KEY_REPLAY_WINDOW:
                session.execute(insert(_AUDIT), _processing_entry(attempt))  # before the move it precedes
                reports[attempt.id] = hand_to_janitor(session, attempt, now)
                continue
        elif blockers := last_look_blockers(session, attempt, invoice):
            # Never processing as far as anyone else can tell: the claim is undone in its transaction.
            set_committed_value(attempt, "status", S.QUEUED.value)
            reports[attempt.id] = cancel_at_last_look(session, attempt, blockers, now=now)
            continue
        moved.append(_processing_entry(attempt))
        ready.append((attempt, invoice))
    if moved:
        session.execute(insert(_AUDIT), moved)  # one statement for the group's entries
    return ready, reports


def _processing_entry(attempt: ChargeAttempt) -> dict[str, object]:
    """The audit entry of queued → processing (audit.record_row's row, for a grouped INSERT)."""
    return {
        "actor": "worker",
        "action": "charge.processing",
        "invoice_id": attempt.invoice_id,
        "charge_attempt_id": attempt.id,
        "detail": {"from": S.QUEUED.value, "to": S.PROCESSING.value},
    }


def run_attempts(
    factory: sessionmaker[Session],
    gateway: StripePort,
    attempt_ids: Iterable[str],
    *,
    lease_seconds: float,
    max_transient_retries: int,
    now: datetime | None = None,
    leases: LeaseKeeper | None = None,
) -> dict[str, RunReport]:
    """charging.run_attempt() for several attempts: claim them together, ask Stripe for each at once
    (within the shared rate budget, which every call of the gateway takes from), record each outcome as
    it comes. Returns a report per attempt id. Safe to run twice, or at once."""
    started = now or utcnow()
    with factory() as session, session.begin():
        ready, reports = claim_attempts(session, attempt_ids, now=started, lease_seconds=lease_seconds)
        requests = {attempt.id: charge_request_for(attempt, invoice) for attempt, invoice in ready}
    if not requests:
        return reports
    held: AbstractContextManager[None] = (
        leases.holding(list(requests), at_most_seconds=gateway.longest_call_seconds)
        if leases is not None
        else nullcontext()
    )
    with held:
        calls = _stripe_calls()
        futures: dict[Future[StripeAnswer], str] = {
            calls.submit(ask_stripe, gateway, request): attempt_id for attempt_id, request in requests.items()
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            if pending:
                more, pending = wait(pending, timeout=GATHER_SECONDS)
                done |= more
            answers: dict[str, StripeAnswer] = {}
            for future in done:
                attempt_id = futures[future]
                try:
                    answers[attempt_id] = future.result()
                except Exception as exc:  # a fault of ours: the lease runs out, recovery asks Stripe
                    log.error(
                        "charge %s: the call raised; left to the recovery sweep", attempt_id, exc_info=exc
                    )
                    reports[attempt_id] = RunReport(RunResult.ERROR, S.PROCESSING.value, notes=[repr(exc)])
            reports.update(record_answers(factory, answers, max_transient_retries))
    return reports


def record_answers(
    factory: sessionmaker[Session], answers: dict[str, StripeAnswer], max_transient_retries: int
) -> dict[str, RunReport]:
    """Record Stripe's answers for claimed attempts: together in one transaction, or, should that fail,
    each in its own (one attempt's fault then costs nobody else theirs)."""
    ids = sorted(answers)
    if len(ids) > 1:
        try:
            with factory() as session, session.begin():
                locked = {
                    attempt.id: attempt
                    for attempt in session.scalars(
                        select(ChargeAttempt)
                        .where(ChargeAttempt.id.in_(ids))
                        .order_by(ChargeAttempt.id)
                        .with_for_update()
                    )
                }
                return {
                    attempt_id: record_answer(
                        session, locked[attempt_id], answers[attempt_id], max_transient_retries
                    )
                    for attempt_id in ids
                }
        except Exception as exc:
            log.warning("recording %d charge outcomes together failed (%s): one at a time", len(ids), exc)
    reports: dict[str, RunReport] = {}
    for attempt_id in ids:
        try:
            with factory() as session, session.begin():
                reports[attempt_id] = record_answer(
                    session, lock_attempt(session, attempt_id), answers[attempt_id], max_transient_retries
                )
        except Exception as exc:
            log.error("charge %s: its outcome could not be recorded", attempt_id, exc_info=exc)
            reports[attempt_id] = RunReport(RunResult.ERROR, S.PROCESSING.value, notes=[repr(exc)])
    return reports


def _stripe_calls() -> ThreadPoolExecutor:
    """This process's threads for Stripe calls (a forked child makes its own)."""
    global _calls
    with _calls_lock:
        if _calls is None or _calls[0] != os.getpid():
            _calls = (
                os.getpid(),
                ThreadPoolExecutor(max_workers=STRIPE_CALL_THREADS, thread_name_prefix="stripe-call"),
            )
        return _calls[1]
