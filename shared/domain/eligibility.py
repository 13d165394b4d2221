"""Why an invoice can or cannot be charged now.

`charge_blockers()` is the single source of the answer: the greyed button's tooltip, the API's 409
and the worker's last look before calling Stripe all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.domain.ledger import balance
from shared.domain.models import Card, ChargeAttempt, Client, Dispute, Invoice, Settings
from shared.domain.money import format_money, minimum_charge
from shared.domain.refunds import OPEN_DISPUTE_STATUSES
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
    # Stripe refused the key (401) or the account (403) when the connection was last verified.
    STRIPE_CONNECTION_REFUSED = "stripe_connection_refused"
    # The connected account cannot take card payments (charges_enabled false at GET /v1/account).
    STRIPE_CHARGES_DISABLED = "stripe_charges_disabled"
    # The client's cards were all saved under another Stripe account or mode than the connection's.
    CARD_SAVED_UNDER_OTHER_ACCOUNT = "card_saved_under_other_account"
    # A card payment of the invoice is disputed and the dispute is not closed: the withdrawn funds raise
    # what is due, but charging the card again for them goes against the card networks' rules.
    CHARGE_DISPUTED = "charge_disputed"


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


CARD_ELSEWHERE_MESSAGE = "saved under another Stripe account: ask the client to add it again"


def usable_card(client: Client, settings: Settings) -> Card | None:
    """The card a charge uses: the default one if it lives where the connection charges (account and
    mode), else the newest that does. Before any verification (no place known) the default one."""
    place = settings.verified_place
    if place is None:
        return client.default_card
    default = client.default_card
    if default is not None and default.lives_at(place):
        return default
    return next((card for card in reversed(client.cards) if card.lives_at(place)), None)


def connection_blocker(settings: Settings) -> Blocker | None:
    """Why Stripe cannot be charged at all now, or None."""
    if settings.stripe_problem_code:
        try:
            code = BlockerCode(settings.stripe_problem_code)
        except ValueError:
            code = BlockerCode.STRIPE_NOT_CONNECTED
        return Blocker(
            code, settings.stripe_problem or "Stripe refused the connection: connect again in Settings."
        )
    if not settings.stripe_connected:
        return Blocker(
            BlockerCode.STRIPE_NOT_CONNECTED,
            "Stripe is not connected: connect it in Settings before charging cards.",
        )
    if settings.stripe_charges_enabled is False:
        name = settings.stripe_account_name or settings.stripe_verified_account_id
        return Blocker(
            BlockerCode.STRIPE_CHARGES_DISABLED,
            f"The Stripe account {name} cannot take card payments yet (charges are not enabled): "
            "finish its setup in Stripe's Dashboard, then connect again.",
        )
    return None


def in_flight_attempt(invoice: Invoice) -> ChargeAttempt | None:
    return next((a for a in invoice.charge_attempts if not a.status_enum.is_terminal), None)


def open_disputes(invoice: Invoice) -> list[Dispute]:
    """The invoice's disputes Stripe has not closed (won, lost, warning_closed, prevented are closed)."""
    return [d for d in invoice.disputes if d.status in OPEN_DISPUTE_STATUSES]


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

    connection = connection_blocker(settings)
    if connection is not None:
        blockers.append(connection)
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
    if not invoice.client.cards:
        block(BlockerCode.NO_SAVED_CARD, f"{invoice.client.name} has no saved card.")
    elif usable_card(invoice.client, settings) is None:
        block(
            BlockerCode.CARD_SAVED_UNDER_OTHER_ACCOUNT,
            f"{invoice.client.name}'s card is {CARD_ELSEWHERE_MESSAGE}.",
        )
    if invoice.is_void:
        block(BlockerCode.INVOICE_VOID, "The invoice is void.")
    disputed = open_disputes(invoice)
    if disputed:
        amounts = " and ".join(format_money(d.amount, d.currency) for d in disputed)
        block(
            BlockerCode.CHARGE_DISPUTED,
            f"A card payment of {amounts} is disputed with the card's bank: the card cannot be charged "
            "again until the dispute is resolved.",
        )
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
