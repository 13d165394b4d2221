"""Changing an invoice after it was created: payment method, auto-charge, due date, total, void.

Each change is checked against the ledger and the charges before anything is written, and each field
that changes leaves one audit entry (who, from, to) that the invoice's timeline shows. The caller holds
the invoice locked (charge_requests.load_invoice_for_charge(lock=True)), the same lock a charge request
takes, so a change and a charge request never interleave.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from shared.domain.eligibility import in_flight_attempt
from shared.domain.ledger import balance
from shared.domain.models import INVOICE_PAYMENT_METHODS, Invoice
from shared.domain.money import STRIPE_MAXIMUM_AMOUNT
from shared.services import audit
from shared.services.invoices import InvoiceError


class RefusalCode(StrEnum):
    CHARGE_IN_PROGRESS = "charge_in_progress"
    INVOICE_VOID = "invoice_void"
    INVOICE_HAS_PAYMENTS = "invoice_has_payments"


class InvoiceChangeRefused(Exception):
    """The change is well formed but the invoice's state does not allow it now (HTTP 409)."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class InvoiceChanges:
    """What to change; None leaves a field as it is."""

    payment_method: str | None = None
    auto_charge: bool | None = None
    due_date: date | None = None
    total: int | None = None
    void: bool | None = None


def _check_values(changes: InvoiceChanges) -> None:
    if changes.payment_method is not None and changes.payment_method not in INVOICE_PAYMENT_METHODS:
        raise InvoiceError(f"payment_method must be one of {', '.join(INVOICE_PAYMENT_METHODS)}.")
    total = changes.total
    if total is not None:
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise InvoiceError("total must be a positive whole number of minor units (1000 is $10.00).")
        if total > STRIPE_MAXIMUM_AMOUNT:
            raise InvoiceError(f"total may be at most {STRIPE_MAXIMUM_AMOUNT} minor units.")


def _refusal(invoice: Invoice, changed: dict[str, tuple[object, object]]) -> InvoiceChangeRefused | None:
    """Why the invoice's state forbids these changes, or None when it allows them."""
    if invoice.is_void:
        return InvoiceChangeRefused(
            RefusalCode.INVOICE_VOID, f"Invoice {invoice.number} is void: it can no longer be changed."
        )
    # Auto-charge and the due date do not touch a charge already running; the rest would change what it
    # is charging for (the worker's last look would cancel it, or worse, charge a voided invoice).
    in_flight = in_flight_attempt(invoice)
    touching_charge = changed.keys() & {"payment_method", "total", "void"}
    if in_flight is not None and touching_charge:
        names = ", ".join(sorted(name.replace("_", " ") for name in touching_charge))
        return InvoiceChangeRefused(
            RefusalCode.CHARGE_IN_PROGRESS,
            f"A charge for this invoice is in progress ({in_flight.status.replace('_', ' ')}): its {names} "
            "cannot change until it ends. Cancel it or wait for its outcome.",
        )
    paid = balance(invoice).amount_paid
    if "void" in changed and paid != 0:
        return InvoiceChangeRefused(
            RefusalCode.INVOICE_HAS_PAYMENTS,
            f"Invoice {invoice.number} has payments recorded: only an invoice with nothing paid can be "
            "voided. Refund the payments first.",
        )
    if "total" in changed and invoice.payments:
        return InvoiceChangeRefused(
            RefusalCode.INVOICE_HAS_PAYMENTS,
            f"Invoice {invoice.number} has payments recorded: its total can no longer change.",
        )
    return None


def change_invoice(session: Session, invoice: Invoice, changes: InvoiceChanges, *, actor: str) -> list[str]:
    """Apply the changes that differ from the invoice as it is; answer the names of the fields changed.

    Raises InvoiceError for a value that is not valid and InvoiceChangeRefused when the invoice's state
    forbids the change; nothing is written in either case.
    """
    _check_values(changes)
    current = {
        "payment_method": invoice.payment_method,
        "auto_charge": invoice.auto_charge,
        "due_date": invoice.due_date,
        "total": invoice.total,
        "void": invoice.is_void,
    }
    wanted = {name: getattr(changes, name) for name in current}
    changed = {
        name: (current[name], value)
        for name, value in wanted.items()
        if value is not None and value != current[name]
    }
    if not changed:
        return []
    refused = _refusal(invoice, changed)
    if refused is not None:
        raise refused
    for name, (before, after) in changed.items():
        if name == "void":
            invoice.is_void = True  # a void invoice stays void: _refusal refuses any change to one
            audit.record(session, actor, "invoice.voided", invoice_id=invoice.id)
            continue
        setattr(invoice, name, after)
        detail: dict[str, Any] = {"from": _shown(before), "to": _shown(after)}
        audit.record(session, actor, f"invoice.{name}_changed", invoice_id=invoice.id, **detail)
    session.flush()
    return list(changed)


def _shown(value: object) -> object:
    """A value as the audit entry's JSON detail keeps it."""
    if isinstance(value, date):
        return value.isoformat()
    return value
