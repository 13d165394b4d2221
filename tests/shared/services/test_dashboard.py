"""The dashboard's figures from a small book, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session

from shared.domain.models import Dispute, Payment, ReconciliationFinding, ReconciliationRun
from shared.services.dashboard import build_dashboard
from tests.support import factories

# A Friday: the week began on Monday November 30, the month on Tuesday December 1.
NOW = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
TODAY = NOW.date()


def paid(invoice, amount: int, when: datetime) -> Payment:  # type: ignore[no-untyped-def]
    return Payment(invoice=invoice, amount=amount, method="cash", received_at=when, reference="")


def test_collected_today_week_and_month_per_currency(session: Session) -> None:
    usd = factories.invoice(total=100_000, currency="usd")
    jpy = factories.invoice(total=50_000, currency="jpy")
    factories.persist(
        session,
        usd,
        jpy,
        paid(usd, 1_000, NOW - timedelta(hours=2)),  # today
        paid(usd, 2_000, datetime(2026, 12, 2, 9, tzinfo=UTC)),  # Wednesday: this week and month
        paid(usd, 4_000, datetime(2026, 12, 1, 9, tzinfo=UTC)),  # the 1st: this week and month
        paid(usd, 8_000, datetime(2026, 11, 30, 9, tzinfo=UTC)),  # Monday the 30th: this week, last month
        paid(usd, -500, NOW - timedelta(hours=1)),  # a refund today
        paid(jpy, 3_000, NOW - timedelta(minutes=5)),
    )
    board = build_dashboard(session, now=NOW)
    assert board.collected["today"] == {"usd": 500, "jpy": 3_000}
    # The week (from Monday Nov 30) holds the 30th; the month (from Dec 1) does not.
    assert board.collected["week"] == {"usd": 14_500, "jpy": 3_000}
    assert board.collected["month"] == {"usd": 6_500, "jpy": 3_000}
    assert board.currencies == ["jpy", "usd"]


def test_due_today_and_overdue_by_auto_charge_leave_out_paid_and_void(session: Session) -> None:
    owner = factories.client()
    rows = [
        factories.invoice(owner=owner, total=1_000, due=TODAY, auto_charge=True),
        factories.invoice(owner=owner, total=2_000, due=TODAY - timedelta(days=3), auto_charge=True),
        factories.invoice(owner=owner, total=3_000, due=TODAY - timedelta(days=40), paid=(1_000,)),
        factories.invoice(owner=owner, total=4_000, due=TODAY - timedelta(days=3), paid=(4_000,)),
        factories.invoice(owner=owner, total=5_000, due=TODAY - timedelta(days=3), void=True),
        factories.invoice(owner=owner, total=6_000, due=TODAY + timedelta(days=1)),
    ]
    factories.persist(session, *rows)
    got = {
        (r.bucket, r.auto_charge, r.currency): (r.invoices, r.amount_due)
        for r in build_dashboard(session, now=NOW).receivables
    }
    assert got == {
        ("due_today", True, "usd"): (1, 1_000),
        ("overdue", True, "usd"): (1, 2_000),
        ("overdue", False, "usd"): (1, 2_000),
    }


def test_outcomes_per_day_top_declines_and_what_needs_a_person(session: Session) -> None:
    invoice, other = factories.invoice(), factories.invoice()
    attempts = []
    for status, days_ago, code in [
        ("succeeded", 0, None),
        ("succeeded", 0, None),
        ("failed", 0, "insufficient_funds"),
        ("failed", 1, "insufficient_funds"),
        ("failed", 2, "expired_card"),
        ("failed", 40, "lost_card"),  # older than 30 days
        ("requires_action", 1, None),
        ("unknown", 0, None),
    ]:
        # One charge in flight per invoice (the database's rule): the unknown one is another invoice's.
        a = factories.attempt(other if status == "unknown" else invoice, status)
        a.decline_code = code
        a.created_at = a.updated_at = NOW - timedelta(days=days_ago)
        attempts.append(a)
    run = ReconciliationRun(day=date(2026, 12, 3), trigger="schedule")
    factories.persist(session, invoice, other, *attempts, run)
    for kind in ("orphan", "repaired"):
        session.add(
            ReconciliationFinding(
                run_id=run.id,
                payment_intent_id=f"pi_{kind}",
                kind=kind,
                amount=100,
                currency="usd",
                found_at=NOW - timedelta(days=1),
            )
        )
    session.flush()
    board = build_dashboard(session, now=NOW)
    assert len(board.outcome_days) == 30 and board.outcome_days[-1] == "2026-12-04"
    assert board.outcomes["succeeded"][-1] == 2
    assert board.outcomes["failed"][-3:] == [1, 1, 1]
    assert board.outcomes["requires_action"][-2] == 1
    assert board.declines == [("insufficient_funds", 2), ("expired_card", 1)]
    needs = {a.key: a.count for a in board.attention}
    assert needs == {
        "unknown_charges": 1,
        "waiting_for_authentication": 1,
        "open_disputes": 0,
        "reconciliation_findings": 1,
    }


def test_open_disputes_need_a_person_and_link_to_the_charges_page(session: Session) -> None:
    invoice = factories.invoice(paid=(10_000,))
    attempts = [factories.attempt(invoice, "succeeded") for _ in range(3)]
    factories.persist(session, invoice, *attempts)
    statuses = ("needs_response", "under_review", "won")
    for n, (attempt, status) in enumerate(zip(attempts, statuses, strict=True)):
        session.add(
            Dispute(
                stripe_dispute_id=f"dp_{n}",
                invoice_id=invoice.id,
                charge_attempt_id=attempt.id,
                amount=1_000,
                currency="usd",
                reason="fraudulent",
                status=status,
            )
        )
    session.flush()
    [disputes] = [a for a in build_dashboard(session, now=NOW).attention if a.key == "open_disputes"]
    # Won (closed) disputes need nobody; the two still open do, listed on the Charges page.
    assert disputes.count == 2
    assert (disputes.endpoint, disputes.arguments) == ("admin.charges", {"_anchor": "disputes"})


def test_a_paid_invoice_leaves_the_receivables_when_its_ledger_covers_it(session: Session) -> None:
    """The ledger sum on the invoice follows every payment written, changed or deleted (the triggers
    of migration 0015), so the due figures stay exact without reading the payments."""
    invoice = factories.invoice(total=5_000, due=TODAY - timedelta(days=2), auto_charge=True)
    factories.persist(session, invoice)

    def due() -> list[tuple[int, int]]:
        return [(r.invoices, r.amount_due) for r in build_dashboard(session, now=NOW).receivables]

    assert due() == [(1, 5_000)]
    first = paid(invoice, 2_000, NOW)
    session.add(first)
    session.flush()
    assert due() == [(1, 3_000)]
    second = paid(invoice, 3_000, NOW)
    session.add(second)
    session.flush()
    assert due() == []
    second.amount = 2_500  # an entry corrected
    session.flush()
    assert due() == [(1, 500)]
    refund = paid(invoice, -1_000, NOW)
    session.add(refund)
    session.flush()
    assert due() == [(1, 1_500)]
    session.delete(first)
    session.delete(refund)
    session.flush()
    assert due() == [(1, 2_500)]


def test_collected_follows_the_invoices_currency_the_database_copies_to_each_entry(session: Session) -> None:
    """payment.currency is the invoice's, copied by the triggers of migration 0016 (the application never
    sets it), also when an entry moves to another invoice or an invoice's currency is corrected."""
    usd = factories.invoice(total=10_000, currency="usd")
    eur = factories.invoice(total=10_000, currency="eur")
    entry = paid(usd, 1_000, NOW)
    factories.persist(session, usd, eur, entry)
    assert build_dashboard(session, now=NOW).collected["today"] == {"usd": 1_000}
    entry.invoice_id = eur.id
    session.flush()
    assert build_dashboard(session, now=NOW).collected["today"] == {"eur": 1_000}
    eur.currency = "gbp"
    session.flush()
    assert build_dashboard(session, now=NOW).collected["today"] == {"gbp": 1_000}
