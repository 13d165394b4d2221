"""The daily reconciliation's comparison (shared.services.daily_reconciliation), on SQLite and PostgreSQL.

The in-memory FakeStripe stands in for Stripe, seeded with the PaymentIntents of each account: these
tests are about what the comparison decides and what the database records, once.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import (
    AuditEvent,
    ChargeAttempt,
    Payment,
    ReconciliationFinding,
    ReconciliationRun,
)
from shared.domain.payments import PaymentIntentView
from shared.services.daily_reconciliation import (
    ReconciliationError,
    day_bounds,
    days_to_retry,
    parse_day,
    reconcile_day,
    yesterday_utc,
)
from shared.services.settings import update_settings
from tests.support import factories
from tests.support.fake_stripe import FakeStripe

DAY = date(2026, 11, 20)
NOON = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def pi(
    pi_id: str,
    *,
    status: str = "succeeded",
    amount: int = 10_000,
    customer: str | None = "cus_someone",
    metadata: dict[str, str] | None = None,
    created: datetime = NOON,
) -> PaymentIntentView:
    return PaymentIntentView(
        id=pi_id,
        status=status,
        amount=amount,
        amount_received=amount if status == "succeeded" else 0,
        currency="usd",
        customer=customer,
        payment_method="pm_1",
        metadata=metadata or {},
        latest_charge=None,
        last_payment_error=None,
        created=int(created.timestamp()),
        client_secret=None,
        next_action_type=None,
        next_action_redirect_url=None,
        livemode=False,
    )


def seed(stripe: FakeStripe, view: PaymentIntentView, account: str = "") -> None:
    """A PaymentIntent as Stripe holds it, put straight into the fake's store: these tests pick the ids
    and the times the reconciliation must find."""
    error = view.last_payment_error
    stripe.server.account(account or None).payment_intents[view.id] = {
        "id": view.id,
        "object": "payment_intent",
        "status": view.status,
        "amount": view.amount,
        "amount_received": view.amount_received,
        "currency": view.currency,
        "customer": view.customer,
        "payment_method": view.payment_method,
        "metadata": dict(view.metadata),
        "latest_charge": view.latest_charge,
        "last_payment_error": None if error is None else vars(error),
        "created": view.created,
        "client_secret": view.client_secret,
        "next_action": None,
        "livemode": view.livemode,
    }


def list_calls(stripe: FakeStripe) -> list[tuple[str, datetime, datetime]]:
    """(account, created from, created before) of every listing of PaymentIntents by creation time."""
    return [
        (
            r.account,
            datetime.fromtimestamp(r.params["created"]["gte"], UTC),
            datetime.fromtimestamp(r.params["created"]["lt"], UTC),
        )
        for r in stripe.server.requests
        if r.method == "get" and r.path == "/v1/payment_intents" and "lt" in r.params.get("created", {})
    ]


def retrieves(stripe: FakeStripe) -> list[str]:
    """The PaymentIntents retrieved one by one, in order."""
    prefix = "/v1/payment_intents/"
    return [r.path[len(prefix) :] for r in stripe.server.requests if r.path.startswith(prefix)]


@pytest.fixture
def stripe_fake() -> FakeStripe:
    return FakeStripe()


def connect(factory: sessionmaker[Session], account: str | None = None) -> None:
    with factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True, stripe_account_id=account or "")


def charged_invoice(
    factory: sessionmaker[Session],
    *,
    status: str,
    payment_intent_id: str | None,
    account: str | None = None,
    paid: bool = False,
) -> tuple[int, str]:
    """An invoice with one attempt created at NOON; with `paid`, its card payment in the ledger."""
    with factory() as s, s.begin():
        owner = factories.client()
        invoice = factories.invoice(owner=owner)
        attempt = factories.attempt(invoice, status=status)
        attempt.payment_intent_id = payment_intent_id
        attempt.stripe_account_id = account
        # The customer pi() makes PaymentIntents for: they are this attempt's.
        attempt.stripe_customer_id = "cus_someone"
        attempt.created_at = NOON - timedelta(seconds=5)
        factories.persist(s, invoice, attempt)
        if paid:
            s.add(
                Payment(
                    invoice_id=invoice.id,
                    amount=invoice.total,
                    method="card",
                    received_at=NOON,
                    reference=payment_intent_id or "",
                    charge_attempt_id=attempt.id,
                    stripe_payment_intent_id=payment_intent_id,
                    recorded_by="stripe",
                )
            )
        return invoice.id, attempt.id


def findings(factory: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    with factory() as s:
        rows = s.execute(
            select(
                ReconciliationFinding.stripe_account,
                ReconciliationFinding.payment_intent_id,
                ReconciliationFinding.kind,
            ).order_by(ReconciliationFinding.id)
        ).all()
        return [tuple(row) for row in rows]


def run_row(factory: sessionmaker[Session], account: str = "") -> ReconciliationRun:
    with factory() as s:
        return s.scalars(
            select(ReconciliationRun).where(
                ReconciliationRun.stripe_account == account, ReconciliationRun.day == DAY
            )
        ).one()


def test_a_charge_recorded_as_stripe_reports_it_is_matched(
    session_factory: sessionmaker[Session], stripe_fake: FakeStripe
) -> None:
    connect(session_factory)
    charged_invoice(session_factory, status="succeeded", payment_intent_id="pi_ours", paid=True)
    seed(stripe_fake, pi("pi_ours"))
    report = reconcile_day(session_factory, stripe_fake, DAY, trigger="test", now=LATER)
    (account,) = report.accounts
    assert (account.listed, account.matched, account.repaired, account.orphans, account.missing) == (
        1,
        1,
        0,
        0,
        0,
    )
    assert findings(session_factory) == []
    # The day's UTC window was asked for, and nothing needed a second look.
    assert list_calls(stripe_fake) == [("", *day_bounds(DAY))]
    assert retrieves(stripe_fake) == []


def test_an_orphan_is_checked_then_recorded_once_with_its_client_and_an_audit_event(
    session_factory: sessionmaker[Session], stripe_fake: FakeStripe
) -> None:
    connect(session_factory)
    with session_factory() as s, s.begin():
        owner = factories.client()
        factories.persist(s, owner)
        client_id, customer = owner.id, owner.stripe_customer_id
    seed(stripe_fake, pi("pi_orphan", amount=4_200, customer=customer))
    seed(stripe_fake, pi("pi_abandoned", status="requires_payment_method", customer=customer))

    first = reconcile_day(session_factory, stripe_fake, DAY, trigger="cli", now=LATER)
    second = reconcile_day(session_factory, stripe_fake, DAY, trigger="cli", now=LATER)

    assert findings(session_factory) == [("", "pi_orphan", "orphan")]
    assert [a.new_findings for a in (first.accounts[0], second.accounts[0])] == [1, 0]
    for report in (first.accounts[0], second.accounts[0]):
        assert (report.listed, report.orphans, report.without_money, report.matched) == (2, 1, 1, 0)
    # Re-retrieved before recording: the listing alone is not trusted.
    assert retrieves(stripe_fake).count("pi_orphan") == 2
    with session_factory() as s:
        finding = s.scalars(select(ReconciliationFinding)).one()
        assert (finding.amount, finding.currency, finding.stripe_customer_id, finding.client_id) == (
            4_200,
            "usd",
            customer,
            client_id,
        )
        assert finding.payment_intent_created_at == NOON
        assert finding.stripe_status == "succeeded"
        audits = s.scalars(select(AuditEvent).where(AuditEvent.action == "reconciliation.orphan")).all()
        assert [a.detail["payment_intent_id"] for a in audits] == ["pi_orphan"]
    run = run_row(session_factory)
    assert (run.runs, run.listed, run.orphans, run.trigger, run.error) == (2, 2, 1, "cli", None)
    assert run.finished_at is not None


def test_a_listed_success_that_moved_no_money_on_a_second_look_is_not_an_orphan(
    session_factory: sessionmaker[Session], stripe_fake: FakeStripe
) -> None:
    connect(session_factory)
    seed(stripe_fake, pi("pi_odd"))
    calls: list[str | None] = []

    def second_look_finds_no_money(account: str | None) -> None:
        calls.append(account)
        if len(calls) == 2:  # after the listing, before the retrieve
            seed(stripe_fake, replace(pi("pi_odd"), amount_received=0))

    stripe = FakeStripe(server=stripe_fake.server, before_request=second_look_finds_no_money)
    report = reconcile_day(session_factory, stripe, DAY, trigger="test", now=LATER)
    assert retrieves(stripe) == ["pi_odd"]
    assert (report.accounts[0].orphans, report.accounts[0].without_money) == (0, 1)
    assert findings(session_factory) == []


@pytest.mark.parametrize("stored_pi_id", ["pi_lost", None])
def test_an_attempt_stripe_settled_without_us_is_repaired_once_and_never_charged_again(
    session_factory: sessionmaker[Session], stripe_fake: FakeStripe, stored_pi_id: str | None
) -> None:
    """The worker died after Stripe charged (with or without the PaymentIntent id stored), and the
    webhook never came: the PaymentIntent is found by id or by its metadata."""
    connect(session_factory)
    invoice_id, attempt_id = charged_invoice(
        session_factory, status="unknown", payment_intent_id=stored_pi_id
    )
    metadata = {"charge_attempt_id": attempt_id, "invoice_id": str(invoice_id)}
    seed(stripe_fake, pi("pi_lost", metadata=metadata))

    first = reconcile_day(session_factory, stripe_fake, DAY, trigger="test", now=LATER)
    second = reconcile_day(session_factory, stripe_fake, DAY, trigger="test", now=LATER)

    assert findings(session_factory) == [("", "pi_lost", "repaired")]
    for report in (first.accounts[0], second.accounts[0]):
        assert (report.listed, report.repaired, report.matched, report.orphans) == (1, 1, 0, 0)
    with session_factory() as s:
        attempt = s.get_one(ChargeAttempt, attempt_id)
        assert (attempt.status, attempt.payment_intent_id) == ("succeeded", "pi_lost")
        payments = s.scalars(select(Payment).where(Payment.invoice_id == invoice_id)).all()
        assert [(p.amount, p.stripe_payment_intent_id) for p in payments] == [(10_000, "pi_lost")]
        finding = s.scalars(select(ReconciliationFinding)).one()
        assert (finding.invoice_id, finding.charge_attempt_id) == (invoice_id, attempt_id)
        assert "unknown -> succeeded" in finding.detail


def test_a_cancel_stripe_reports_is_repaired_without_a_payment(
    session_factory: sessionmaker[Session], stripe_fake: FakeStripe
) -> None:
    connect(session_factory)
    _, attempt_id = charged_invoice(session_factory, status="unknown", payment_intent_id="pi_no")
    seed(stripe_fake, pi("pi_no", status="canceled"))
    report = reconcile_day(session_factory, stripe_fake, DAY, trigger="test", now=LATER)
    assert report.accounts[0].repaired == 1
    with session_factory() as s:
        assert s.get_one(ChargeAttempt, attempt_id).status == "canceled"
        assert s.scalar(select(func.count()).select_from(Payment)) == 0


def test_a_ledger_card_payment_stripe_does_not_have_is_flagged_missing_once(
    session_factory: sessionmaker[Session], stripe_fake: FakeStripe
) -> None:
    connect(session_factory)
    invoice_id, _ = charged_invoice(
        session_factory, status="succeeded", payment_intent_id="pi_gone", paid=True
    )
    # Another day's PaymentIntent that succeeded after midnight: on that day's list, not missing.
    charged_invoice(session_factory, status="succeeded", payment_intent_id="pi_yesterday", paid=True)
    seed(stripe_fake, pi("pi_yesterday", created=NOON - timedelta(days=1)))

    for _ in range(2):
        report = reconcile_day(session_factory, stripe_fake, DAY, trigger="test", now=LATER)
        assert (report.accounts[0].listed, report.accounts[0].missing) == (0, 1)

    assert findings(session_factory) == [("", "pi_gone", "missing")]
    with session_factory() as s:
        finding = s.scalars(select(ReconciliationFinding)).one()
        assert (finding.invoice_id, finding.amount, finding.currency) == (invoice_id, 10_000, "usd")
        assert finding.payment_id is not None
        assert "no such PaymentIntent" in finding.detail


def test_two_accounts_are_reconciled_apart(
    session_factory: sessionmaker[Session], stripe_fake: FakeStripe
) -> None:
    """Settings charges through acct_B now; a charge of the day went through acct_A before."""
    connect(session_factory, "acct_B")
    charged_invoice(
        session_factory, status="succeeded", payment_intent_id="pi_a", account="acct_A", paid=True
    )
    seed(stripe_fake, pi("pi_a"), "acct_A")
    seed(stripe_fake, pi("pi_stray_a"), "acct_A")
    seed(stripe_fake, pi("pi_stray_b"), "acct_B")
    seed(stripe_fake, pi("pi_platform"), "")  # not an account we charge through: not asked

    report = reconcile_day(session_factory, stripe_fake, DAY, trigger="test", now=LATER)

    by_account = {a.stripe_account: (a.listed, a.matched, a.orphans) for a in report.accounts}
    assert by_account == {"acct_A": (2, 1, 1), "acct_B": (1, 0, 1)}
    assert sorted(findings(session_factory)) == [
        ("acct_A", "pi_stray_a", "orphan"),
        ("acct_B", "pi_stray_b", "orphan"),
    ]
    assert {call[0] for call in list_calls(stripe_fake)} == {"acct_A", "acct_B"}


def test_stripe_down_for_one_account_is_recorded_on_its_run_and_the_other_still_runs(
    session_factory: sessionmaker[Session], stripe_fake: FakeStripe
) -> None:
    connect(session_factory, "acct_B")
    charged_invoice(
        session_factory, status="succeeded", payment_intent_id="pi_a", account="acct_A", paid=True
    )
    stripe_fake.server.fail_next("5xx", "list_payment_intents")  # the first account's listing: acct_A's
    seed(stripe_fake, pi("pi_stray_b"), "acct_B")

    report = reconcile_day(session_factory, stripe_fake, DAY, trigger="test", now=LATER)

    assert [a.stripe_account for a in report.failed] == ["acct_A"]
    assert run_row(session_factory, "acct_A").error == "Stripe: An unknown error occurred (injected)"
    assert run_row(session_factory, "acct_B").orphans == 1
    # The next night takes the day again, until a run of it goes through; a week later it gives up.
    with session_factory() as s:
        assert days_to_retry(s, before=DAY + timedelta(days=1)) == [DAY]
        assert days_to_retry(s, before=DAY) == []
        assert days_to_retry(s, before=DAY + timedelta(days=8)) == []
    reconcile_day(session_factory, stripe_fake, DAY, trigger="test", now=LATER)
    assert run_row(session_factory, "acct_A").error is None
    with session_factory() as s:
        assert days_to_retry(s, before=DAY + timedelta(days=1)) == []


def test_days_are_checked(session_factory: sessionmaker[Session], stripe_fake: FakeStripe) -> None:
    assert parse_day("2026-11-20") == DAY
    for bad in ("2026-13-01", "20261120", "yesterday", "2026-11-20T00:00"):
        with pytest.raises(ReconciliationError, match="expected YYYY-MM-DD"):
            parse_day(bad)
    with pytest.raises(ReconciliationError, match="has not happened yet"):
        reconcile_day(session_factory, stripe_fake, DAY, trigger="test", now=NOON - timedelta(days=1))
    assert yesterday_utc(datetime(2026, 11, 21, 2, 30, tzinfo=UTC)) == DAY


def test_a_day_report_sums_up_its_accounts_in_one_line() -> None:
    from shared.services.reconciliation_records import AccountReport, DayReport

    day = date(2026, 11, 25)
    quiet = DayReport(day, [AccountReport("", day, run_id=1, listed=3, matched=3)])
    assert quiet.summary() == "platform: 3 listed, 3 matched, 0 repaired, 0 orphans, 0 missing"
    assert not quiet.out_of_step
    odd = DayReport(day, [AccountReport("acct_1", day, run_id=2, listed=1, orphans=1, error="timeout")])
    assert odd.summary() == "acct_1: 1 listed, 0 matched, 0 repaired, 1 orphans, 0 missing, error: timeout"
    assert odd.out_of_step
    assert DayReport(day).summary() == "no Stripe account"
