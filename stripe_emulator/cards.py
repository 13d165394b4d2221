"""Test payment-method tokens and how each behaves when charged (docs.stripe.com/testing).

A token such as ``pm_card_visa`` is not an object of its own: attaching it (or passing it to a
PaymentIntent/SetupIntent) creates a fresh ``pm_...`` whose behaviour is remembered by token name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum


class Auth(Enum):
    """When a card asks for 3-D Secure."""

    NEVER = "never"
    # Every payment, on or off session, needs authentication (4000002760003184).
    ALWAYS = "always"
    # Payments need authentication unless the card was set up for off-session use first (…3155).
    UNLESS_SETUP = "unless_setup"
    # "Already set up": on-session payments authenticate, off-session ones go through (…0446).
    ON_SESSION_ONLY = "on_session_only"


@dataclass(frozen=True)
class Decline:
    code: str
    decline_code: str
    message: str
    advice_code: str | None = None


@dataclass(frozen=True)
class CardSpec:
    token: str
    brand: str
    number: str
    funding: str = "credit"
    country: str = "US"
    auth: Auth = Auth.NEVER
    # Decline applied to charges (after authentication, if any).
    decline: Decline | None = None
    # chargeCustomerFail: setting the card up succeeds, only charges decline.
    setup_passes_check: bool = False
    # After a successful charge the cardholder disputes it, for this reason (createDispute...).
    dispute: str | None = None
    # The dispute is an inquiry (a retrieval request): no funds are withdrawn unless it escalates.
    inquiry: bool = False
    # Refunds of its charges: "pending" (start pending, then succeed) or "fail" (start succeeded,
    # then fail), as pm_card_pendingRefund and pm_card_refundFail do.
    refund: str | None = None

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def fingerprint(self) -> str:
        # Stable per card number, as Stripe's fingerprint is per card.
        return hashlib.sha256(self.number.encode()).hexdigest()[:16]


_GENERIC = Decline("card_declined", "generic_decline", "Your card was declined.", "try_again_later")
_INSUFFICIENT = Decline(
    "card_declined", "insufficient_funds", "Your card has insufficient funds.", "try_again_later"
)

_SPECS: list[CardSpec] = [
    CardSpec("pm_card_visa", "visa", "4242424242424242"),
    CardSpec("pm_card_visa_debit", "visa", "4000056655665556", funding="debit"),
    CardSpec("pm_card_mastercard", "mastercard", "5555555555554444"),
    CardSpec("pm_card_mastercard_debit", "mastercard", "5200828282828210", funding="debit"),
    CardSpec("pm_card_mastercard_prepaid", "mastercard", "5105105105105100", funding="prepaid"),
    CardSpec("pm_card_amex", "amex", "378282246310005"),
    CardSpec("pm_card_discover", "discover", "6011111111111117"),
    CardSpec("pm_card_diners", "diners", "3056930009020004"),
    CardSpec("pm_card_jcb", "jcb", "3566002020360505", country="JP"),
    CardSpec("pm_card_unionpay", "unionpay", "6200000000000005", country="CN"),
    CardSpec("pm_card_threeDSecureOptional", "visa", "4000000000003055"),
    CardSpec("pm_card_chargeDeclined", "visa", "4000000000000002", decline=_GENERIC),
    CardSpec("pm_card_visa_chargeDeclined", "visa", "4000000000000002", decline=_GENERIC),
    CardSpec("pm_card_chargeDeclinedInsufficientFunds", "visa", "4000000000009995", decline=_INSUFFICIENT),
    CardSpec(
        "pm_card_chargeDeclinedLostCard",
        "visa",
        "4000000000009987",
        decline=Decline("card_declined", "lost_card", "Your card was declined.", "do_not_try_again"),
    ),
    CardSpec(
        "pm_card_chargeDeclinedStolenCard",
        "visa",
        "4000000000009979",
        decline=Decline("card_declined", "stolen_card", "Your card was declined.", "do_not_try_again"),
    ),
    CardSpec(
        "pm_card_chargeDeclinedFraudulent",
        "visa",
        "4100000000000019",
        decline=Decline("card_declined", "fraudulent", "Your card was declined.", "do_not_try_again"),
    ),
    CardSpec(
        "pm_card_chargeDeclinedVelocityLimitExceeded",
        "visa",
        "4000000000006975",
        decline=Decline("card_declined", "card_velocity_exceeded", "Your card was declined."),
    ),
    CardSpec(
        "pm_card_chargeDeclinedExpiredCard",
        "visa",
        "4000000000000069",
        decline=Decline("expired_card", "expired_card", "Your card has expired."),
    ),
    CardSpec(
        "pm_card_chargeDeclinedIncorrectCvc",
        "visa",
        "4000000000000127",
        decline=Decline("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."),
    ),
    CardSpec(
        "pm_card_chargeDeclinedProcessingError",
        "visa",
        "4000000000000119",
        decline=Decline(
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
        ),
    ),
    CardSpec("pm_card_chargeCustomerFail", "visa", "4000000000000341", decline=_GENERIC,
             setup_passes_check=True),
    CardSpec("pm_card_authenticationRequired", "visa", "4000002760003184", auth=Auth.ALWAYS),
    CardSpec("pm_card_threeDSecure2Required", "visa", "4000000000003220", auth=Auth.ALWAYS),
    CardSpec("pm_card_authenticationRequiredOnSetup", "visa", "4000002500003155", auth=Auth.UNLESS_SETUP),
    CardSpec(
        "pm_card_authenticationRequiredSetupForOffSession",
        "visa",
        "4000003800000446",
        auth=Auth.ON_SESSION_ONLY,
    ),
    CardSpec("pm_card_createDispute", "visa", "4000000000000259", dispute="fraudulent"),
    CardSpec("pm_card_createDisputeProductNotReceived", "visa", "4000000000002685",
             dispute="product_not_received"),
    CardSpec("pm_card_createDisputeInquiry", "visa", "4000000000001976", dispute="general", inquiry=True),
    CardSpec("pm_card_pendingRefund", "visa", "4000000000007726", refund="pending"),
    CardSpec("pm_card_refundFail", "visa", "4000000000005126", refund="fail"),
    CardSpec(
        "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds",
        "visa",
        "4000008260003178",
        auth=Auth.ALWAYS,
        decline=_INSUFFICIENT,
        setup_passes_check=True,
    ),
]

CARDS: dict[str, CardSpec] = {spec.token: spec for spec in _SPECS}
# A number typed on the hosted Checkout page -> the token whose behaviour it has (the first listed).
BY_NUMBER: dict[str, CardSpec] = {}
for _spec in _SPECS:
    BY_NUMBER.setdefault(_spec.number, _spec)

# What the hosted Checkout page offers to pick, in this order (docs.stripe.com/testing).
CHECKOUT_CHOICES: tuple[tuple[str, str], ...] = (
    ("4242424242424242", "Visa: succeeds"),
    ("5555555555554444", "Mastercard: succeeds"),
    ("4000002500003155", "Visa: authentication at setup, then off-session charges succeed"),
    ("4000002760003184", "Visa: always asks for authentication (off-session charges declined)"),
    ("4000000000000002", "Visa: declined (generic_decline)"),
    ("4000000000009995", "Visa: declined (insufficient_funds)"),
    ("4000000000000069", "Visa: declined (expired_card)"),
    ("4000000000000341", "Visa: saved, every charge declined"),
    ("4000000000000259", "Visa: charge succeeds, then disputed (fraudulent)"),
    ("4000000000002685", "Visa: charge succeeds, then disputed (product not received)"),
    ("4000000000001976", "Visa: charge succeeds, then an inquiry"),
    ("4000000000007726", "Visa: refunds are pending, then succeed"),
    ("4000000000005126", "Visa: refunds succeed, then fail"),
)

AUTH_REQUIRED = Decline(
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
)


def luhn_ok(number: str) -> bool:
    digits = [int(d) for d in reversed(number)]
    total = sum(digits[0::2]) + sum(sum(divmod(2 * d, 10)) for d in digits[1::2])
    return total % 10 == 0


def is_test_token(value: str) -> bool:
    return value in CARDS


def spec_for(token: str) -> CardSpec:
    return CARDS[token]


def needs_auth(spec: CardSpec, *, off_session: bool, set_up: bool) -> bool:
    """Whether a payment with this card must go through 3-D Secure."""
    if spec.auth is Auth.ALWAYS:
        return True
    if spec.auth is Auth.UNLESS_SETUP:
        return not set_up
    if spec.auth is Auth.ON_SESSION_ONLY:
        return not off_session
    return False


def setup_needs_auth(spec: CardSpec) -> bool:
    """Whether confirming a SetupIntent for this card asks for 3-D Secure."""
    return spec.auth in (Auth.ALWAYS, Auth.UNLESS_SETUP)


def setup_decline(spec: CardSpec) -> Decline | None:
    """The decline a SetupIntent's card check runs into, if any."""
    if spec.decline is None or spec.setup_passes_check:
        return None
    return spec.decline
