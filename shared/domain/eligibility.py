"""Why an invoice can or cannot be charged now.

`charge_blockers()` is the single source of the answer: the greyed button's tooltip, the API's 409
and the worker's last look before calling Stripe all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.domain.ledger import balance
from shared.domain.models import ChargeAttempt, Invoice, Settings
from shared.domain.money import format_money, minimum_charge
from shared.domain.states import AttemptStatus


class BlockerCode(StrEnum):
    STRIPE_NOT_CONNECTED = "stripe_not_connected"
    CARD_PAYMENTS_DISABLED = "card_payments_disabled"
    PAYMENT_METHOD_NOT_ONLINE_CARD = "payment_method_not_online_card"
    NO_SAVED_CARD = "no_saved_card"
    NOTHING_DUE = "nothing_due"
    INVOICE_VOID = "invoice_void"
    CHARGE_IN_PROGRESS = "charge_in_progress"
    AWAITING_CLIENT_AUTHENTICATION = "awaiting_client_authentication"
    AMOUNT_BELOW_MINIMUM = "amount_below_minimum"


@dataclass(frozen=True)
class Blocker:
    code: BlockerCode
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


# What a second charge request meets once the database's one-charge-in-flight index refused it.
CHARGE_ALREADY_IN_PROGRESS = Blocker(
    BlockerCode.CHARGE_IN_PROGRESS, "A charge for this invoice is already in progress."
)


def in_flight_attempt(invoice: Invoice) -> ChargeAttempt | None:
    return next((a for a in invoice.charge_attempts if not a.status_enum.is_terminal), None)


def charge_blockers(
    invoice: Invoice,
    settings: Settings,
    *,
    amount: int | None = None,
    ignore_attempt_id: str | None = None,
) -> list[Blocker]:
    """Every reason the invoice cannot be card-charged now; empty means it can.

    `amount` is the partial amount asked for (default: all that is due). `ignore_attempt_id` lets the
    worker's last look leave out the attempt it is itself running.
    """
    blockers: list[Blocker] = []

    def block(code: BlockerCode, message: str) -> None:
        blockers.append(Blocker(code, message))

    if not settings.stripe_connected:
        block(
            BlockerCode.STRIPE_NOT_CONNECTED,
            "Stripe is not connected: connect it in Settings before charging cards.",
        )
    if not settings.online_card_payments_enabled:
        block(
            BlockerCode.CARD_PAYMENTS_DISABLED,
            "Online card payments are turned off in Settings.",
        )
    if invoice.payment_method != "online_card":
        method = invoice.payment_method.replace("_", " ")
        block(
            BlockerCode.PAYMENT_METHOD_NOT_ONLINE_CARD,
            f"This invoice is set to be paid by {method}, not by online card payment.",
        )
    if invoice.client.default_card is None:
        block(BlockerCode.NO_SAVED_CARD, f"{invoice.client.name} has no saved card.")
    if invoice.is_void:
        block(BlockerCode.INVOICE_VOID, "The invoice is void.")
    due = balance(invoice).amount_due
    if not invoice.is_void and due <= 0:
        block(BlockerCode.NOTHING_DUE, "Nothing is due: the invoice is paid.")

    attempt = in_flight_attempt(invoice)
    if attempt is not None and attempt.id != ignore_attempt_id:
        if attempt.status_enum is AttemptStatus.REQUIRES_ACTION:
            block(
                BlockerCode.AWAITING_CLIENT_AUTHENTICATION,
                "A charge is waiting for the client to authenticate it with their bank.",
            )
        else:
            block(
                BlockerCode.CHARGE_IN_PROGRESS,
                f"A charge of {format_money(attempt.amount, attempt.currency)} is already in progress.",
            )

    wanted = due if amount is None else amount
    minimum = minimum_charge(invoice.currency)
    if due > 0 and 0 < wanted < minimum:
        block(
            BlockerCode.AMOUNT_BELOW_MINIMUM,
            f"{format_money(wanted, invoice.currency)} is below Stripe's minimum card charge of "
            f"{format_money(minimum, invoice.currency)}.",
        )
    return blockers
