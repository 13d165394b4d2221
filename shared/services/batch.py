"""The scheduled fan-out: charge every due invoice set to auto-charge, page by page, once per slot.

Selection walks the unpaid due invoices by id in pages (never the whole table in memory); each page's
attempts and their outbox messages are committed together, then published. A slot (the minute the
schedule fired) is claimed by a unique BatchRun row, so a second beat firing the same slot charges nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from shared.domain.eligibility import BlockerCode, charge_blockers
from shared.domain.ledger import balance
from shared.domain.models import (
    BatchRun,
    ChargeAttempt,
    Client,
    Dispute,
    DunningState,
    Invoice,
    Payment,
    utcnow,
)
from shared.domain.refunds import OPEN_DISPUTE_STATUSES
from shared.domain.states import IN_FLIGHT
from shared.services import audit, charge_requests
from shared.services.charge_batches import CHARGES_PER_MESSAGE, enqueue_grouped
from shared.services.charge_requests import NotChargeable, load_invoice_for_charge
from shared.services.dunning import blocks_automatic_charge, retries_due
from shared.services.ports import UnitOfWork, UnitOfWorkFactory
from shared.services.settings import get_settings

log = logging.getLogger(__name__)
# Small pages: charging starts while the rest is still being queued, and memory stays flat.
PAGE_SIZE = 50
# A due retry that cannot open for a passing reason is looked at again after this.
RETRY_BLOCKED_DELAY = timedelta(hours=1)
FINAL_BLOCKERS = frozenset({BlockerCode.NOTHING_DUE, BlockerCode.INVOICE_VOID})
SKIP_WAITING_FOR_RETRY = "dunning"
IN_FLIGHT_STATUSES = sorted(s.value for s in IN_FLIGHT)


@dataclass
class BatchReport:
    batch_run_id: int | None
    selected: int = 0
    queued: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def already_ran(self) -> bool:
        return self.batch_run_id is None


def slot_for(moment: datetime) -> str:
    """Two beats firing for the same schedule time land in the same minute."""
    return "schedule:" + moment.replace(second=0, microsecond=0).isoformat()


def due_invoice_ids(session: Session, today: date, after_id: int, limit: int) -> list[int]:
    """The selection: ids of the next page (by id, after `after_id`) of invoices the batch charges:
    auto-charge, not void, due today or before and not fully paid.

    Paid invoices are left out in SQL: over a large book most invoices due by now are paid, and loading
    them to drop them in Python made the walk read every past invoice. The ledger sums come from one
    ordered pass over the payments of the same id range (a merge join on the invoice_id index), not
    one lookup per invoice. An invoice with an open dispute is left out too (the card may not be
    charged again for the withdrawn funds): a NOT EXISTS probing the dispute.invoice_id index. Only
    ids: the ORM rows charging needs are loaded by load_for_charging, a page at a time (building 1,000
    ORM invoices costs several times the query).
    """
    paid = (
        select(Payment.invoice_id, func.sum(Payment.amount).label("amount"))
        .where(Payment.invoice_id > after_id)
        .group_by(Payment.invoice_id)
        .subquery()
    )
    # Off the partial index ix_invoice_chargeable_id alone (plain boolean tests, so the planner sees
    # they imply its predicate).
    return list(
        session.scalars(
            select(Invoice.id)
            .outerjoin(paid, paid.c.invoice_id == Invoice.id)
            .where(
                Invoice.auto_charge,
                ~Invoice.is_void,
                Invoice.due_date <= today,
                Invoice.id > after_id,
                func.coalesce(paid.c.amount, 0) < Invoice.total,
                ~exists().where(
                    Dispute.invoice_id == Invoice.id, Dispute.status.in_(OPEN_DISPUTE_STATUSES)
                ),
            )
            .order_by(Invoice.id)
            .limit(limit)
        )
    )


def load_for_charging(session: Session, invoice_ids: list[int]) -> list[Invoice]:
    """The invoices of `invoice_ids` with what charging them reads: client and cards, payments, and of
    the attempts only those in flight (they are all the charge rules look at; the history of a page
    can be thousands)."""
    if not invoice_ids:
        return []
    return list(
        session.scalars(
            select(Invoice)
            .where(Invoice.id.in_(invoice_ids))
            .order_by(Invoice.id)
            .options(
                selectinload(Invoice.client).selectinload(Client.cards),
                selectinload(Invoice.payments),
                selectinload(Invoice.charge_attempts.and_(ChargeAttempt.status.in_(IN_FLIGHT_STATUSES))),
                selectinload(Invoice.disputes.and_(Dispute.status.in_(OPEN_DISPUTE_STATUSES))),
            )
        )
    )


def due_page(session: Session, today: date, after_id: int, limit: int) -> list[Invoice]:
    """The next page of due invoices, loaded for charging."""
    return load_for_charging(session, due_invoice_ids(session, today, after_id, limit))


def run_batch(
    units: UnitOfWorkFactory,
    *,
    slot: str,
    trigger: str,
    today: date,
    now: datetime | None = None,
    page_size: int = PAGE_SIZE,
    per_message: int = CHARGES_PER_MESSAGE,
) -> BatchReport:
    moment = now or utcnow()
    try:
        with units() as uow:
            run = BatchRun(slot=slot, trigger=trigger, due_on=today, started_at=moment)
            uow.session.add(run)
            uow.session.flush()
            run_id = run.id
    except IntegrityError:
        log.info("batch slot %s already ran: nothing to do", slot)
        return BatchReport(None)
    report = BatchReport(run_id)
    after_id = 0
    while True:
        # One transaction per page: its attempts are published once it has committed.
        with units() as uow:
            session = uow.session
            page = due_page(session, today, after_id, page_size)
            if not page:
                break
            after_id = page[-1].id
            states = {
                s.invoice_id: s
                for s in session.scalars(
                    select(DunningState).where(DunningState.invoice_id.in_([i.id for i in page]))
                )
            }
            owing = [invoice for invoice in page if balance(invoice).amount_due > 0]  # paid: not due
            report.selected += len(owing)
            opened = charge_requests.open_attempts(
                session,
                owing,
                source="schedule",
                requested_by=f"batch:{run_id}",
                batch_run_id=run_id,
                hold=partial(_held_by_dunning, states, moment),
            )
            report.skipped.update(opened.skipped)
            report.queued += len(opened.attempt_ids)
            # The page's charges go out a few to a message (shared.services.charge_batches).
            enqueue_grouped(uow, opened.attempt_ids, per_message)
            _save_counts(session, run_id, report, finished=False)
    with units() as uow:
        _save_counts(uow.session, run_id, report, finished=True)
        audit.record(
            uow.session,
            f"batch:{run_id}",
            "batch.fanned_out",
            slot=slot,
            selected=report.selected,
            queued=report.queued,
            skipped=sum(report.skipped.values()),
        )
    return report


def _skip_reason(invoice: Invoice, settings, state: DunningState | None, now: datetime) -> str | None:  # type: ignore[no-untyped-def]
    blockers = charge_blockers(invoice, settings)
    if blockers:
        return blockers[0].code.value
    return _waiting_for_retry(state, now)


def _held_by_dunning(states: dict[int, DunningState], now: datetime, invoice: Invoice) -> str | None:
    return _waiting_for_retry(states.get(invoice.id), now)


def _waiting_for_retry(state: DunningState | None, now: datetime) -> str | None:
    return SKIP_WAITING_FOR_RETRY if blocks_automatic_charge(state, now) is not None else None


def _save_counts(session: Session, run_id: int, report: BatchReport, *, finished: bool) -> None:
    run = session.get(BatchRun, run_id)
    assert run is not None
    run.selected, run.queued = report.selected, report.queued
    run.skipped = sum(report.skipped.values())
    run.skipped_reasons = dict(report.skipped)
    if finished:
        run.selection_finished_at = utcnow()


def outcome_counts(session: Session, run_id: int) -> dict[str, int]:
    """How the run's charges stand now, by attempt status (derived from the attempts themselves)."""
    rows = session.execute(
        select(ChargeAttempt.status, func.count())
        .where(ChargeAttempt.batch_run_id == run_id)
        .group_by(ChargeAttempt.status)
    ).all()
    return {status: int(n) for status, n in rows}


def open_due_retries(
    factory: sessionmaker[Session],
    units: UnitOfWorkFactory,
    *,
    now: datetime | None = None,
    per_message: int = CHARGES_PER_MESSAGE,
) -> int:
    """Open the automatic retries whose time has come (soft declines on day 1, 3, 7)."""
    moment = now or utcnow()
    opened = 0
    with factory() as session:
        invoice_ids = retries_due(session, moment)
        session.rollback()
    # A message's worth of retries per transaction: their charges go out together once it commits.
    for start in range(0, len(invoice_ids), per_message):
        with units() as uow:
            attempt_ids = [
                attempt_id
                for invoice_id in invoice_ids[start : start + per_message]
                if (attempt_id := _open_due_retry(uow, invoice_id, moment)) is not None
            ]
            enqueue_grouped(uow, attempt_ids, per_message)
            opened += len(attempt_ids)
    return opened


def _open_due_retry(uow: UnitOfWork, invoice_id: int, moment: datetime) -> str | None:
    """The retry of one invoice, if still due and chargeable (its attempt id); its message is the caller's."""
    session = uow.session
    state = session.get(DunningState, invoice_id, with_for_update=True)
    if state is None or state.next_attempt_at is None or state.next_attempt_at > moment:
        return None
    invoice = load_invoice_for_charge(session, invoice_id, lock=True)
    assert invoice is not None
    try:
        with session.begin_nested():
            attempt = charge_requests.request_charge(
                uow, invoice, source="schedule", requested_by="dunning", own_message=False
            )
    except NotChargeable as exc:
        codes = {b.code for b in exc.blockers}
        if codes & FINAL_BLOCKERS:
            session.delete(state)  # paid or void: nothing left to retry
        else:
            # Something passing (a charge in flight, Stripe disconnected...): look again later.
            state.next_attempt_at = moment + RETRY_BLOCKED_DELAY
        audit.record(
            session,
            "dunning",
            "dunning.retry_skipped",
            invoice_id=invoice_id,
            reasons=sorted(c.value for c in codes),
        )
        return None
    state.next_attempt_at = None  # opened: its own outcome sets the next step
    return attempt.id


@dataclass(frozen=True)
class DryRun:
    count: int
    totals: dict[str, int]
    first_rows: list[tuple[str, str, int, str]]  # number, client, amount, currency
    skipped: Counter[str]


def dry_run(
    factory: sessionmaker[Session],
    *,
    today: date,
    now: datetime | None = None,
    page_size: int = PAGE_SIZE,
    show: int = 10,
) -> DryRun:
    """What a batch would charge now, charging nothing."""
    moment = now or utcnow()
    totals: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    first: list[tuple[str, str, int, str]] = []
    count = 0
    after_id = 0
    with factory() as session:
        settings = get_settings(session)
        while page := due_page(session, today, after_id, page_size):
            after_id = page[-1].id
            states = {
                s.invoice_id: s
                for s in session.scalars(
                    select(DunningState).where(DunningState.invoice_id.in_([i.id for i in page]))
                )
            }
            for invoice in page:
                due = balance(invoice).amount_due
                if due <= 0:
                    continue
                reason = _skip_reason(invoice, settings, states.get(invoice.id), moment)
                if reason is not None:
                    skipped[reason] += 1
                    continue
                count += 1
                totals[invoice.currency] += due
                if len(first) < show:
                    first.append((invoice.number, invoice.client.name, due, invoice.currency))
            session.expunge_all()  # keep memory flat: one page at a time
        session.rollback()
    return DryRun(count, dict(totals), first, skipped)
