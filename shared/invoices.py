"""Creating and voiding invoices, with every rule checked before anything is written."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import audit
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
