"""Automatic retries of declined scheduled charges (dunning), as the policy in shared.domain.dunning says.

Only charges the schedule made are retried automatically: an admin who clicked sees the decline and
decides; a client paying on the spot is there. A hard decline or a needed authentication stops the
automatic charging of the invoice until the client changes the card.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from shared.domain.dunning import DeclineFacts, RetryDecision, RetryPolicy, decide, policy_from_env
from shared.domain.models import ChargeAttempt, DunningState, Invoice, utcnow
from shared.services import audit


def retry_policy() -> RetryPolicy:
    return policy_from_env()


def record_decline(
    session: Session,
    attempt: ChargeAttempt,
    *,
    now: datetime | None = None,
    policy: RetryPolicy | None = None,
) -> RetryDecision:
    """Update the invoice's dunning state after this attempt was declined; returns the decision."""
    moment = now or utcnow()
    facts = DeclineFacts(
        code=attempt.failure_code,
        decline_code=attempt.decline_code,
        advice_code=attempt.advice_code,
        network_advice_code=attempt.network_advice_code,
    )
    state = session.get(DunningState, attempt.invoice_id, with_for_update=True)
    if state is None and attempt.source != "schedule":
        # A soft decline of a charge someone asked for by hand says nothing against the schedule's own
        # attempt on the due date: only a hard decline or a needed authentication stops that one.
        preview = decide(
            facts,
            failures_so_far=1,
            first_failure_at=moment,
            policy=policy or retry_policy(),
            failed_at=moment,
        )
        if preview.decline_class.value == "soft":
            return preview
    if state is None:
        state = DunningState(
            invoice_id=attempt.invoice_id, first_failure_at=moment, failures=0, decline_class="soft"
        )
        session.add(state)
    if state.last_attempt_id != attempt.id:  # the same decline reported twice counts once
        state.failures += 1
    decision = decide(
        facts,
        failures_so_far=state.failures,
        first_failure_at=state.first_failure_at,
        policy=policy or retry_policy(),
        failed_at=moment,
    )
    state.decline_class = decision.decline_class.value
    state.last_attempt_id = attempt.id
    state.next_attempt_at = decision.retry_at if attempt.source == "schedule" else None
    state.attempts_left = decision.attempts_left if attempt.source == "schedule" else 0
    state.reason = decision.reason
    state.updated_at = moment
    session.flush()
    audit.record(
        session,
        "dunning",
        "dunning.decided",
        invoice_id=attempt.invoice_id,
        charge_attempt_id=attempt.id,
        decline_class=decision.decline_class.value,
        retry_at=state.next_attempt_at.isoformat() if state.next_attempt_at else None,
        attempts_left=state.attempts_left,
    )
    return decision


# Built once, the id bound at each call: it runs for every charge that succeeds.
_CLEAR_FOR_INVOICE = delete(DunningState).where(DunningState.invoice_id == bindparam("invoice_id"))


def clear_for_invoice(session: Session, invoice_id: int) -> None:
    """Paid, or charged by other means: nothing left to retry."""
    session.execute(_CLEAR_FOR_INVOICE, {"invoice_id": invoice_id})


def clear_for_client(session: Session, client_id: int, *, actor: str) -> int:
    """The client changed the card: every invoice of theirs may be charged again."""
    ids = list(
        session.scalars(
            select(DunningState.invoice_id)
            .join(Invoice, Invoice.id == DunningState.invoice_id)
            .where(Invoice.client_id == client_id)
        )
    )
    if ids:
        session.execute(delete(DunningState).where(DunningState.invoice_id.in_(ids)))
        audit.record(session, actor, "dunning.reset_by_card_change", invoices=ids)
    return len(ids)


def retries_due(session: Session, now: datetime, limit: int = 500) -> list[int]:
    """Invoices whose next automatic attempt is due."""
    return list(
        session.scalars(
            select(DunningState.invoice_id)
            .where(DunningState.next_attempt_at.is_not(None), DunningState.next_attempt_at <= now)
            .order_by(DunningState.next_attempt_at)
            .limit(limit)
        )
    )


def blocks_automatic_charge(state: DunningState | None, now: datetime) -> str | None:
    """Why the schedule must leave this invoice alone now, in words; None when it may charge."""
    if state is None:
        return None
    if state.next_attempt_at is None:
        if state.decline_class == "soft":
            return "Automatic retries are used up; waiting for the client to change the card."
        return "Declined for good; waiting for the client to update the card."
    if state.next_attempt_at > now:
        return f"Next automatic retry on {state.next_attempt_at:%Y-%m-%d %H:%M} UTC."
    return None
