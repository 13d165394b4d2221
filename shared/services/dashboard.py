"""The admin's home page in numbers: money collected, money due, how charges end, what needs a person.

Every figure is one aggregate query read off an index (migrations 0013, 0015 and 0016 add the ones it
needs), so the page stays fast at a million invoices (bench/bench_scale.py measures it). Days are UTC
days.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from shared.domain.models import ChargeAttempt, Invoice, Payment, ReconciliationFinding
from shared.domain.states import AttemptStatus
from shared.services.disputes import count_open_disputes

OUTCOME_DAYS = 30
TOP_DECLINE_REASONS = 5
# Final outcomes, and waiting for the client: the charges a chart of how charges end counts.
OUTCOMES = (
    AttemptStatus.SUCCEEDED,
    AttemptStatus.FAILED,
    AttemptStatus.REQUIRES_ACTION,
    AttemptStatus.CANCELED,
)
# Reconciliation findings a person must look at (a "repaired" one was settled from Stripe already).
FINDINGS_FOR_A_PERSON = ("orphan", "missing")
FINDINGS_WINDOW_DAYS = 30
PERIODS = ("today", "week", "month")


@dataclass(frozen=True)
class Receivable:
    """Invoices not void and not fully paid, due today or before, of one currency."""

    bucket: str  # "due_today" or "overdue"
    auto_charge: bool
    currency: str
    invoices: int
    amount_due: int


@dataclass(frozen=True)
class Attention:
    """Something waiting for a person: how many, and where (an admin endpoint with its arguments)."""

    key: str
    label: str
    count: int
    endpoint: str
    arguments: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dashboard:
    today: date
    # period ("today", "week", "month") -> currency -> the ledger's net amount received in it.
    collected: dict[str, dict[str, int]]
    receivables: list[Receivable]
    outcome_days: list[str]
    # status -> one count per day of outcome_days.
    outcomes: dict[str, list[int]]
    declines: list[tuple[str, int]]
    attention: list[Attention]

    @property
    def currencies(self) -> list[str]:
        return sorted({c for amounts in self.collected.values() for c in amounts})


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def collected_by_period(session: Session, today: date) -> dict[str, dict[str, int]]:
    """Net ledger amounts received today, this week (from Monday) and this month, per currency: one
    pass over the payments received since the earlier of Monday and the 1st, each with its invoice's
    currency beside it (ix_payment_received_at_currency alone: no invoice is read)."""
    starts = {
        "today": _start_of(today),
        "week": _start_of(today - timedelta(days=today.weekday())),
        "month": _start_of(today.replace(day=1)),
    }
    since = min(starts.values())
    sums = [
        func.coalesce(func.sum(case((Payment.received_at >= start, Payment.amount), else_=0)), 0)
        for start in starts.values()
    ]
    rows = session.execute(
        select(Payment.currency, *sums).where(Payment.received_at >= since).group_by(Payment.currency)
    ).all()
    collected: dict[str, dict[str, int]] = {period: {} for period in PERIODS}
    for currency, *amounts in rows:
        for period, amount in zip(PERIODS, amounts, strict=True):
            collected[period][str(currency)] = int(amount)
    return collected


def receivables(session: Session, today: date) -> list[Receivable]:
    """What is due today and overdue, by auto-charge and currency: the invoices not void and not fully
    paid (their ledger sum, kept by the database on the invoice, short of the total), due by today.
    Read off ix_invoice_outstanding_due alone, which holds only the invoices with money left to
    collect: no payment is read."""
    bucket = case((Invoice.due_date < today, literal("overdue")), else_=literal("due_today"))
    rows = session.execute(
        select(
            bucket,
            Invoice.auto_charge,
            Invoice.currency,
            func.count(),
            func.sum(Invoice.total - Invoice.ledger_sum),
        )
        .where(~Invoice.is_void, Invoice.ledger_sum < Invoice.total, Invoice.due_date <= today)
        .group_by(bucket, Invoice.auto_charge, Invoice.currency)
    ).all()
    found = [Receivable(str(b), bool(auto), str(cur), int(n), int(due or 0)) for b, auto, cur, n, due in rows]
    return sorted(found, key=lambda r: (r.bucket != "due_today", not r.auto_charge, r.currency))


def outcomes_by_day(session: Session, now: datetime) -> tuple[list[str], dict[str, list[int]]]:
    """Charges that reached each outcome, per UTC day of the last OUTCOME_DAYS days (by when they got
    there: ix_charge_attempt_status_updated_at)."""
    first = now.date() - timedelta(days=OUTCOME_DAYS - 1)
    days = [(first + timedelta(days=n)).isoformat() for n in range(OUTCOME_DAYS)]
    # The UTC day: PostgreSQL would otherwise take the day in the session's time zone.
    utc_time = (
        func.timezone("UTC", ChargeAttempt.updated_at)
        if session.get_bind().dialect.name == "postgresql"
        else ChargeAttempt.updated_at
    )
    day = func.date(utc_time)
    rows = session.execute(
        select(ChargeAttempt.status, day, func.count())
        .where(
            ChargeAttempt.status.in_([s.value for s in OUTCOMES]),
            ChargeAttempt.updated_at >= _start_of(first),
        )
        .group_by(ChargeAttempt.status, day)
    ).all()
    counts: dict[str, list[int]] = {s.value: [0] * OUTCOME_DAYS for s in OUTCOMES}
    index = {d: n for n, d in enumerate(days)}
    for status, when, n in rows:
        position = index.get(str(when)[:10])
        if position is not None:
            counts[status][position] += int(n)
    return days, counts


def top_decline_reasons(session: Session, now: datetime) -> list[tuple[str, int]]:
    """The commonest reasons of the charges that failed in the last OUTCOME_DAYS days."""
    since = _start_of(now.date() - timedelta(days=OUTCOME_DAYS - 1))
    reason = func.coalesce(ChargeAttempt.decline_code, ChargeAttempt.failure_code, literal("unknown"))
    rows = session.execute(
        select(reason, func.count().label("n"))
        .where(ChargeAttempt.status == AttemptStatus.FAILED.value, ChargeAttempt.updated_at >= since)
        .group_by(reason)
        .order_by(func.count().desc(), reason)
        .limit(TOP_DECLINE_REASONS)
    ).all()
    return [(str(r), int(n)) for r, n in rows]


def _charges_in(session: Session, status: AttemptStatus) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(ChargeAttempt).where(ChargeAttempt.status == status.value)
        )
        or 0
    )


def _unknown_charges(session: Session, now: datetime) -> Attention:
    return Attention(
        "unknown_charges",
        "charges whose outcome is unknown",
        _charges_in(session, AttemptStatus.UNKNOWN),
        "admin.charges",
        {"status": AttemptStatus.UNKNOWN.value},
    )


def _waiting_for_authentication(session: Session, now: datetime) -> Attention:
    return Attention(
        "waiting_for_authentication",
        "charges waiting for the client to authenticate",
        _charges_in(session, AttemptStatus.REQUIRES_ACTION),
        "admin.charges",
        {"status": AttemptStatus.REQUIRES_ACTION.value},
    )


def _reconciliation_findings(session: Session, now: datetime) -> Attention:
    since = now - timedelta(days=FINDINGS_WINDOW_DAYS)
    count = session.scalar(
        select(func.count())
        .select_from(ReconciliationFinding)
        .where(ReconciliationFinding.kind.in_(FINDINGS_FOR_A_PERSON), ReconciliationFinding.found_at >= since)
    )
    return Attention(
        "reconciliation_findings",
        f"reconciliation findings of the last {FINDINGS_WINDOW_DAYS} days (money Stripe and we disagree on)",
        int(count or 0),
        "admin.reconciliation",
    )


def _open_disputes(session: Session, now: datetime) -> Attention:
    # Listed on the Charges page, in its "Open disputes" section (ix_dispute_status).
    return Attention(
        "open_disputes",
        "open disputes (a client's bank disputes a payment: evidence may be due)",
        count_open_disputes(session),
        "admin.charges",
        {"_anchor": "disputes"},
    )


# What needs a person, in the order shown. Another source (disputes, say) is one more function here
# answering an Attention with its count and the page that lists them.
ATTENTION_SOURCES: list[Callable[[Session, datetime], Attention]] = [
    _unknown_charges,
    _waiting_for_authentication,
    _open_disputes,
    _reconciliation_findings,
]


def build_dashboard(session: Session, *, now: datetime | None = None) -> Dashboard:
    moment = now or datetime.now(UTC)
    today = moment.date()
    days, outcomes = outcomes_by_day(session, moment)
    return Dashboard(
        today=today,
        collected=collected_by_period(session, today),
        receivables=receivables(session, today),
        outcome_days=days,
        outcomes=outcomes,
        declines=top_decline_reasons(session, moment),
        attention=[source(session, moment) for source in ATTENTION_SOURCES],
    )
