"""Refunds of card charges: requested here (the invoice page, the API) or made in Stripe's dashboard,
each recorded once, the ledger following Stripe's word.

A refund asked here is written (pending) with its idempotency key `offsession:refund:<refund id>` and
its outbox message in one transaction (request_refund); the worker makes the call under that key
(run_refund); a worker that died in between is settled by the janitor (settle_stale_refunds), which
replays the same request under the same key, never a new one. The database lets one refund per charge be
on its way to Stripe at a time, and the invoice row is locked while the amount is checked, so two clicks
make one refund. Stripe's refund events (shared.services.webhooks) land through apply_stripe_refund: a
refund of ours is found by its id or metadata, one made elsewhere is recorded as a new row.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.binding import Mismatch, MismatchReason
from shared.domain.models import ChargeAttempt, Dispute, Invoice, Payment, Refund, utcnow
from shared.domain.money import format_money
from shared.domain.payments import PermanentStripeError, RefundView, TransientStripeError, refund_view
from shared.domain.refunds import (
    FINAL,
    OPEN_DISPUTE_STATUSES,
    REFUND_REASONS,
    RefundRefused,
    RefundStatus,
    check_refund_amount,
    refund_idempotency_key,
    refund_move,
    refund_status,
    refundable,
)
from shared.domain.states import AttemptStatus
from shared.services import audit, outbox
from shared.services.ports import RateBudgetTimeout, RateBudgetUnavailable, StripePort, UnitOfWork

log = logging.getLogger(__name__)

TASK_RUN_REFUND = "offsession.run_refund"
TASK_NOTIFY_REFUND = "offsession.notify_refund"
# The worker's tries of the create call on no answer (the same key each time) before the janitor has it.
MAX_TRIES = 5
RETRY_DELAY = timedelta(seconds=5)
# A pending refund nobody touched for this long is the janitor's: its worker died, or Stripe's word was
# lost. Stripe keeps a key at least 24 h: the create is replayed well inside that, listed after.
STALE_AFTER = timedelta(seconds=60)
KEY_REPLAY_WINDOW = timedelta(hours=23)


# apply_refund_view's account when the caller asked Stripe itself, under the refund's own account (the
# worker, the janitor); a webhook passes the account its event came from, None for the platform.
ITS_OWN = object()


_LOCK_INVOICE = (
    select(Invoice.id).where(Invoice.id == bindparam("invoice_id")).with_for_update(key_share=True)
)
IN_PROGRESS = "A refund of this charge is on its way to Stripe already."


class RefundNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ChargeRefunds:
    """A card charge as the refund form needs it: what was paid, what remains refundable, its refunds."""

    attempt: ChargeAttempt
    paid: int
    remaining: int
    refunds: list[Refund]
    open_dispute: Dispute | None


def charge_refunds(session: Session, attempt: ChargeAttempt) -> ChargeRefunds | None:
    """The charge's refund figures, or None when it is not a succeeded card payment of the ledger."""
    if attempt.status != AttemptStatus.SUCCEEDED.value or attempt.payment_intent_id is None:
        return None
    payment = session.scalar(
        select(Payment).where(Payment.stripe_payment_intent_id == attempt.payment_intent_id)
    )
    if payment is None:
        return None
    refunds = list(
        session.scalars(
            select(Refund).where(Refund.charge_attempt_id == attempt.id).order_by(Refund.created_at)
        )
    )
    dispute = session.scalar(
        select(Dispute).where(
            Dispute.charge_attempt_id == attempt.id, Dispute.status.in_(OPEN_DISPUTE_STATUSES)
        )
    )
    remaining = refundable(payment.amount, [(r.status, r.amount) for r in refunds])
    return ChargeRefunds(attempt, payment.amount, remaining, refunds, dispute)


def request_refund(
    uow: UnitOfWork,
    attempt_id: str,
    *,
    requested_by: str,
    amount: int | None = None,
    reason: str | None = None,
) -> Refund:
    """Open a refund of a succeeded card charge: all that remains refundable (amount None) or a part.

    Raises RefundNotFound, or RefundRefused (the charge is not refundable, disputed, the amount is more
    than remains, another refund of it is on its way to Stripe)."""
    session = uow.session
    attempt = session.get(ChargeAttempt, attempt_id)
    if attempt is None:
        raise RefundNotFound(attempt_id)
    # Concurrent requests for one invoice queue up here (PostgreSQL; SQLite serialises writers anyway):
    # the second sees the first's refund holding its amount. NO KEY UPDATE, as a charge request's: rows
    # that reference the invoice (a webhook's ledger entry, under its attempt's lock) do not wait, so
    # the two cannot deadlock on the attempt this refund's row references.
    session.execute(_LOCK_INVOICE, {"invoice_id": attempt.invoice_id})
    if reason is not None and reason not in REFUND_REASONS:
        raise RefundRefused("invalid_reason", f"reason must be one of {', '.join(REFUND_REASONS)}.")
    figures = charge_refunds(session, attempt)
    if figures is None:
        raise RefundRefused("not_refundable", "Only a card charge that succeeded can be refunded.")
    if figures.open_dispute is not None:
        raise RefundRefused(
            "charge_disputed",
            "The client's bank disputes this charge: it cannot be refunded while the dispute is open.",
        )
    if any(r.status == RefundStatus.PENDING.value and r.stripe_refund_id is None for r in figures.refunds):
        raise RefundRefused("refund_in_progress", IN_PROGRESS)
    value = check_refund_amount(amount, figures.remaining, attempt.currency)
    refund_id = str(uuid.uuid4())
    refund = Refund(
        id=refund_id,
        invoice_id=attempt.invoice_id,
        charge_attempt_id=attempt.id,
        amount=value,
        currency=attempt.currency,
        reason=reason,
        source="admin",
        requested_by=requested_by,
        status=RefundStatus.PENDING.value,
        idempotency_key=refund_idempotency_key(refund_id),
        payment_intent_id=attempt.payment_intent_id,
        stripe_account_id=attempt.stripe_account_id,
    )
    session.add(refund)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:  # the partial unique index: another refund of this charge meanwhile
        raise RefundRefused("refund_in_progress", IN_PROGRESS) from exc
    outbox.enqueue_after_commit(uow, TASK_RUN_REFUND, {"refund_id": refund_id})
    audit.record(
        session,
        requested_by,
        "refund.requested",
        invoice_id=attempt.invoice_id,
        charge_attempt_id=attempt.id,
        refund_id=refund_id,
        amount=value,
        currency=attempt.currency,
        reason=reason,
    )
    stop_auto_charge_after_refund(session, refund, actor=requested_by)
    return refund


AUTO_CHARGE_OFF_AFTER_REFUND = (
    "Auto-charge is now off for this invoice so the refunded amount is not charged again; "
    "turn it back on to collect it."
)


def stop_auto_charge_after_refund(session: Session, refund: Refund, *, actor: str) -> bool:
    """A refund raises the invoice's amount due by what the business chose to give back: turn its
    auto-charge off (the batch and the dunning retries would charge the card for it again), in the
    refund's transaction, audited. A manual charge stays possible. Returns whether it was on.
    The caller holds the invoice row locked (_LOCK_INVOICE)."""
    invoice = session.get_one(Invoice, refund.invoice_id, populate_existing=True)  # as of the lock
    if not invoice.auto_charge:
        return False
    invoice.auto_charge = False
    audit.record(
        session,
        actor,
        "invoice.auto_charge_changed",
        invoice_id=invoice.id,
        charge_attempt_id=refund.charge_attempt_id,
        **{"from": True, "to": False},
        because=f"refund {refund.stripe_refund_id or refund.id}",
    )
    return True


def refund_metadata(refund: Refund) -> dict[str, str]:
    return {
        "refund_id": refund.id,
        "invoice_id": str(refund.invoice_id),
        "charge_attempt_id": refund.charge_attempt_id,
    }


def _create_at_stripe(gateway: StripePort, refund: Refund) -> RefundView:
    """The create call, byte-identical on every replay: everything it sends is stored on the row."""
    assert refund.idempotency_key is not None
    return gateway.create_refund(
        refund.payment_intent_id,
        idempotency_key=refund.idempotency_key,
        amount=refund.amount,
        reason=refund.reason,
        metadata=refund_metadata(refund),
        stripe_account=refund.stripe_account_id,
    )


def run_refund(factory: sessionmaker[Session], gateway: StripePort, refund_id: str) -> str:
    """The worker's half: ask Stripe to make the refund, under its key, and apply the answer. Returns
    what happened, in words. A message delivered twice asks Stripe twice under one key: one refund."""
    with factory() as session, session.begin():
        refund = session.get(Refund, refund_id, with_for_update=True)
        if refund is None:
            return "no such refund"
        if refund.status != RefundStatus.PENDING.value or refund.stripe_refund_id is not None:
            return f"refund {refund_id}: {refund.status} already"
        refund.tries += 1
        tries = refund.tries
        session.flush()
        session.expunge(refund)
    try:
        view = _create_at_stripe(gateway, refund)
    except (TransientStripeError, RateBudgetTimeout, RateBudgetUnavailable) as exc:
        if tries >= MAX_TRIES:
            log.warning(
                "refund %s: no answer from Stripe after %s tries; the janitor has it", refund_id, tries
            )
            return f"refund {refund_id}: no answer, left to the janitor"
        with factory() as session, session.begin():
            outbox.enqueue(
                session,
                TASK_RUN_REFUND,
                {"refund_id": refund_id},
                available_at=utcnow() + RETRY_DELAY * tries,
            )
        return f"refund {refund_id}: no answer ({exc}), retried later under the same key"
    except PermanentStripeError as exc:
        with factory() as session, session.begin():
            locked = session.get(Refund, refund_id, with_for_update=True)
            assert locked is not None
            if locked.status == RefundStatus.PENDING.value and locked.stripe_refund_id is None:
                _refuse(session, locked, str(exc), actor="stripe")
            return f"refund {refund_id}: refused by Stripe: {exc}"
    with factory() as session, session.begin():
        locked = session.get(Refund, refund_id, with_for_update=True)
        assert locked is not None
        apply_refund_view(session, locked, view, actor="worker")
        return f"refund {refund_id}: {locked.status}"


def _refuse(session: Session, refund: Refund, message: str, *, actor: str) -> None:
    refund.status = RefundStatus.FAILED.value
    refund.failure_reason = message[:2000]
    audit.record(
        session,
        actor,
        "refund.failed",
        invoice_id=refund.invoice_id,
        charge_attempt_id=refund.charge_attempt_id,
        refund_id=refund.id,
        reason=refund.failure_reason,
    )


def _check_binding(refund: Refund, view: RefundView, account: str | None) -> None:
    """Stripe's refund is this row's: its id once known, its PaymentIntent, account, currency, amount."""
    if refund.stripe_refund_id is not None and refund.stripe_refund_id != view.id:
        raise Mismatch(
            MismatchReason.REFUND,
            f"Refund {view.id} is not refund {refund.id}'s ({refund.stripe_refund_id}).",
        )
    problems = []
    if view.payment_intent_id != refund.payment_intent_id:
        problems.append(
            (
                MismatchReason.PAYMENT_INTENT,
                f"refunds {view.payment_intent_id}, not {refund.payment_intent_id}",
            )
        )
    if (account or None) != (refund.stripe_account_id or None):
        problems.append((MismatchReason.ACCOUNT, f"comes from account {account or 'platform'}"))
    if view.currency.lower() != refund.currency:
        problems.append((MismatchReason.CURRENCY, f"is in {view.currency.upper() or 'no currency'}"))
    if view.amount != refund.amount:
        problems.append((MismatchReason.AMOUNT, f"is for {view.amount}, not {refund.amount}"))
    if problems:
        reason, words = problems[0]
        raise Mismatch(reason, f"Refund {view.id} {words} (refund {refund.id}).")


def apply_refund_view(
    session: Session, refund: Refund, view: RefundView, *, actor: str, account: str | object | None = ITS_OWN
) -> bool:
    """Apply what Stripe says of this refund (locked by the caller), monotonically: the ledger's negative
    entry when it succeeds, the entry that gives it back when a succeeded refund then fails. Returns
    whether the ledger changed. Raises Mismatch when `view` is not this refund's."""
    bound_to = refund.stripe_account_id if account is ITS_OWN else cast(str | None, account)
    _check_binding(refund, view, bound_to)
    if refund.stripe_refund_id is None:
        refund.stripe_refund_id = view.id
    reported = refund_status(view.status)
    changed = False
    if reported is not None:
        move = refund_move(refund.status, reported)
        if move is not None:
            refund.status = move.value
            if move in FINAL:
                refund.failure_reason = view.failure_reason or refund.failure_reason
            audit.record(
                session,
                actor,
                f"refund.{move.value}",
                invoice_id=refund.invoice_id,
                charge_attempt_id=refund.charge_attempt_id,
                refund_id=refund.id,
                stripe_refund_id=view.id,
                amount=refund.amount,
            )
    status = RefundStatus(refund.status)
    if status is RefundStatus.SUCCEEDED or (status in FINAL and refund.ledger_payment_id is not None):
        changed |= _record_taken_back(session, refund)
    if status in FINAL and refund.ledger_payment_id is not None and refund.reversal_payment_id is None:
        reversal = Payment(
            invoice_id=refund.invoice_id,
            amount=refund.amount,
            method="card",
            received_at=utcnow(),
            reference=f"Refund {refund.stripe_refund_id} {refund.status}: given back",
            charge_attempt_id=refund.charge_attempt_id,
            recorded_by="stripe",
        )
        session.add(reversal)
        session.flush()
        refund.reversal_payment_id = reversal.id
        changed = True
    session.flush()
    return changed


def _record_taken_back(session: Session, refund: Refund) -> bool:
    """The refund's negative ledger entry, once (Payment.stripe_refund_id is unique): one a dashboard
    refund left from before refunds had rows of their own is adopted, not written again."""
    if refund.ledger_payment_id is not None:
        return False
    existing = session.scalar(select(Payment).where(Payment.stripe_refund_id == refund.stripe_refund_id))
    if existing is not None:
        refund.ledger_payment_id = existing.id
        return False
    entry = Payment(
        invoice_id=refund.invoice_id,
        amount=-refund.amount,
        method="card",
        received_at=utcnow(),
        reference=f"Refund {refund.stripe_refund_id} of {refund.payment_intent_id}",
        charge_attempt_id=refund.charge_attempt_id,
        stripe_refund_id=refund.stripe_refund_id,
        recorded_by="stripe",
    )
    session.add(entry)
    session.flush()
    refund.ledger_payment_id = entry.id
    audit.record(
        session,
        "stripe",
        "payment.refunded",
        invoice_id=refund.invoice_id,
        charge_attempt_id=refund.charge_attempt_id,
        refund_id=refund.stripe_refund_id,
        amount=refund.amount,
    )
    outbox.enqueue(session, TASK_NOTIFY_REFUND, {"refund_id": refund.id})
    return True


def apply_stripe_refund(
    session: Session, obj: Mapping[str, Any], payment_intent_id: str, actor: str, account: str | None
) -> bool:
    """A refund Stripe reports (an event): ours, found by id or metadata.refund_id, or one made elsewhere
    (the dashboard), recorded as a new row once it refunds a payment of ours on the same account, in its
    currency, and no more than remains. Returns whether the ledger changed. Raises Mismatch."""
    view = refund_view({**obj, "payment_intent": obj.get("payment_intent") or payment_intent_id})
    refund = session.scalar(select(Refund).where(Refund.stripe_refund_id == view.id).with_for_update())
    if refund is None and view.metadata.get("refund_id"):
        refund = session.scalar(
            select(Refund).where(Refund.id == view.metadata["refund_id"]).with_for_update()
        )
    if refund is None:
        refund = _refund_made_elsewhere(session, view, account)
        if refund is None:
            return False
    return apply_refund_view(session, refund, view, actor=actor, account=account)


def _refund_made_elsewhere(session: Session, view: RefundView, account: str | None) -> Refund | None:
    original = session.scalar(
        select(Payment).where(Payment.stripe_payment_intent_id == view.payment_intent_id)
    )
    if original is None:
        return None
    attempt = session.get(ChargeAttempt, original.charge_attempt_id) if original.charge_attempt_id else None
    if attempt is None:
        raise Mismatch(
            MismatchReason.REFUND,
            f"Refund {view.id}: payment {view.payment_intent_id} is not a charge of ours.",
        )
    session.execute(_LOCK_INVOICE, {"invoice_id": attempt.invoice_id})
    if (account or None) != (attempt.stripe_account_id or None):
        raise Mismatch(
            MismatchReason.ACCOUNT,
            f"Refund {view.id} comes from account {account or 'platform'}; charge {attempt.id} was made on "
            f"{attempt.stripe_account_id or 'the platform account'}.",
            attempt=attempt,
        )
    if view.currency.lower() != attempt.currency:
        raise Mismatch(
            MismatchReason.CURRENCY,
            f"Refund {view.id} is in {view.currency.upper() or 'no currency'}; charge {attempt.id} is in "
            f"{attempt.currency.upper()}.",
            attempt=attempt,
        )
    reported = refund_status(view.status)
    figures = charge_refunds(session, attempt)
    remaining = figures.remaining if figures is not None else 0
    if reported is None or view.amount <= 0 or (reported not in FINAL and view.amount > remaining):
        raise Mismatch(
            MismatchReason.AMOUNT,
            f"Refund {view.id} of {view.amount!r} would take back more than the "
            f"{format_money(remaining, attempt.currency)} left of payment {view.payment_intent_id}.",
            attempt=attempt,
        )
    refund = Refund(
        invoice_id=attempt.invoice_id,
        charge_attempt_id=attempt.id,
        amount=view.amount,
        currency=attempt.currency,
        source="stripe",
        requested_by="stripe",
        # Written as Stripe says it is now; apply_refund_view does the rest.
        status=RefundStatus.PENDING.value,
        stripe_refund_id=view.id,
        payment_intent_id=view.payment_intent_id or "",
        stripe_account_id=attempt.stripe_account_id,
    )
    session.add(refund)
    session.flush()
    if reported not in (RefundStatus.FAILED, RefundStatus.CANCELED):
        stop_auto_charge_after_refund(session, refund, actor="stripe")
    return refund


def settle_stale_refunds(
    factory: sessionmaker[Session], gateway: StripePort, *, now: datetime | None = None
) -> dict[str, int]:
    """The janitor's part: every refund left pending for STALE_AFTER is settled by asking Stripe: by its
    id when known; else by replaying the create under its own key and parameters (one refund at Stripe
    whatever happened before); past the key's lifetime, by its metadata. Returns counts by outcome."""
    moment = now or utcnow()
    counts: dict[str, int] = {}
    with factory() as session:
        ids = list(
            session.scalars(
                select(Refund.id).where(
                    Refund.status.in_((RefundStatus.PENDING.value, RefundStatus.REQUIRES_ACTION.value)),
                    Refund.updated_at < moment - STALE_AFTER,
                )
            )
        )
    for refund_id in ids:
        try:
            outcome = _settle_one(factory, gateway, refund_id, moment)
        except (TransientStripeError, RateBudgetTimeout, RateBudgetUnavailable) as exc:
            log.warning("janitor: refund %s not settled now: %s", refund_id, exc)
            outcome = "unanswered"
        except Mismatch as mismatch:
            log.warning("janitor: refund %s: %s", refund_id, mismatch.message)
            outcome = "mismatch"
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _settle_one(factory: sessionmaker[Session], gateway: StripePort, refund_id: str, now: datetime) -> str:
    with factory() as session:
        refund = session.get(Refund, refund_id)
        if refund is None:
            return "gone"
        session.expunge(refund)
    view: RefundView | None
    if refund.stripe_refund_id is not None:
        view = gateway.retrieve_refund(refund.stripe_refund_id, stripe_account=refund.stripe_account_id)
    elif refund.idempotency_key is not None and now - refund.created_at < KEY_REPLAY_WINDOW:
        try:
            view = _create_at_stripe(gateway, refund)
        except PermanentStripeError as exc:
            with factory() as session, session.begin():
                locked = session.get(Refund, refund_id, with_for_update=True)
                if (
                    locked is not None
                    and locked.stripe_refund_id is None
                    and locked.status == RefundStatus.PENDING.value
                ):
                    _refuse(session, locked, str(exc), actor="janitor")
            return "refused"
    else:
        found = gateway.find_refunds(
            refund.payment_intent_id, "refund_id", refund.id, stripe_account=refund.stripe_account_id
        )
        view = found[0] if found else None
    with factory() as session, session.begin():
        locked = session.get(Refund, refund_id, with_for_update=True)
        if locked is None:
            return "gone"
        if view is None:
            _refuse(session, locked, "Never reached Stripe (no refund of it there).", actor="janitor")
            return "never_made"
        apply_refund_view(session, locked, view, actor="janitor")
        # Touched even when Stripe says it is still pending: looked at again after STALE_AFTER, not at once.
        locked.updated_at = utcnow()
        return locked.status
