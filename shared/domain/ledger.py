"""The payment ledger: an invoice's balance is its total minus its payments, derived every time.

Payments may be partial, by several methods, on different days; refunds are negative entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.domain.models import LEDGER_METHODS, ChargeAttempt, Invoice
from shared.domain.money import format_money


class InvoiceStatus(StrEnum):
    OPEN = "open"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    VOID = "void"

    @property
    def label(self) -> str:
        return {"open": "Open", "partially_paid": "Partially paid", "paid": "Paid", "void": "Void"}[self]


class LedgerError(ValueError):
    """A payment the ledger refuses; the message is fit to show to a person."""


@dataclass(frozen=True)
class Balance:
    total: int
    amount_paid: int
    currency: str
    is_void: bool

    @property
    def amount_due(self) -> int:
        return max(self.total - self.amount_paid, 0) if not self.is_void else 0

    @property
    def status(self) -> InvoiceStatus:
        if self.is_void:
            return InvoiceStatus.VOID
        if self.amount_paid >= self.total:
            return InvoiceStatus.PAID
        if self.amount_paid > 0:
            return InvoiceStatus.PARTIALLY_PAID
        return InvoiceStatus.OPEN


def balance(invoice: Invoice) -> Balance:
    """The invoice's balance from its loaded ledger entries."""
    paid = sum(payment.amount for payment in invoice.payments)
    return Balance(total=invoice.total, amount_paid=paid, currency=invoice.currency, is_void=invoice.is_void)


def check_payment(
    invoice: Invoice, *, amount: int, method: str, in_flight_charge: ChargeAttempt | None = None
) -> None:
    """Refuse (LedgerError) a manual payment (positive) or manual refund (negative) that cannot be true.

    A card charge in flight counts as already taken: recording cash for the whole balance while the
    card is being charged would end in an overpayment the ledger cannot undo by itself.
    """
    if method not in LEDGER_METHODS:
        raise LedgerError(f"Unknown payment method {method!r}; use one of {', '.join(LEDGER_METHODS)}.")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
        raise LedgerError("A payment needs a non-zero whole amount in minor units.")
    if invoice.is_void:
        raise LedgerError(f"Invoice {invoice.number} is void; it takes no payments.")
    current = balance(invoice)
    if amount > 0:
        reserved = in_flight_charge.amount if in_flight_charge is not None else 0
        room = current.total - current.amount_paid - reserved
        if amount > room:
            detail = (
                f" ({format_money(reserved, invoice.currency)} is being charged to the card right now)"
                if reserved
                else ""
            )
            raise LedgerError(
                f"{format_money(amount, invoice.currency)} is more than the "
                f"{format_money(max(room, 0), invoice.currency)} still due "
                f"on invoice {invoice.number}{detail}."
            )
    elif -amount > current.amount_paid:
        raise LedgerError(
            f"A refund of {format_money(-amount, invoice.currency)} is more than the "
            f"{format_money(current.amount_paid, invoice.currency)} paid on invoice {invoice.number}."
        )
