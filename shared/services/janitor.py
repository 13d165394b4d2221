"""The janitor: brings every charge attempt to its true final state, whatever crashed on the way.

Two sweeps from beat. `recover_charges`, every few seconds, is the quick one: charges whose worker
stopped renewing their lease (it died, or its call outlived every timeout: shared.services.leases) and that
it recently moved to `unknown`, and queued charges whose broker message was lost; when none is
found it costs two indexed queries. `run_janitor`, every minute and by hand (`offsession
reconcile`), does all of that for every `unknown` attempt, plus webhooks, authentications and the
outbox.

For each stale attempt it asks Stripe, in order: the PaymentIntent by its stored id; else a replay
of the create under the attempt's own key while Stripe still keeps it (24 h); a replay that meets
the original still in flight gets Stripe's 409 and is tried again by the next sweep; else the
customer's PaymentIntents matched on metadata; else it flags the attempt for an operator. It never
charges with a new key.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.binding import Mismatch
from shared.domain.models import ChargeAttempt, Invoice, OutboxMessage, utcnow
from shared.domain.payments import (
    ChargeRequest,
    PaymentIntentView,
    PermanentStripeError,
    TransientStripeError,
)
from shared.domain.states import AttemptStatus
from shared.services import audit, outbox
from shared.services.attempts import apply_outcome, apply_payment_intent, lock_attempt, move_attempt
from shared.services.charge_actions import cancel_charge
from shared.services.charging import KEY_REPLAY_WINDOW, charge_request_for
from shared.services.dunning import retry_policy
from shared.services.leases import lease_lapsed
from shared.services.ports import Publisher, StripePort
from shared.services.refunds import settle_stale_refunds
from shared.services.webhook_drain import redrive_cutoff, unprocessed_event_ids

log = logging.getLogger(__name__)
S = AttemptStatus

REPLAY_WINDOW = KEY_REPLAY_WINDOW
# A queued attempt whose message has not been taken this long after it went out may be stranded (a
# broker that lost it, a worker killed holding it unacknowledged): see republish_stranded.
STRANDED_AFTER = timedelta(seconds=10)
# An attempt taken by a worker counts as overtaking a waiting one if it was opened this much later:
# messages published at nearly the same moment reach the workers' processes in any order.
OVERTAKING_MARGIN = timedelta(seconds=2)
# The quick sweep retries the attempts that became `unknown` this recently (a replay that met the
# original in flight, Stripe briefly away); older ones are the minute janitor's.
RECENTLY_UNKNOWN = timedelta(minutes=5)
# Stale attempts are settled this many at a time: each is a Stripe round trip or two.
RESOLVE_THREADS = 8
REQUIRES_ACTION_TTL = timedelta(days=7)
NEEDS_OPERATOR = "needs_operator"
# Statuses an attempt reaches only once a worker has taken its message.
TAKEN_STATUSES = tuple(s.value for s in (S.PROCESSING, S.SUCCEEDED, S.FAILED, S.REQUIRES_ACTION, S.UNKNOWN))


@dataclass
class JanitorReport:
    resolved: Counter[str] = field(default_factory=Counter)
    still_unknown: int = 0
    flagged_for_operator: int = 0
    requeued: int = 0
    webhook_events_redriven: int = 0
    outbox_published: int = 0
    expired_authentications: int = 0
    # Refunds left pending whose worker died or whose news was lost, settled from Stripe, by outcome.
    refunds_settled: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        resolved = ", ".join(f"{n} {status}" for status, n in sorted(self.resolved.items())) or "none"
        return (
            f"resolved: {resolved}; still unknown: {self.still_unknown}; flagged for an operator: "
            f"{self.flagged_for_operator}; re-queued: {self.requeued}; webhook events re-driven: "
            f"{self.webhook_events_redriven}; outbox messages published: {self.outbox_published}; "
            f"authentications expired: {self.expired_authentications}"
            + (
                "; refunds settled: " + ", ".join(f"{n} {o}" for o, n in sorted(self.refunds_settled.items()))
                if self.refunds_settled
                else ""
            )
        )


def stale_attempt_ids(
    session: Session, now: datetime, limit: int = 200, *, unknown_since: datetime | None = None
) -> list[str]:
    """`processing` attempts whose lease ran out, and `unknown` ones (only those that became unknown
    after `unknown_since`, when given)."""
    unknown = ChargeAttempt.status == S.UNKNOWN.value
    if unknown_since is not None:
        unknown = and_(unknown, ChargeAttempt.updated_at >= unknown_since)
    return list(
        session.scalars(
            select(ChargeAttempt.id)
            .where(
                or_(
                    unknown,
                    and_(ChargeAttempt.status == S.PROCESSING.value, ChargeAttempt.lease_expires_at < now),
                )
            )
            .order_by(ChargeAttempt.updated_at)
            .limit(limit)
        )
    )


def reconcile_stale_attempts(
    factory: sessionmaker[Session],
    gateway: StripePort,
    *,
    now: datetime | None = None,
    report: JanitorReport | None = None,
    unknown_since: datetime | None = None,
) -> JanitorReport:
    moment = now or utcnow()
    report = report or JanitorReport()
    with factory() as session:
        ids = stale_attempt_ids(session, moment, unknown_since=unknown_since)
        session.rollback()
    if not ids:
        return report

    def resolve(attempt_id: str) -> str | None:
        try:
            return resolve_attempt(factory, gateway, attempt_id, now=moment)
        except Exception as exc:  # one charge must not stop the sweep (Stripe down, rate budget, ...)
            log.warning("janitor could not resolve charge %s yet: %s", attempt_id, exc)
            return None

    # Side by side: the charges of a whole killed worker are settled in a few round trips, not dozens.
    with ThreadPoolExecutor(max_workers=min(RESOLVE_THREADS, len(ids)), thread_name_prefix="janitor") as pool:
        statuses = list(pool.map(resolve, ids))
    for status in statuses:
        if status is None:
            report.still_unknown += 1
        elif status == NEEDS_OPERATOR:
            report.flagged_for_operator += 1
        elif status in (S.UNKNOWN.value, S.PROCESSING.value):
            report.still_unknown += 1
        else:
            report.resolved[status] += 1
    return report


def resolve_attempt(
    factory: sessionmaker[Session], gateway: StripePort, attempt_id: str, *, now: datetime
) -> str:
    """Settle one stale attempt from Stripe's records; returns its status (or NEEDS_OPERATOR)."""
    with factory() as session, session.begin():
        attempt = lock_attempt(session, attempt_id)
        if attempt.status == S.PROCESSING.value:
            if not lease_lapsed(attempt.lease_owner, attempt.lease_expires_at, now):
                return attempt.status  # its worker is alive and renewing its lease
            move_attempt(
                session,
                attempt,
                S.UNKNOWN,
                "janitor",
                failure_message="The worker handling it stopped; checking with Stripe.",
            )
        elif attempt.status != S.UNKNOWN.value:
            return attempt.status
        invoice = session.get(Invoice, attempt.invoice_id)
        assert invoice is not None
        pi_id = attempt.payment_intent_id
        request = charge_request_for(attempt, invoice) if attempt.stripe_customer_id else None
        created_at = attempt.created_at
        account = attempt.stripe_account_id
        customer = attempt.stripe_customer_id

    try:
        return _resolve_from_stripe(
            factory, gateway, attempt_id, pi_id, request, created_at, customer, account, now
        )
    except Mismatch as mismatch:
        # Stripe's answer is not this charge's (another amount, currency, customer): applying it would
        # credit what was never asked for, and asking again next minute would not change it.
        log.error("charge %s: Stripe's PaymentIntent does not match it: %s", attempt_id, mismatch.message)
        return _flag_for_operator(
            factory, attempt_id, f"Stripe's PaymentIntent does not match this charge: {mismatch.message}"
        )


def _resolve_from_stripe(
    factory: sessionmaker[Session],
    gateway: StripePort,
    attempt_id: str,
    pi_id: str | None,
    request: ChargeRequest | None,
    created_at: datetime,
    customer: str | None,
    account: str | None,
    now: datetime,
) -> str:
    # 1. The PaymentIntent we know of.
    if pi_id:
        view = gateway.retrieve_payment_intent(pi_id, stripe_account=account)
        return _apply_view(factory, attempt_id, view)
    # 2. Replay the create under the same key: Stripe answers with the original outcome, or runs it
    #    now if it never arrived. Byte-identical parameters, rebuilt from the stored attempt.
    if request is not None and now - created_at < REPLAY_WINDOW:
        try:
            outcome = gateway.create_offsession_payment_intent(request)
        except TransientStripeError:
            raise
        except PermanentStripeError as exc:
            if not exc.is_idempotency_error:
                raise
            log.error("idempotency mismatch replaying charge %s: %s", attempt_id, exc)
        else:
            with factory() as session, session.begin():
                attempt = lock_attempt(session, attempt_id)
                apply_outcome(session, attempt, outcome, actor="janitor")
                return attempt.status
    # 3. The customer's PaymentIntents, matched on metadata (strongly consistent, unlike search).
    if customer:
        found = gateway.find_attempt_payment_intents(
            customer, attempt_id, created_gte=created_at - timedelta(minutes=10), stripe_account=account
        )
        if found:
            # Several would mean a double charge; the succeeded one (if any) is the truth to record.
            found.sort(key=lambda v: v.status != "succeeded")
            if len(found) > 1:
                log.error(
                    "charge %s has %d PaymentIntents: %s", attempt_id, len(found), [v.id for v in found]
                )
            return _apply_view(factory, attempt_id, found[0])
    # 4. Nothing to go on: a person must look.
    return _flag_for_operator(
        factory,
        attempt_id,
        "Stripe has no record of this charge and its key is too old to "
        "replay safely: check the Stripe dashboard, then cancel or record it.",
    )


def _flag_for_operator(factory: sessionmaker[Session], attempt_id: str, message: str) -> str:
    with factory() as session, session.begin():
        attempt = lock_attempt(session, attempt_id)
        if attempt.failure_code != NEEDS_OPERATOR:
            attempt.failure_code = NEEDS_OPERATOR
            attempt.failure_message = message
            audit.record(
                session,
                "janitor",
                "charge.flagged_for_operator",
                invoice_id=attempt.invoice_id,
                charge_attempt_id=attempt.id,
            )
    return NEEDS_OPERATOR


def _apply_view(factory: sessionmaker[Session], attempt_id: str, view: PaymentIntentView) -> str:
    with factory() as session, session.begin():
        attempt = lock_attempt(session, attempt_id)
        apply_payment_intent(session, attempt, view, actor="janitor")
        return attempt.status


def republish_stranded(factory: sessionmaker[Session], *, now: datetime | None = None) -> list[int]:
    """Queued attempts whose message the broker seems to have lost (or a killed worker holds
    unacknowledged, which Redis gives back only after its visibility timeout) get a new message.

    A queue hands messages out in order, so a message not taken STRANDED_AFTER after it went out is
    either behind a backlog or lost. Behind a backlog, the workers are busy with attempts opened before
    it: it is left alone, or every waiting charge of a big batch would be sent again. Lost, either an
    attempt opened after it has been taken already (it was overtaken) or nothing is being taken at all.
    With no worker running, an attempt is sent again after waiting as long again as it had waited
    (10 s, 20 s, 40 s, ...), not every sweep. A duplicate is harmless: the claim takes one of them.
    Returns the new outbox message ids; the caller publishes them.
    """
    moment = now or utcnow()
    cutoff = moment - STRANDED_AFTER
    with factory() as session, session.begin():
        attempts = session.scalars(
            select(ChargeAttempt)
            .where(
                ChargeAttempt.status == S.QUEUED.value,
                ChargeAttempt.updated_at < cutoff,
                or_(ChargeAttempt.next_retry_at.is_(None), ChargeAttempt.next_retry_at < cutoff),
            )
            .order_by(ChargeAttempt.updated_at)
            .limit(500)
        ).all()
        if not attempts:
            return []
        # What the workers took lately: how many, and the newest of them by when it was opened.
        taken, newest_taken = session.execute(
            select(func.count(), func.max(ChargeAttempt.created_at)).where(
                ChargeAttempt.status.in_(TAKEN_STATUSES), ChargeAttempt.updated_at >= cutoff
            )
        ).one()
        # A retry waiting in the outbox for its time (or a message, alone or the batch's group, waiting
        # for the broker to come back) is its charge's message.
        unpublished: set[str] = set()
        for payload in session.scalars(
            select(OutboxMessage.payload).where(
                OutboxMessage.published_at.is_(None),
                OutboxMessage.task_name.in_((outbox.TASK_CHARGE_ATTEMPT, outbox.TASK_CHARGE_ATTEMPTS)),
            )
        ):
            unpublished.update(payload.get("attempt_ids") or [payload.get("attempt_id")])
        ids = []
        for attempt in attempts:
            if attempt.id in unpublished:
                continue
            # Its message went out when it was queued, or when its retry came due, or when last re-sent.
            sent_at = max(attempt.updated_at, attempt.next_retry_at or attempt.updated_at)
            waited_before = sent_at - (attempt.next_retry_at or attempt.created_at)
            if moment - sent_at < max(STRANDED_AFTER, waited_before):
                continue
            if taken and not (newest_taken is not None and newest_taken > sent_at + OVERTAKING_MARGIN):
                continue  # the workers are busy with attempts queued before it: a backlog
            message = outbox.enqueue(session, outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": attempt.id})
            attempt.updated_at = moment
            session.flush()
            ids.append(message.id)
        return ids


def expire_authentications(
    factory: sessionmaker[Session],
    gateway: StripePort,
    *,
    now: datetime | None = None,
    ttl: timedelta = REQUIRES_ACTION_TTL,
) -> int:
    """Attempts left waiting for the client longer than the TTL are canceled (with their PI)."""
    moment = now or utcnow()
    with factory() as session:
        ids = list(
            session.scalars(
                select(ChargeAttempt.id)
                .where(
                    ChargeAttempt.status == S.REQUIRES_ACTION.value, ChargeAttempt.updated_at < moment - ttl
                )
                .limit(200)
            )
        )
        session.rollback()
    expired = 0
    for attempt_id in ids:
        try:
            status = cancel_charge(
                factory,
                gateway,
                attempt_id,
                actor="janitor",
                failure_code="authentication_expired",
                reason="The client did not authenticate in time.",
            )
        except Exception as exc:  # one charge must not stop the sweep
            log.warning("could not expire charge %s: %s", attempt_id, exc)
            continue
        expired += status == S.CANCELED.value
    return expired


def run_janitor(
    factory: sessionmaker[Session],
    gateway: StripePort,
    publish: Publisher,
    *,
    now: datetime | None = None,
) -> JanitorReport:
    """Everything the periodic sweep does, in one call (beat task and `offsession reconcile`)."""
    moment = now or utcnow()
    report = JanitorReport()
    reconcile_stale_attempts(factory, gateway, now=moment, report=report)
    report.expired_authentications = expire_authentications(
        factory, gateway, now=moment, ttl=retry_policy().authentication_ttl
    )
    report.refunds_settled.update(settle_stale_refunds(factory, gateway, now=moment))
    report.requeued = len(republish_stranded(factory, now=moment))
    with factory() as session:
        event_ids = unprocessed_event_ids(session, older_than=redrive_cutoff(moment))
        session.rollback()
    for event_id in event_ids:
        try:
            publish(outbox.TASK_PROCESS_WEBHOOK_EVENT, {"event_id": event_id}, None)
            report.webhook_events_redriven += 1
        except Exception as exc:  # broker down: the next sweep tries again
            log.warning("cannot re-drive webhook events: %s", exc)
            break
    report.outbox_published = outbox.relay_outbox(factory, publish, now=moment)
    return report


@dataclass
class RecoveryReport:
    stale: JanitorReport = field(default_factory=JanitorReport)
    republished: int = 0

    @property
    def anything(self) -> bool:
        return bool(self.stale.resolved or self.stale.still_unknown or self.republished)

    def summary(self) -> str:
        resolved = ", ".join(f"{n} {status}" for status, n in sorted(self.stale.resolved.items())) or "none"
        return (
            f"resolved: {resolved}; still unknown: {self.stale.still_unknown}; queued charges whose "
            f"message was lost, re-published: {self.republished}"
        )


def recover_charges(
    factory: sessionmaker[Session],
    gateway: StripePort,
    publish: Publisher,
    *,
    now: datetime | None = None,
) -> RecoveryReport:
    """The quick sweep (beat, every few seconds): charges whose worker stopped renewing its lease, those
    that became `unknown` lately, and queued charges whose message was lost. Idle, two queries."""
    moment = now or utcnow()
    report = RecoveryReport()
    reconcile_stale_attempts(
        factory, gateway, now=moment, report=report.stale, unknown_since=moment - RECENTLY_UNKNOWN
    )
    message_ids = republish_stranded(factory, now=moment)
    report.republished = len(message_ids)
    # At once rather than at the relay's next round; what fails to go out stays for the relay.
    outbox.publish_messages(factory, publish, message_ids, now=moment)
    return report
