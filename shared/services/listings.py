"""Lists a page at a time: cursor pages for the API, numbered pages for the admin's screens.

Cursor pages are ordered by id, newest first, and the page after a row holds only rows with a smaller
id. A row inserted between two requests gets a larger id than any seen, so it never shifts a later page:
a reader walking the pages sees every row that existed when it started exactly once.

Numbered pages (the admin's lists) count their rows in SQL, capped and timed like the invoice list's
count (shared.services.invoices.count_up_to_cap), and read one row more than the page to know whether a
next exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session, selectinload

from shared.domain.models import ChargeAttempt, Client, Invoice
from shared.services.invoices import COUNT_CAP, NumberedPage, count_up_to_cap, filter_invoices

DEFAULT_PAGE_LIMIT = 25
MAX_PAGE_LIMIT = 100
MAX_PAGE_NUMBER = 100_000  # keeps OFFSET a number the database takes

Row = TypeVar("Row")


@dataclass(frozen=True)
class CursorPage(Generic[Row]):
    rows: list[Row]
    has_more: bool


def page_number(raw: str | None) -> int:
    """A page number from a query string: 1 unless it is a whole number, at most MAX_PAGE_NUMBER."""
    text = (raw or "").strip()
    if not (text.isascii() and text.isdigit() and len(text) < 10):
        return 1
    return min(max(1, int(text)), MAX_PAGE_NUMBER)


def _contains(text: str | None) -> str | None:
    cleaned = (text or "").strip()[:100]
    if not cleaned:
        return None
    # LIKE's own wildcards in what a person typed are letters, not patterns.
    escaped = cleaned.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _cursor_page(
    session: Session, query: Select, id_column: Any, limit: int, after: int | None
) -> CursorPage:
    if after is not None:
        query = query.where(id_column < after)
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    return CursorPage(rows=rows[:limit], has_more=len(rows) > limit)


def _clients_query(search: str | None) -> Select:
    query = select(Client).options(selectinload(Client.cards))
    pattern = _contains(search)
    if pattern is not None:
        query = query.where(
            or_(Client.name.ilike(pattern, escape="\\"), Client.email.ilike(pattern, escape="\\"))
        )
    return query


def clients_after(
    session: Session,
    *,
    search: str | None = None,
    limit: int = DEFAULT_PAGE_LIMIT,
    starting_after: int | None = None,
) -> CursorPage[Client]:
    return _cursor_page(session, _clients_query(search), Client.id, limit, starting_after)


def invoices_after(
    session: Session,
    *,
    status: str | None = None,
    due: str | None = None,
    auto_charge: bool | None = None,
    client_id: int | None = None,
    search: str | None = None,
    today: date | None = None,
    limit: int = DEFAULT_PAGE_LIMIT,
    starting_after: int | None = None,
) -> CursorPage[Invoice]:
    query = filter_invoices(
        select(Invoice).options(
            selectinload(Invoice.client).selectinload(Client.cards),
            selectinload(Invoice.payments),
            selectinload(Invoice.charge_attempts),
            selectinload(Invoice.disputes),
        ),
        status=status,
        due=due,
        auto_charge=auto_charge,
        client_id=client_id,
        today=today,
    )
    return _cursor_page(session, search_invoices(query, search), Invoice.id, limit, starting_after)


def search_invoices(query: Select, search: str | None) -> Select:
    """The query narrowed to invoices whose number or client's name contains `search` (any case)."""
    pattern = _contains(search)
    if pattern is None:
        return query
    return query.where(
        or_(
            Invoice.number.ilike(pattern, escape="\\"),
            Invoice.client_id.in_(select(Client.id).where(Client.name.ilike(pattern, escape="\\"))),
        )
    )


def numbered_page(
    session: Session, query: Select, *, page: int, per_page: int = DEFAULT_PAGE_LIMIT
) -> NumberedPage:
    """One page of `query` (already ordered), with the count of its rows done in SQL up to COUNT_CAP (None
    when PostgreSQL needs longer than the invoice list allows: shared.services.invoices.count_up_to_cap)."""
    page = min(max(1, page), MAX_PAGE_NUMBER)
    counted = count_up_to_cap(session, query.order_by(None))
    rows = list(session.scalars(query.limit(per_page + 1).offset((page - 1) * per_page)))
    return NumberedPage(
        rows=rows[:per_page],
        page=page,
        per_page=per_page,
        total_rows=None if counted is None else min(counted, COUNT_CAP),
        has_next=len(rows) > per_page,
        total_capped=counted is not None and counted > COUNT_CAP,
    )


def clients_page(session: Session, *, search: str | None = None, page: int = 1) -> NumberedPage[Client]:
    return numbered_page(session, _clients_query(search).order_by(Client.name, Client.id), page=page)


RECENT_CHARGES_SHOWN = 20


def recent_charges_of_client(
    session: Session, client_id: int, *, limit: int = RECENT_CHARGES_SHOWN
) -> list[ChargeAttempt]:
    """The client's latest charges, newest first (off the charge_attempt.invoice_id index per invoice)."""
    return list(
        session.scalars(
            select(ChargeAttempt)
            .join(Invoice, Invoice.id == ChargeAttempt.invoice_id)
            .where(Invoice.client_id == client_id)
            .options(selectinload(ChargeAttempt.invoice))
            .order_by(ChargeAttempt.created_at.desc(), ChargeAttempt.id)
            .limit(limit)
        )
    )
