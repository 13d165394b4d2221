"""Creating and voiding invoices, with every rule checked before anything is written."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Generic, TypeVar

from sqlalchemy import Select, case, func, select, text, union
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, selectinload

from shared.domain.models import INVOICE_PAYMENT_METHODS, Client, Invoice, Payment
from shared.domain.money import STRIPE_MAXIMUM_AMOUNT, MoneyError, normalize_currency
from shared.services import audit

# Control characters (CR, LF, tab, NUL, ...) and the Unicode line and paragraph separators.
LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})


class InvoiceError(ValueError):
    """Bad invoice input; the message is fit to show to a person."""


def create_invoice(
    session: Session,
    client: Client,
    *,
    number: str,
    currency: str,
    total: int,
    due_date: date,
    payment_method: str = "online_card",
    auto_charge: bool = False,
    description: str = "",
    actor: str,
) -> Invoice:
    clean_number = (number or "").strip()
    if not clean_number or len(clean_number) > 64:
        raise InvoiceError("An invoice needs a number of 1 to 64 characters.")
    if any(unicodedata.category(char) in LINE_BREAKING for char in clean_number):
        # The number goes into email subjects, where a line break would make every email fail.
        raise InvoiceError("An invoice number is one line: no line breaks, tabs or control characters.")
    try:
        code = normalize_currency(currency)
    except MoneyError as exc:
        raise InvoiceError(str(exc)) from exc
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        raise InvoiceError("total must be a positive whole number of minor units (1000 is $10.00).")
    if total > STRIPE_MAXIMUM_AMOUNT:
        raise InvoiceError(f"total may be at most {STRIPE_MAXIMUM_AMOUNT} minor units.")
    if payment_method not in INVOICE_PAYMENT_METHODS:
        raise InvoiceError(f"payment_method must be one of {', '.join(INVOICE_PAYMENT_METHODS)}.")
    if session.scalar(select(Invoice.id).where(Invoice.number == clean_number)) is not None:
        raise InvoiceError(f"Invoice number {clean_number} is already used.")
    invoice = Invoice(
        number=clean_number,
        client=client,
        currency=code,
        total=total,
        due_date=due_date,
        payment_method=payment_method,
        auto_charge=bool(auto_charge),
        description=(description or "").strip()[:500],
    )
    session.add(invoice)
    session.flush()
    audit.record(session, actor, "invoice.created", invoice_id=invoice.id, number=clean_number)
    return invoice


def void_invoice(session: Session, invoice: Invoice, *, actor: str) -> Invoice:
    if not invoice.is_void:
        invoice.is_void = True
        audit.record(session, actor, "invoice.voided", invoice_id=invoice.id)
        session.flush()
    return invoice


INVOICE_STATUSES = ("open", "partially_paid", "paid", "void")
DUE_FILTERS = ("overdue", "today", "upcoming")


@dataclass(frozen=True)
class InvoiceRow:
    invoice: Invoice
    amount_paid: int
    status: str

    @property
    def amount_due(self) -> int:
        return 0 if self.status == "void" else max(self.invoice.total - self.amount_paid, 0)


# Counting stops here: an exact count of a million filtered rows costs more than the page itself.
COUNT_CAP = 1000
# On PostgreSQL a count that takes longer is given up: a rare derived status (partially paid, say)
# can need every invoice's ledger read before a thousand are found, and the page needs no count.
COUNT_TIMEOUT_MS = 30
QUERY_CANCELED = "57014"


Row = TypeVar("Row")


@dataclass(frozen=True)
class NumberedPage(Generic[Row]):
    """One page of a list, numbered, for web/templates/macros/pagination.html."""

    rows: list[Row]
    page: int
    per_page: int
    # Rows matching the filters, counted up to COUNT_CAP (total_capped: there are more); None when
    # counting took too long.
    total_rows: int | None
    has_next: bool = False
    total_capped: bool = False

    @property
    def pages(self) -> int:
        """The number of pages, or when the count is capped or unknown the number known so far."""
        counted = -(-(self.total_rows or 0) // self.per_page)
        return max(1, counted, self.page + (1 if self.has_next else 0))


InvoicePage = NumberedPage[InvoiceRow]


def count_up_to_cap(session: Session, matching: Select) -> int | None:
    """How many rows match, up to COUNT_CAP + 1; None when PostgreSQL needs over COUNT_TIMEOUT_MS."""
    query = select(func.count()).select_from(matching.limit(COUNT_CAP + 1).subquery())
    if session.get_bind().dialect.name != "postgresql":
        return int(session.scalar(query) or 0)
    # SET LOCAL inside a savepoint that is always rolled back: the time limit ends with the count.
    savepoint = session.begin_nested()
    try:
        session.execute(text(f"SET LOCAL statement_timeout = {COUNT_TIMEOUT_MS}"))
        return int(session.scalar(query) or 0)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != QUERY_CANCELED:
            raise
        return None
    finally:
        savepoint.rollback()


def _status_expression(paid):  # type: ignore[no-untyped-def]
    """The ledger status in SQL, so lists can filter on it without loading payments."""
    return case(
        (Invoice.is_void, "void"),
        (paid >= Invoice.total, "paid"),
        (paid > 0, "partially_paid"),
        else_="open",
    )


def filter_invoices(
    query: Select,
    *,
    status: str | None = None,
    due: str | None = None,
    auto_charge: bool | None = None,
    client_id: int | None = None,
    today: date | None = None,
) -> Select:
    """The query narrowed to the invoices matching the filters (None: any), all in SQL."""
    status_sql = _status_expression(amount_paid_subquery())
    if status in INVOICE_STATUSES:
        query = query.where(status_sql == status)
    day = today or date.today()
    if due == "overdue":
        query = query.where(Invoice.due_date < day, status_sql.in_(("open", "partially_paid")))
    elif due == "today":
        query = query.where(Invoice.due_date == day)
    elif due == "upcoming":
        query = query.where(Invoice.due_date > day)
    if auto_charge is not None:
        query = query.where(Invoice.auto_charge.is_(auto_charge))
    if client_id is not None:
        query = query.where(Invoice.client_id == client_id)
    return query


def list_invoices(
    session: Session,
    *,
    status: str | None = None,
    due: str | None = None,
    auto_charge: bool | None = None,
    search: str | None = None,
    client_id: int | None = None,
    today: date | None = None,
    page: int = 1,
    per_page: int = 25,
) -> InvoicePage:
    """One page of invoices with their derived paid amount and status; filters run in the database.

    Built for a large book: the page's ids are found first (off the (due_date, id) index when only the
    order matters), and only those rows are then read with their paid amount; the count stops at
    COUNT_CAP; a search looks up matching numbers and client names (trigram indexes on PostgreSQL).
    """
    paid = amount_paid_subquery()
    status_sql = _status_expression(paid)
    matching = filter_invoices(
        select(Invoice.id, Invoice.due_date),
        status=status,
        due=due,
        auto_charge=auto_charge,
        client_id=client_id,
        today=today,
    )
    found = matching.subquery()
    if search and search.strip():
        pattern = f"%{search.strip()}%"
        # Two lookups joined by UNION, not one OR across the join: each can use its own index, and the
        # client's invoices come with their due dates off (client_id, due_date, id) alone.
        found = union(
            matching.where(Invoice.number.ilike(pattern)),
            matching.join(Invoice.client).where(Client.name.ilike(pattern)),
        ).subquery()
    # A status (or "overdue") is derived from each invoice's ledger: counting its matches reads ledgers
    # until a thousand are found, the slowest part of the page by far; such pages go without a total.
    derived_filter = status in INVOICE_STATUSES or due == "overdue"
    counted = None if derived_filter else count_up_to_cap(session, select(found.c.id))
    page = max(1, page)
    # One row more than the page tells whether a next page exists without counting them all.
    ids = list(
        session.scalars(
            select(found.c.id)
            .order_by(found.c.due_date.desc(), found.c.id.desc())
            .limit(per_page + 1)
            .offset((page - 1) * per_page)
        )
    )
    has_next = len(ids) > per_page
    ids = ids[:per_page]
    rows = (
        session.execute(
            select(Invoice, paid.label("paid"), status_sql.label("status"))
            .where(Invoice.id.in_(ids))
            .options(selectinload(Invoice.client))
            .order_by(Invoice.due_date.desc(), Invoice.id.desc())
        ).all()
        if ids
        else []
    )
    return InvoicePage(
        rows=[InvoiceRow(inv, int(p or 0), str(st)) for inv, p, st in rows],
        page=page,
        per_page=per_page,
        total_rows=None if counted is None else min(counted, COUNT_CAP),
        has_next=has_next,
        total_capped=counted is not None and counted > COUNT_CAP,
    )


def amount_paid_subquery():  # type: ignore[no-untyped-def]
    """SQL for the sum of an invoice's ledger, for lists that must not load every payment."""
    return (
        select(func.coalesce(func.sum(Payment.amount), 0))
        .where(Payment.invoice_id == Invoice.id)
        .correlate(Invoice)
        .scalar_subquery()
    )
