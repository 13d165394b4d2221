"""Disputes of card payments: Stripe's charge.dispute.* events applied to a Dispute row, the ledger
following the funds Stripe withdraws and reinstates, the admins told by email.

The disputed amount leaves the ledger when Stripe withdraws it (charge.dispute.funds_withdrawn, or a
balance transaction of the dispute taking money) and comes back when the dispute is won
(charge.dispute.funds_reinstated): each once, whatever order the events come in, the Dispute row holding
which entries it made. Status, reason and evidence due date follow the newest event (Stripe's
`created`); an older one changes them no more. Stripe's Dispute object: docs.stripe.com/api/disputes/object.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Config
from shared.domain.binding import Mismatch, MismatchReason
from shared.domain.emails import Notification, dispute_email
from shared.domain.models import AdminUser, ChargeAttempt, Dispute, NotificationLog, Payment, utcnow
from shared.domain.refunds import DISPUTE_REASON_WORDS, DISPUTE_STATUSES, OPEN_DISPUTE_STATUSES
from shared.services import audit, outbox
from shared.services.notifications import claim_notification, send_claimed
from shared.services.ports import Mailer

DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    }
)
TASK_NOTIFY_DISPUTE = "offsession.notify_dispute"


def _id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("id")
    return value if isinstance(value, str) else None


def apply_dispute_event(
    session: Session,
    event_type: str,
    event: Mapping[str, Any],
    obj: Mapping[str, Any],
    *,
    actor: str,
    account: str | None,
) -> str:
    """Apply one charge.dispute.* event; returns what happened, in words. Raises Mismatch when the
    dispute is of a charge of ours but not on its account, in its currency, or for more than was paid."""
    dispute_id = str(obj.get("id") or "")
    pi_id = _id(obj.get("payment_intent"))
    if not dispute_id or pi_id is None:
        return f"{event_type}: no dispute or PaymentIntent in it"
    attempt = session.scalar(select(ChargeAttempt).where(ChargeAttempt.payment_intent_id == pi_id))
    if attempt is None:
        return f"{event_type}: {pi_id} is not a charge of ours"
    paid = session.scalar(select(Payment.amount).where(Payment.stripe_payment_intent_id == pi_id))
    amount = obj.get("amount")
    currency = str(obj.get("currency") or "").lower()
    status = str(obj.get("status") or "")
    if (account or None) != (attempt.stripe_account_id or None):
        raise Mismatch(
            MismatchReason.ACCOUNT,
            f"Dispute {dispute_id} comes from account {account or 'platform'}; charge {attempt.id} was made "
            f"on {attempt.stripe_account_id or 'the platform account'}.",
            attempt=attempt,
        )
    if currency != attempt.currency:
        raise Mismatch(
            MismatchReason.CURRENCY,
            f"Dispute {dispute_id} is in {currency.upper() or 'no currency'}; charge {attempt.id} is in "
            f"{attempt.currency.upper()}.",
            attempt=attempt,
        )
    if (
        isinstance(amount, bool)
        or not isinstance(amount, int)
        or amount < 0
        or paid is None
        or amount > paid
        or status not in DISPUTE_STATUSES
    ):
        raise Mismatch(
            MismatchReason.AMOUNT,
            f"Dispute {dispute_id} of {amount!r} ({status or 'no status'}) is not of the {paid} "
            f"{attempt.currency.upper()} paid by charge {attempt.id}.",
            attempt=attempt,
        )
    created = int(event.get("created") or 0)
    dispute = session.scalar(select(Dispute).where(Dispute.stripe_dispute_id == dispute_id).with_for_update())
    opened = dispute is None
    due = (obj.get("evidence_details") or {}).get("due_by")
    due_by = datetime.fromtimestamp(due, UTC) if isinstance(due, int) else None
    if dispute is None:
        dispute = Dispute(
            stripe_dispute_id=dispute_id,
            invoice_id=attempt.invoice_id,
            charge_attempt_id=attempt.id,
            amount=amount,
            currency=currency,
            reason=str(obj.get("reason") or "general")[:64],
            status=status,
            evidence_due_by=due_by,
            stripe_updated=created,
        )
        session.add(dispute)
        session.flush()
        audit.record(
            session,
            actor,
            "dispute.opened",
            invoice_id=attempt.invoice_id,
            charge_attempt_id=attempt.id,
            dispute_id=dispute_id,
            amount=amount,
            reason=dispute.reason,
        )
        outbox.enqueue(session, TASK_NOTIFY_DISPUTE, {"dispute_id": dispute.id})
    elif created >= dispute.stripe_updated:
        if dispute.status != status:
            audit.record(
                session,
                actor,
                "dispute.status",
                invoice_id=dispute.invoice_id,
                charge_attempt_id=dispute.charge_attempt_id,
                dispute_id=dispute_id,
                status=status,
                previous=dispute.status,
            )
        dispute.status = status
        dispute.amount = amount
        dispute.reason = str(obj.get("reason") or dispute.reason)[:64]
        dispute.evidence_due_by = due_by or dispute.evidence_due_by
        dispute.stripe_updated = created
    moved = _follow_funds(session, dispute, event_type, obj, actor=actor)
    words = "opened" if opened else dispute.status
    return f"{event_type}: dispute {dispute_id} {words}" + (f", {moved}" if moved else "")


def _follow_funds(
    session: Session, dispute: Dispute, event_type: str, obj: Mapping[str, Any], *, actor: str
) -> str:
    """The ledger entries the dispute's funds movements call for, each once."""
    movements = [t.get("amount") for t in obj.get("balance_transactions") or [] if isinstance(t, Mapping)]
    reinstated = event_type == "charge.dispute.funds_reinstated" or any(
        isinstance(a, int) and a > 0 for a in movements
    )
    # A reinstatement implies the withdrawal before it, should that event be late or lost.
    withdrawn = (
        reinstated
        or event_type == "charge.dispute.funds_withdrawn"
        or any(isinstance(a, int) and a < 0 for a in movements)
    )
    done = []
    if withdrawn and dispute.withdrawal_payment_id is None and dispute.amount > 0:
        dispute.withdrawal_payment_id = _entry(session, dispute, -dispute.amount, "funds withdrawn", actor)
        done.append("funds withdrawn")
    if reinstated and dispute.reinstatement_payment_id is None and dispute.withdrawal_payment_id is not None:
        withdrawn_amount = -session.get_one(Payment, dispute.withdrawal_payment_id).amount
        dispute.reinstatement_payment_id = _entry(
            session, dispute, withdrawn_amount, "funds reinstated", actor
        )
        done.append("funds reinstated")
    return ", ".join(done)


def _entry(session: Session, dispute: Dispute, amount: int, what: str, actor: str) -> int:
    entry = Payment(
        invoice_id=dispute.invoice_id,
        amount=amount,
        method="card",
        received_at=utcnow(),
        reference=f"Dispute {dispute.stripe_dispute_id}: {what}",
        charge_attempt_id=dispute.charge_attempt_id,
        recorded_by="stripe",
    )
    session.add(entry)
    session.flush()
    audit.record(
        session,
        actor,
        f"dispute.{what.replace(' ', '_')}",
        invoice_id=dispute.invoice_id,
        charge_attempt_id=dispute.charge_attempt_id,
        dispute_id=dispute.stripe_dispute_id,
        amount=amount,
    )
    return entry.id


def reason_words(reason: str) -> str:
    return DISPUTE_REASON_WORDS.get(reason, reason.replace("_", " "))


def open_disputes(session: Session, *, limit: int = 100) -> list[Dispute]:
    """Open disputes, the soonest evidence due first (the Charges page)."""
    return list(
        session.scalars(
            select(Dispute)
            .where(Dispute.status.in_(OPEN_DISPUTE_STATUSES))
            .order_by(Dispute.evidence_due_by.is_(None), Dispute.evidence_due_by, Dispute.id)
            .limit(limit)
        )
    )


def count_open_disputes(session: Session) -> int:
    return int(session.scalar(select(func.count()).where(Dispute.status.in_(OPEN_DISPUTE_STATUSES))) or 0)


def deliver_dispute_notification(
    factory: sessionmaker[Session], config: Config, mailer: Mailer, dispute_id: int
) -> int:
    """Email every admin about a new dispute, once each; returns how many went out now."""
    sent = 0
    with factory() as session:
        dispute = session.get(Dispute, dispute_id)
        if dispute is None:
            return 0
        admins = list(session.scalars(select(AdminUser.email).order_by(AdminUser.id)))
        invoice = dispute.invoice
        content = dispute_email(
            invoice_number=invoice.number,
            client_name=invoice.client.name,
            amount=dispute.amount,
            currency=dispute.currency,
            reason=reason_words(dispute.reason),
            status=dispute.status,
            evidence_due_by=dispute.evidence_due_by,
            invoice_url=f"{config.public_base_url.rstrip('/')}/admin/invoices/{invoice.id}",
        )
        subject_id = f"{dispute.stripe_dispute_id}:{{}}"
    for email in admins:
        notification = Notification("dispute_opened", subject_id.format(email), email, content)
        with factory() as session, session.begin():
            claim = NotificationLog(
                dedupe_key=notification.dedupe_key[:200],
                kind="dispute_opened",
                recipient=email,
                subject=content.subject[:300],
                sent_at=utcnow(),
            )
            if not claim_notification(session, claim):
                continue
        send_claimed(notification, mailer)
        sent += 1
    return sent
