"""The daily reconciliation against Stripe: does Stripe's list of a day's PaymentIntents
agree with our charge attempts and our ledger?

For one UTC day and each Stripe account we charge through, every PaymentIntent created that day is
listed and compared with what we recorded:

- known (by its id, or by the charge_attempt_id of its metadata) and in agreement: matched;
- known but our attempt disagrees with Stripe (a lost webhook, a crash before the outcome was
  stored): repaired through the monotonic path the webhooks and the janitor use; never charged again;
- succeeded while nothing of ours records it: an orphan, money moved that nobody recorded. It is
  retrieved once more to check the money really moved before it is recorded, for a person to decide;
- a ledger card payment of the day whose PaymentIntent Stripe does not have (or not as succeeded):
  missing.

Findings are unique per (account, PaymentIntent, kind) and written with INSERT ... ON CONFLICT DO
NOTHING: running a day again, or two runs at once, records nothing twice. Stripe is only asked between
transactions, never inside one.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.binding import Mismatch, payment_intent_mismatch
from shared.domain.models import (
    ChargeAttempt,
    Client,
    Invoice,
    Payment,
    ReconciliationRun,
    utcnow,
)
from shared.domain.payments import GatewayError, PaymentIntentView, PermanentStripeError
from shared.domain.states import observe
from shared.services import audit, outbox
from shared.services.attempts import apply_payment_intent, lock_attempt, reported_status
from shared.services.ports import StripePort, UnitOfWork
from shared.services.reconciliation_records import (
    MISSING,
    ORPHAN,
    REPAIRED,
    AccountReport,
    DayReport,
    close_run,
    finding_exists,
    from_unix,
    insert_finding,
    insert_finding_values,
    open_run,
)
from shared.services.settings import get_settings

log = logging.getLogger(__name__)

ACTOR = "reconciliation"
TASK_RECONCILE_DAY = "offsession.reconcile_day"
# Charges opened shortly before midnight may have their PaymentIntent created after it: their account
# counts for the day too.
ATTEMPT_LOOKBACK = timedelta(hours=1)
# How far back the nightly run retries days whose run stopped on an error.
RETRY_DAYS = 7


class ReconciliationError(ValueError):
    """A request the reconciliation cannot run; the message is fit to show to a person."""




def parse_day(text: str) -> date:
    """A YYYY-MM-DD day, refused with a readable message otherwise."""
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise ReconciliationError(f"not a day: {text!r} (expected YYYY-MM-DD)") from None
    if len(text.strip()) != 10:
        raise ReconciliationError(f"not a day: {text!r} (expected YYYY-MM-DD)")
    return day


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC day as a half-open window [start, end)."""
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def yesterday_utc(now: datetime | None = None) -> date:
    return ((now or utcnow()).astimezone(UTC) - timedelta(days=1)).date()


def request_reconciliation(uow: UnitOfWork, day: date, actor: str, *, now: datetime | None = None) -> None:
    """Queue a run of `day` for the worker (the admin's "Reconcile now"): written to the outbox in the
    unit of work, so the request is never lost to a broker that is down, and published once committed."""
    if day > (now or utcnow()).astimezone(UTC).date():
        raise ReconciliationError(f"{day} has not happened yet")
    audit.record(uow.session, actor, "reconciliation.requested", day=day.isoformat())
    outbox.enqueue_after_commit(uow, TASK_RECONCILE_DAY, {"day": day.isoformat(), "trigger": "admin"})


def accounts_for_day(session: Session, day: date) -> list[str]:
    """The accounts to reconcile: the one Settings charges through while Stripe is connected, and every
    account a charge of that day went to (Settings may have changed since). '' is the platform."""
    start, end = day_bounds(day)
    accounts = {
        account or ""
        for account in session.scalars(
            select(ChargeAttempt.stripe_account_id)
            .where(ChargeAttempt.created_at >= start - ATTEMPT_LOOKBACK, ChargeAttempt.created_at < end)
            .distinct()
        )
    }
    settings = get_settings(session)
    if settings.stripe_connected:
        accounts.add(settings.stripe_account_id or "")
    return sorted(accounts)


def days_to_retry(session: Session, *, before: date, days_back: int = RETRY_DAYS) -> list[date]:
    """Days before `before` (within `days_back` days) whose last run stopped on an error: the nightly
    run takes them again, so a night Stripe was down is not left unreconciled."""
    return list(
        session.scalars(
            select(ReconciliationRun.day)
            .where(
                ReconciliationRun.error.is_not(None),
                ReconciliationRun.day < before,
                ReconciliationRun.day >= before - timedelta(days=days_back),
            )
            .distinct()
            .order_by(ReconciliationRun.day)
        )
    )


def reconcile_day(
    factory: sessionmaker[Session],
    gateway: StripePort,
    day: date,
    *,
    trigger: str,
    now: datetime | None = None,
) -> DayReport:
    """Reconcile every account of `day`. One account's failure (Stripe down) is recorded on its run and
    does not stop the others."""
    moment = now or utcnow()
    if day > moment.astimezone(UTC).date():
        raise ReconciliationError(f"{day} has not happened yet")
    with factory() as session:
        accounts = accounts_for_day(session, day)
        session.rollback()
    report = DayReport(day)
    for account in accounts:
        report.accounts.append(reconcile_account_day(factory, gateway, account, day, trigger=trigger))
    return report


def reconcile_account_day(
    factory: sessionmaker[Session], gateway: StripePort, stripe_account: str, day: date, *, trigger: str
) -> AccountReport:
    run_id = open_run(factory, stripe_account, day, trigger)
    report = AccountReport(stripe_account, day, run_id)
    account = stripe_account or None
    start, end = day_bounds(day)
    try:
        views = list(gateway.list_payment_intents_created(start, end, stripe_account=account))
        report.listed = len(views)
        for view in views:
            _reconcile_payment_intent(factory, gateway, report, view)
        _find_missing(factory, gateway, report, {view.id for view in views}, start, end)
    except GatewayError as exc:
        report.error = f"Stripe: {exc}"
        log.warning("reconciliation of %s for %s stopped: %s", report.account_label, day, exc)
    except Exception as exc:  # the rate budget, a database hiccup: recorded on the run, retried next night
        report.error = f"{type(exc).__name__}: {exc}"
        log.exception("reconciliation of %s for %s failed", report.account_label, day)
    close_run(factory, report)
    return report


# --------------------------------------------------------------------------------------------------
# One PaymentIntent
# --------------------------------------------------------------------------------------------------


def _find_attempt(session: Session, view: PaymentIntentView) -> ChargeAttempt | None:
    """The attempt whose PaymentIntent this is: by id, or by metadata while that attempt has none yet,
    and only when it matches (account aside: the day is listed per account). A PaymentIntent that names
    an attempt it does not match is nobody's: if money moved, it is an orphan for a person to look at."""
    attempt = session.scalars(
        select(ChargeAttempt).where(ChargeAttempt.payment_intent_id == view.id)
    ).one_or_none()
    if attempt is None and (attempt_id := view.metadata.get("charge_attempt_id")):
        attempt = session.get(ChargeAttempt, attempt_id)
    if attempt is None or payment_intent_mismatch(attempt, view) is not None:
        return None
    return attempt


def _ledger_has(session: Session, payment_intent_id: str) -> bool:
    return (
        session.scalar(select(Payment.id).where(Payment.stripe_payment_intent_id == payment_intent_id))
        is not None
    )


def _disagrees(session: Session, attempt: ChargeAttempt, view: PaymentIntentView) -> bool:
    """Stripe's word would move the attempt on, or money moved that the ledger does not show."""
    if observe(attempt.status, reported_status(view)) is not None:
        return True
    return view.status == "succeeded" and not _ledger_has(session, view.id)


def _reconcile_payment_intent(
    factory: sessionmaker[Session], gateway: StripePort, report: AccountReport, view: PaymentIntentView
) -> None:
    with factory() as session:
        attempt = _find_attempt(session, view)
        attempt_id = attempt.id if attempt is not None else None
        needs_repair = attempt is not None and _disagrees(session, attempt, view)
        known_to_ledger = _ledger_has(session, view.id)
        repaired_before = finding_exists(session, report.stripe_account, view.id, REPAIRED)
        session.rollback()
    if attempt_id is not None:
        # Repaired now, or by an earlier run of the day: the day's counts stay the same on a re-run.
        repaired = needs_repair and _repair(factory, gateway, report, attempt_id, view)
        if repaired or repaired_before:
            report.repaired += 1
        else:
            report.matched += 1
        return
    if known_to_ledger:
        report.matched += 1  # recorded by hand against an invoice, with its PaymentIntent id
        return
    if view.status != "succeeded":
        report.without_money += 1
        return
    match _record_orphan(factory, gateway, report, view):
        case "orphan":
            report.orphans += 1
        case "recorded meanwhile":
            report.matched += 1
        case "no money moved":
            report.without_money += 1


def _repair(
    factory: sessionmaker[Session],
    gateway: StripePort,
    report: AccountReport,
    attempt_id: str,
    listed: PaymentIntentView,
) -> bool:
    """Settle the attempt from a fresh read of the PaymentIntent; True when that changed something."""
    fresh = gateway.retrieve_payment_intent(listed.id, stripe_account=report.stripe_account or None)
    with factory() as session, session.begin():
        attempt = lock_attempt(session, attempt_id)
        before = attempt.status
        had_payment = _ledger_has(session, fresh.id)
        try:
            if not apply_payment_intent(session, attempt, fresh, actor=ACTOR):
                return False
        except Mismatch as mismatch:  # Stripe's fresh copy disagrees with the listed one: leave it
            log.error("reconciliation: %s", mismatch.message)
            return False
        what = f"charge {before} -> {attempt.status}"
        if fresh.status == "succeeded" and not had_payment:
            what += "; payment recorded in the ledger"
        invoice = session.get(Invoice, attempt.invoice_id)
        inserted = insert_finding(
            session,
            report,
            fresh,
            REPAIRED,
            amount=fresh.amount_received or fresh.amount,
            invoice_id=attempt.invoice_id,
            client_id=invoice.client_id if invoice is not None else None,
            charge_attempt_id=attempt.id,
            detail=f"Stripe reported {fresh.status}: {what}.",
        )
        report.new_findings += inserted
        return True


OrphanCheck = Literal["orphan", "recorded meanwhile", "no money moved"]


def _record_orphan(
    factory: sessionmaker[Session], gateway: StripePort, report: AccountReport, listed: PaymentIntentView
) -> OrphanCheck:
    """Record a succeeded PaymentIntent nothing of ours knows, once a fresh read confirms that money
    moved. "orphan" also when an earlier run recorded it already."""
    fresh = gateway.retrieve_payment_intent(listed.id, stripe_account=report.stripe_account or None)
    if fresh.status != "succeeded" or fresh.amount_received <= 0:
        return "no money moved"
    with factory() as session, session.begin():
        if _find_attempt(session, fresh) is not None or _ledger_has(session, fresh.id):
            return "recorded meanwhile"  # a webhook or a late worker got there first
        client_id = (
            session.scalar(select(Client.id).where(Client.stripe_customer_id == fresh.customer))
            if fresh.customer
            else None
        )
        invoice_id = _our_invoice_id(session, fresh)
        inserted = insert_finding(
            session,
            report,
            fresh,
            ORPHAN,
            amount=fresh.amount_received,
            client_id=client_id,
            invoice_id=invoice_id,
            detail=(
                "Money moved at Stripe and nothing in Offsession records it"
                + (f" (its metadata names invoice {invoice_id})" if invoice_id else "")
                + ": check it in the Stripe dashboard, then record or refund it."
            ),
        )
        if inserted:
            report.new_findings += 1
            audit.record(
                session,
                ACTOR,
                "reconciliation.orphan",
                invoice_id=invoice_id,
                payment_intent_id=fresh.id,
                stripe_account=report.stripe_account or None,
                amount=fresh.amount_received,
                currency=fresh.currency,
                customer=fresh.customer,
                client_id=client_id,
                day=report.day.isoformat(),
            )
    return "orphan"


def _our_invoice_id(session: Session, view: PaymentIntentView) -> int | None:
    raw = view.metadata.get("invoice_id", "")
    if not raw.isdigit() or len(raw) > 12:
        return None
    return session.scalar(select(Invoice.id).where(Invoice.id == int(raw)))


# --------------------------------------------------------------------------------------------------
# Ledger payments Stripe does not list
# --------------------------------------------------------------------------------------------------


def _find_missing(
    factory: sessionmaker[Session],
    gateway: StripePort,
    report: AccountReport,
    listed_ids: set[str],
    start: datetime,
    end: datetime,
) -> None:
    with factory() as session:
        settings_account = get_settings(session).stripe_account_id or ""
        rows = session.execute(
            select(
                Payment.id,
                Payment.stripe_payment_intent_id,
                Payment.amount,
                Payment.invoice_id,
                Payment.charge_attempt_id,
                ChargeAttempt.stripe_account_id,
                ChargeAttempt.id.is_not(None),
            )
            .outerjoin(ChargeAttempt, ChargeAttempt.id == Payment.charge_attempt_id)
            .where(
                Payment.method == "card",
                Payment.amount > 0,
                Payment.stripe_payment_intent_id.is_not(None),
                Payment.received_at >= start,
                Payment.received_at < end,
            )
            .order_by(Payment.id)
        ).all()
        session.rollback()
    for payment_id, pi_id, amount, invoice_id, attempt_id, attempt_account, has_attempt in rows:
        # A payment without an attempt was recorded by hand: it belongs to the account Settings names.
        account = (attempt_account or "") if has_attempt else settings_account
        if account != report.stripe_account or pi_id is None or pi_id in listed_ids:
            continue
        try:
            view: PaymentIntentView | None = gateway.retrieve_payment_intent(
                pi_id, stripe_account=report.stripe_account or None
            )
        except PermanentStripeError as exc:
            if exc.http_status != 404:
                raise
            view = None
        if view is not None and view.status == "succeeded":
            # Created the day before and succeeded after midnight: it is on that day's list.
            continue
        detail = (
            "The ledger records this card payment but Stripe has no such PaymentIntent on this account."
            if view is None
            else f"The ledger records this card payment but Stripe reports its PaymentIntent {view.status}."
        )
        with factory() as session, session.begin():
            invoice = session.get(Invoice, invoice_id)
            inserted = insert_finding_values(
                session,
                report,
                {
                    "payment_intent_id": pi_id,
                    "kind": MISSING,
                    "stripe_status": view.status if view is not None else "",
                    "amount": amount,
                    "currency": invoice.currency if invoice is not None else "",
                    "stripe_customer_id": view.customer if view is not None else None,
                    "client_id": invoice.client_id if invoice is not None else None,
                    "invoice_id": invoice_id,
                    "charge_attempt_id": attempt_id,
                    "payment_id": payment_id,
                    "detail": detail,
                    "payment_intent_created_at": from_unix(view.created) if view is not None else None,
                },
            )
            report.new_findings += inserted
        report.missing += 1
