"""The invoice list and the batch's due-invoice selection as a large book needs them, on SQLite
and PostgreSQL: pages without a full count, searches by number and client name, paid invoices left out
of the selection in SQL."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.services import invoices as invoice_list
from shared.services.batch import due_page
from shared.services.invoices import list_invoices
from tests.support import factories

TODAY = date(2026, 11, 26)


def book(session: Session, count: int) -> list[int]:
    """`count` invoices due one day apart (the newest first in the list), for one client."""
    owner = factories.client(name="Grace Hopper")
    rows = [factories.invoice(owner=owner, due=TODAY - timedelta(days=n)) for n in range(count)]
    factories.persist(session, *rows)
    return [i.id for i in rows]


def test_pages_follow_due_date_and_tell_whether_more_follow(session: Session) -> None:
    ids = book(session, 5)
    first = list_invoices(session, per_page=2, page=1)
    last = list_invoices(session, per_page=2, page=3)
    assert [r.invoice.id for r in first.rows] == ids[:2]
    assert (first.total_rows, first.pages, first.has_next, first.total_capped) == (5, 3, True, False)
    assert [r.invoice.id for r in last.rows] == ids[4:]
    assert (last.has_next, last.pages) == (False, 3)
    assert list_invoices(session, per_page=2, page=9).rows == []


def test_count_stops_at_the_cap(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(invoice_list, "COUNT_CAP", 3)
    book(session, 5)
    page = list_invoices(session, per_page=2, page=2)
    assert (page.total_rows, page.total_capped, page.has_next) == (3, True, True)
    assert page.pages == 3  # the pages known so far: this one and the next


def test_search_finds_numbers_and_client_names_in_any_case(session: Session) -> None:
    ada, alan = factories.client(name="Ada Lovelace"), factories.client(name="Alan Turing")
    by_ada = factories.invoice(owner=ada)
    by_alan = factories.invoice(owner=alan)
    factories.persist(session, by_ada, by_alan)
    assert [r.invoice.id for r in list_invoices(session, search="lovel").rows] == [by_ada.id]
    assert [r.invoice.id for r in list_invoices(session, search=by_alan.number.lower()).rows] == [by_alan.id]
    assert list_invoices(session, search="nobody").rows == []


def test_status_and_amounts_come_from_the_ledger(session: Session) -> None:
    part = factories.invoice(total=1000, paid=(400,))
    paid = factories.invoice(total=1000, paid=(600, 400))
    factories.persist(session, part, paid)
    rows = {r.invoice.id: r for r in list_invoices(session, status="partially_paid").rows}
    assert list(rows) == [part.id]
    assert (rows[part.id].amount_paid, rows[part.id].amount_due) == (400, 600)
    assert [r.invoice.id for r in list_invoices(session, status="paid").rows] == [paid.id]


def test_due_page_leaves_out_paid_void_and_future_invoices(session: Session) -> None:
    unpaid = factories.invoice(auto_charge=True, due=TODAY)
    partial = factories.invoice(auto_charge=True, due=TODAY - timedelta(days=30), total=1000, paid=(300,))
    refunded = factories.invoice(auto_charge=True, due=TODAY, total=1000, paid=(1000, -200))
    paid = factories.invoice(auto_charge=True, due=TODAY, total=1000, paid=(600, 400))
    void = factories.invoice(auto_charge=True, due=TODAY, void=True)
    tomorrow = factories.invoice(auto_charge=True, due=TODAY + timedelta(days=1))
    manual = factories.invoice(due=TODAY)
    factories.persist(session, unpaid, partial, refunded, paid, void, tomorrow, manual)
    page = due_page(session, TODAY, 0, 2)
    rest = due_page(session, TODAY, page[-1].id, 2)
    assert [i.id for i in page + rest] == sorted([unpaid.id, partial.id, refunded.id])
    assert due_page(session, TODAY, rest[-1].id, 2) == []


def test_due_page_loads_only_the_attempts_in_flight(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, session.begin():
        inv = factories.invoice(auto_charge=True, due=TODAY)
        factories.persist(session, inv, factories.attempt(inv, "failed"), factories.attempt(inv, "queued"))
    with session_factory() as session:
        (loaded,) = due_page(session, TODAY, 0, 10)
        assert [a.status for a in loaded.charge_attempts] == ["queued"]


def test_a_derived_status_filter_pages_without_counting(session: Session) -> None:
    parts = [factories.invoice(total=1000, paid=(400,), due=TODAY - timedelta(days=n)) for n in (1, 2, 3)]
    factories.persist(session, *parts)
    for filters in ({"status": "partially_paid"}, {"due": "overdue"}):
        first = list_invoices(session, per_page=2, page=1, today=TODAY, **filters)
        assert first.total_rows is None  # no count: ledgers would be read to find it
        assert (len(first.rows), first.has_next, first.pages) == (2, True, 2)
        assert not list_invoices(session, per_page=2, page=2, today=TODAY, **filters).has_next
