"""Creating and voiding invoices, with every rule checked before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import Select, case, func, or_, select
from sqlalchemy.orm import Session, selectinload

from shared import audit
from shared.ledger import amount_paid_subquery
from shared.models import INVOICE_PAYMENT_METHODS, Client, Invoice
from shared.money import STRIPE_MAXIMUM_AMOUNT, MoneyError, normalize_currency


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


@dataclass(frozen=True)
class InvoicePage:
    rows: list[InvoiceRow]
    page: int
    per_page: int
    total_rows: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total_rows // self.per_page))


def _status_expression(paid):  # type: ignore[no-untyped-def]
    """The ledger status in SQL, so lists can filter on it without loading payments."""
    return case(
        (Invoice.is_void, "void"),
        (paid >= Invoice.total, "paid"),
        (paid > 0, "partially_paid"),
        else_="open",
    )


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
    """One page of invoices with their derived paid amount and status; filters run in the database."""
    paid = amount_paid_subquery()
    status_sql = _status_expression(paid)
    query: Select = select(Invoice, paid.label("paid"), status_sql.label("status")).join(Invoice.client)
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
    if search and search.strip():
        pattern = f"%{search.strip().lower()}%"
        query = query.where(
            or_(func.lower(Invoice.number).like(pattern), func.lower(Client.name).like(pattern))
        )
    total_rows = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    page = max(1, page)
    rows = session.execute(
        query.options(selectinload(Invoice.client))
        .order_by(Invoice.due_date.desc(), Invoice.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    ).all()
    return InvoicePage(
        rows=[InvoiceRow(inv, int(p or 0), str(st)) for inv, p, st in rows],
        page=page,
        per_page=per_page,
        total_rows=int(total_rows),
    )
