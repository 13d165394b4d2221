"""Cursor pages (the API's lists) and numbered pages (the admin's), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.domain.models import Client
from shared.services.listings import clients_after, clients_page, invoices_after, numbered_page
from tests.support import factories


def test_cursor_pages_return_every_row_once_while_rows_are_inserted(session: Session) -> None:
    owner = factories.client()
    book = [factories.invoice(owner=owner) for _ in range(7)]
    factories.persist(session, *book)
    seen: list[int] = []
    inserted: list[int] = []
    after = None
    while True:
        page = invoices_after(session, client_id=owner.id, limit=3, starting_after=after)
        seen += [i.id for i in page.rows]
        # Between every two pages another invoice arrives (newer: a larger id).
        newcomer = factories.invoice(owner=owner)
        factories.persist(session, newcomer)
        inserted.append(newcomer.id)
        if not page.has_more:
            break
        after = page.rows[-1].id
    assert seen == sorted((i.id for i in book), reverse=True)  # each once, newest first, none inserted
    # The next walk from the top sees the newcomers first.
    top = invoices_after(session, client_id=owner.id, limit=len(inserted))
    assert [i.id for i in top.rows] == sorted(inserted, reverse=True)


def test_invoice_filters_apply_to_cursor_pages(session: Session) -> None:
    owner = factories.client(name="Filter Client")
    paid = factories.invoice(owner=owner, paid=(10_000,))
    auto = factories.invoice(owner=owner, auto_charge=True)
    plain = factories.invoice(owner=owner)
    factories.persist(session, paid, auto, plain)
    assert [i.id for i in invoices_after(session, client_id=owner.id, status="paid").rows] == [paid.id]
    assert [i.id for i in invoices_after(session, client_id=owner.id, auto_charge=True).rows] == [auto.id]
    assert {i.id for i in invoices_after(session, search="filter client").rows} == {
        paid.id,
        auto.id,
        plain.id,
    }
    assert invoices_after(session, search=plain.number).rows == [plain]


def test_client_search_treats_like_wildcards_as_letters(session: Session) -> None:
    ada = factories.client(name="Ada 100% Lovelace")
    alan = factories.client(name="Alan Turing")
    factories.persist(session, ada, alan)
    assert clients_after(session, search="100%").rows == [ada]
    assert clients_after(session, search="%").rows == [ada]
    assert {c.id for c in clients_after(session, search="A").rows} >= {ada.id, alan.id}
    assert clients_after(session, search=alan.email.upper()).rows == [alan]


def test_numbered_client_pages_count_in_sql(session: Session) -> None:
    factories.persist(session, *[factories.client(name=f"Paged {n:02d}") for n in range(30)])
    first = clients_page(session, search="Paged")
    second = clients_page(session, search="Paged", page=2)
    assert (first.total_rows, first.pages, first.has_next) == (30, 2, True)
    assert [c.name for c in first.rows][:2] == ["Paged 00", "Paged 01"]
    assert len(second.rows) == 5 and not second.has_next


# statement_timeout is PostgreSQL's: SQLite counts to the cap whatever it costs.
POSTGRESQL_ONLY = [pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("database_url", POSTGRESQL_ONLY, indirect=True)
def test_a_numbered_page_whose_count_is_too_slow_goes_without_a_total(session: Session) -> None:
    """On PostgreSQL every admin list gives its count up after the invoice list's time limit
    (count_up_to_cap) and still shows its page, as the invoice list does."""
    factories.persist(session, *[factories.client(name=f"Slow {n}") for n in range(4)])
    # Each row costs 20 ms to test, so counting four takes 80 ms: over the 30 ms limit.
    slow = select(Client).where(text("pg_sleep(0.02) IS NOT NULL")).order_by(Client.name, Client.id)
    page = numbered_page(session, slow, page=1)
    assert page.total_rows is None and not page.total_capped
    assert [c.name for c in page.rows] == [f"Slow {n}" for n in range(4)]
    # The time limit ended with the count: the same session runs a slow statement afterwards.
    assert session.scalar(text("SELECT pg_sleep(0.05) IS NOT NULL"))
