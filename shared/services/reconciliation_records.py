"""The daily reconciliation's records: a run per account and day, its findings written once, and the
reports the admin pages and `offsession reconcile --day` read (shared.services.daily_reconciliation
does the reconciling).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import case, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import (
    ReconciliationFinding,
    ReconciliationRun,
    utcnow,
)
from shared.domain.payments import PaymentIntentView

log = logging.getLogger(__name__)

ORPHAN, REPAIRED, MISSING = "orphan", "repaired", "missing"


@dataclass
class AccountReport:
    """What one (account, day) run saw. Counts cover the day, findings of earlier runs included."""

    stripe_account: str  # '' for the platform account
    day: date
    run_id: int
    listed: int = 0
    matched: int = 0
    repaired: int = 0
    orphans: int = 0
    missing: int = 0
    # PaymentIntents nobody of ours knows about and that moved no money (abandoned, declined).
    without_money: int = 0
    new_findings: int = 0
    error: str | None = None

    @property
    def account_label(self) -> str:
        return self.stripe_account or "platform"


@dataclass
class DayReport:
    day: date
    accounts: list[AccountReport] = field(default_factory=list)

    @property
    def failed(self) -> list[AccountReport]:
        return [report for report in self.accounts if report.error]

    @property
    def out_of_step(self) -> bool:
        """Money moved that we did not record, or the other way round: a person must look."""
        return any(a.orphans or a.missing for a in self.accounts)

    def summary(self) -> str:
        return (
            "; ".join(
                f"{a.account_label}: {a.listed} listed, {a.matched} matched, {a.repaired} repaired, "
                f"{a.orphans} orphans, {a.missing} missing" + (f", error: {a.error}" if a.error else "")
                for a in self.accounts
            )
            or "no Stripe account"
        )


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------


def from_unix(seconds: int) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def finding_exists(session: Session, stripe_account: str, payment_intent_id: str, kind: str) -> bool:
    return (
        session.scalar(
            select(ReconciliationFinding.id).where(
                ReconciliationFinding.stripe_account == stripe_account,
                ReconciliationFinding.payment_intent_id == payment_intent_id,
                ReconciliationFinding.kind == kind,
            )
        )
        is not None
    )


def insert_finding(
    session: Session,
    report: AccountReport,
    view: PaymentIntentView,
    kind: str,
    *,
    amount: int,
    client_id: int | None = None,
    invoice_id: int | None = None,
    charge_attempt_id: str | None = None,
    detail: str,
) -> bool:
    return insert_finding_values(
        session,
        report,
        {
            "payment_intent_id": view.id,
            "kind": kind,
            "stripe_status": view.status,
            "amount": amount,
            "currency": view.currency,
            "stripe_customer_id": view.customer,
            "client_id": client_id,
            "invoice_id": invoice_id,
            "charge_attempt_id": charge_attempt_id,
            "payment_id": None,
            "detail": detail,
            "payment_intent_created_at": from_unix(view.created),
        },
    )


def insert_finding_values(session: Session, report: AccountReport, values: dict[str, Any]) -> bool:
    """Insert unless this (account, PaymentIntent, kind) is recorded already; True when inserted.
    Safe under concurrent runs: the unique constraint decides, the loser inserts nothing."""
    row = dict(values, run_id=report.run_id, stripe_account=report.stripe_account, found_at=utcnow())
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(ReconciliationFinding)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["stripe_account", "payment_intent_id", "kind"])
        .returning(ReconciliationFinding.id)
    )
    return session.execute(statement).scalar_one_or_none() is not None


def open_run(factory: sessionmaker[Session], stripe_account: str, day: date, trigger: str) -> int:
    """The (account, day) run row, created on the first run and restarted on the next ones."""
    with factory() as session, session.begin():
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.execute(
            insert(ReconciliationRun)
            .values(
                stripe_account=stripe_account,
                day=day,
                trigger=trigger,
                runs=0,
                started_at=utcnow(),
                listed=0,
                matched=0,
                repaired=0,
                orphans=0,
                missing=0,
            )
            .on_conflict_do_nothing(index_elements=["stripe_account", "day"])
        )
        run = session.scalars(
            select(ReconciliationRun)
            .where(ReconciliationRun.stripe_account == stripe_account, ReconciliationRun.day == day)
            .with_for_update()
        ).one()
        run.runs += 1
        run.trigger = trigger
        run.started_at = utcnow()
        run.finished_at = None
        run.error = None
        return run.id


def close_run(factory: sessionmaker[Session], report: AccountReport) -> None:
    with factory() as session, session.begin():
        run = session.scalars(
            select(ReconciliationRun).where(ReconciliationRun.id == report.run_id).with_for_update()
        ).one()
        if report.error is None:
            run.listed = report.listed
            run.matched = report.matched
            run.repaired = report.repaired
            run.orphans = report.orphans
            run.missing = report.missing
        run.error = report.error
        run.finished_at = utcnow()


# --------------------------------------------------------------------------------------------------
# Reading (the report page and the command)
# --------------------------------------------------------------------------------------------------


_KIND_ORDER = case({ORPHAN: 0, MISSING: 1, REPAIRED: 2}, value=ReconciliationFinding.kind, else_=3)


def day_findings(session: Session, day: date) -> list[ReconciliationFinding]:
    """Every finding of a day's runs, orphans first, then in the order they were found."""
    return list(
        session.scalars(
            select(ReconciliationFinding)
            .join(ReconciliationRun, ReconciliationRun.id == ReconciliationFinding.run_id)
            .where(ReconciliationRun.day == day)
            .order_by(_KIND_ORDER, ReconciliationFinding.id)
        )
    )


def recent_runs(session: Session, *, limit: int = 100) -> list[ReconciliationRun]:
    """The latest runs, newest day first."""
    return list(
        session.scalars(
            select(ReconciliationRun)
            .order_by(ReconciliationRun.day.desc(), ReconciliationRun.stripe_account)
            .limit(limit)
        )
    )


def run_findings(session: Session, run_id: int) -> list[ReconciliationFinding]:
    """A run's findings, orphans first, then in the order they were found."""
    return list(
        session.scalars(
            select(ReconciliationFinding)
            .where(ReconciliationFinding.run_id == run_id)
            .order_by(_KIND_ORDER, ReconciliationFinding.id)
        )
    )
