"""The decline table: every decline code Stripe documents, classified HARD, SOFT or ACTION, with the words
a client and an admin see, and the runtime signals (advice codes, Mastercard's advice) that can outrank it.

The rows come from ../shared/docs/declines.md (Stripe's decline codes page, the local-payment-method codes
and the card error codes); shared.domain.dunning decides from them. Pure data and lookups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Literal

__all__ = [
    "ADVICE_RULES",
    "BLOCKED_OUTCOME_REASONS",
    "DECLINE_RULES",
    "DEVIATIONS_FROM_DECLINES_MD",
    "NETWORK_ADVICE_RULES",
    "UNKNOWN_CODE_FALLBACK",
    "DeclineClass",
    "DeclineRule",
    "NetworkAdvice",
    "NotifyKind",
    "decline_rule",
    "describe_decline",
    "normalize_code",
]


class DeclineClass(StrEnum):
    HARD = "hard"  # never retried automatically; the client must give a new or corrected card
    SOFT = "soft"  # retried later on the policy's schedule
    ACTION = "action"  # the client must act on-session (authenticate, PIN); never retried off-session

    @property
    def strictness(self) -> int:
        # "Take the strictest result" (declines.md): hard beats action beats soft.
        return {DeclineClass.SOFT: 0, DeclineClass.ACTION: 1, DeclineClass.HARD: 2}[self]


NotifyKind = Literal["card_update_needed", "will_retry", "authentication_needed"]

HARD = DeclineClass.HARD
SOFT = DeclineClass.SOFT
ACTION = DeclineClass.ACTION

# Stripe asks that these be shown to the customer as a generic decline, never by their real name.
_GENERIC_CLIENT_WORDS = "Your bank declined the card."
_PIN_CLIENT_WORDS = "Your card asks for a PIN, which cannot be entered for an online payment."


@dataclass(frozen=True)
class DeclineRule:
    """One row of the policy: a Stripe decline (or error) code and what it means for retries."""

    code: str
    decline_class: DeclineClass
    client_words: str
    admin_words: str
    # At least this long between this decline and the next attempt (limit-type codes: 24 h).
    minimum_delay: timedelta = timedelta(0)
    # For SOFT: also ask for another card while retrying (funds-type declines). HARD always asks.
    # For ACTION: True when the action is card-present only (PIN, tap), so a link cannot fix it.
    ask_for_new_card: bool = False
    # Which table of declines.md the code comes from.
    source: Literal["card", "local", "error"] = "card"

    @property
    def asks_for_new_card(self) -> bool:
        return self.decline_class is HARD or self.ask_for_new_card


def _card(
    code: str,
    decline_class: DeclineClass,
    client_words: str,
    admin_words: str,
    *,
    minimum_delay: timedelta = timedelta(0),
    ask_for_new_card: bool = False,
) -> DeclineRule:
    return DeclineRule(code, decline_class, client_words, admin_words, minimum_delay, ask_for_new_card)


def _local(code: str, decline_class: DeclineClass, client_words: str, admin_words: str) -> DeclineRule:
    return DeclineRule(code, decline_class, client_words, admin_words, source="local")


_DAY = timedelta(days=1)

_CARD_RULES = (
    _card(
        "authentication_required",
        ACTION,
        "Your bank asks you to confirm this payment, for example in your banking app.",
        "The issuer requires authentication (3-D Secure); the client must confirm on-session.",
    ),
    _card(
        "authentication_not_handled",
        ACTION,
        "Your bank asks you to confirm this payment before it can go through.",
        "Declined again because the required authentication was not done; confirm on-session.",
    ),
    _card(
        "approve_with_id",
        SOFT,
        "Your bank could not approve the payment this time.",
        "The issuer could not authorize the payment; a later attempt may succeed.",
    ),
    _card(
        "call_issuer",
        SOFT,
        "Your bank declined the card. Your bank can tell you why.",
        "Declined for an unknown reason; the client should contact the issuer.",
    ),
    _card(
        "card_not_supported",
        HARD,
        "Your card does not support this type of purchase.",
        "The card does not support this type of purchase.",
    ),
    _card(
        "card_velocity_exceeded",
        SOFT,
        "Your card has reached its balance, credit or spending limit.",
        "Over the card's balance, credit or per-transaction limit; retry after at least 24 h.",
        minimum_delay=_DAY,
    ),
    _card(
        "currency_not_supported",
        HARD,
        "Your card does not support payments in this currency.",
        "The card does not support the invoice's currency.",
    ),
    # declines.md marks do_not_honor SOFT; the product's retry policy (README, Retries as data) names it
    # among the hard declines that are never
    # retried. The issue is the requirement, so it is HARD here (see DEVIATIONS_FROM_DECLINES_MD).
    _card(
        "do_not_honor",
        HARD,
        _GENERIC_CLIENT_WORDS,
        "The issuer declined without giving a reason (do not honor); not retried automatically.",
    ),
    _card(
        "do_not_try_again",
        HARD,
        "Your bank declined the card and asked us not to try it again.",
        "The issuer said not to try this card again (deprecated code).",
    ),
    _card(
        "duplicate_transaction",
        SOFT,
        "Your bank declined the payment as a possible duplicate of a very recent one.",
        "Same amount and card submitted very recently; check that no payment succeeded before retrying.",
    ),
    _card("expired_card", HARD, "Your card has expired.", "The card has expired."),
    _card("fraudulent", HARD, _GENERIC_CLIENT_WORDS, "Stripe suspects fraud; never retried."),
    _card(
        "generic_decline",
        SOFT,
        _GENERIC_CLIENT_WORDS,
        "Declined for an unknown reason (or blocked by Radar).",
    ),
    _card(
        "incorrect_address",
        HARD,
        "The billing address does not match the card.",
        "The billing address is incorrect.",
    ),
    _card(
        "incorrect_cvc",
        HARD,
        "The card's security code (CVC) is incorrect.",
        "The CVC is incorrect.",
    ),
    _card("incorrect_number", HARD, "The card number is incorrect.", "The card number is incorrect."),
    _card(
        "incorrect_pin",
        ACTION,
        _PIN_CLIENT_WORDS,
        "Incorrect PIN (card-present only; not expected off-session).",
        ask_for_new_card=True,
    ),
    _card(
        "incorrect_zip",
        HARD,
        "The billing postal code does not match the card.",
        "The billing postal code is incorrect.",
    ),
    _card(
        "insufficient_funds",
        SOFT,
        "Your bank declined the card: insufficient funds.",
        "Insufficient funds; retried later, and the client is asked for another card meanwhile.",
        ask_for_new_card=True,
    ),
    _card(
        "invalid_account",
        HARD,
        "The card or its account is no longer valid.",
        "The card or its account is invalid.",
    ),
    _card(
        "invalid_amount",
        HARD,
        "Your bank refused the amount of this payment.",
        "The amount is invalid or above the card's limit; check the invoice amount.",
    ),
    _card(
        "invalid_cvc",
        HARD,
        "The card's security code (CVC) is incorrect.",
        "The CVC is incorrect.",
    ),
    _card(
        "invalid_expiry_month",
        HARD,
        "The card's expiry date is incorrect.",
        "The expiry month is invalid.",
    ),
    _card(
        "invalid_expiry_year",
        HARD,
        "The card's expiry date is incorrect.",
        "The expiry year is invalid.",
    ),
    _card("invalid_number", HARD, "The card number is incorrect.", "The card number is invalid."),
    _card(
        "invalid_pin",
        ACTION,
        _PIN_CLIENT_WORDS,
        "Invalid PIN (card-present only; not expected off-session).",
        ask_for_new_card=True,
    ),
    _card(
        "issuer_not_available",
        SOFT,
        "Your bank could not be reached.",
        "The issuer could not be reached; a later attempt may succeed.",
    ),
    _card("lost_card", HARD, _GENERIC_CLIENT_WORDS, "The card was reported lost; never retried."),
    _card(
        "merchant_blacklist",
        HARD,
        _GENERIC_CLIENT_WORDS,
        "The card matches an entry on our Stripe block list; review the list before any retry.",
    ),
    _card(
        "new_account_information_available",
        HARD,
        "Your bank has issued new card details. Please add the new card.",
        "The card was replaced; the client must add the new card.",
    ),
    _card(
        "no_action_taken",
        SOFT,
        _GENERIC_CLIENT_WORDS,
        "Declined for an unknown reason (no action taken).",
    ),
    _card(
        "not_permitted",
        HARD,
        "Your bank does not permit this payment.",
        "The issuer does not permit this payment.",
    ),
    _card(
        "offline_pin_required",
        ACTION,
        _PIN_CLIENT_WORDS,
        "The card requires a PIN (card-present only).",
        ask_for_new_card=True,
    ),
    _card(
        "online_or_offline_pin_required",
        ACTION,
        _PIN_CLIENT_WORDS,
        "The card requires a PIN (card-present only).",
        ask_for_new_card=True,
    ),
    _card(
        "pickup_card",
        HARD,
        "This card can no longer be used. Your bank can tell you why.",
        "The issuer asks for the card to be picked up (possibly lost or stolen); never retried.",
    ),
    _card(
        "pin_try_exceeded",
        HARD,
        "Too many incorrect PINs were entered for this card.",
        "Allowed PIN tries exceeded.",
    ),
    _card(
        "processing_error",
        SOFT,
        "An error occurred while processing the card.",
        "Processing error; a later attempt may succeed.",
    ),
    _card(
        "reenter_transaction",
        SOFT,
        "Your bank could not process the payment.",
        "The issuer could not process the payment; a later attempt may succeed.",
    ),
    _card(
        "restricted_card",
        HARD,
        "This card can no longer be used. Your bank can tell you why.",
        "The card is restricted (possibly lost or stolen).",
    ),
    _card(
        "revocation_of_all_authorizations",
        HARD,
        "Your bank has stopped all payments to us from this card.",
        "The cardholder revoked all authorizations; treat as withdrawn consent.",
    ),
    _card(
        "revocation_of_authorization",
        HARD,
        "Your bank has stopped payments to us from this card.",
        "The cardholder revoked the authorization for this merchant.",
    ),
    _card(
        "security_violation",
        HARD,
        "Your bank declined the card for security reasons.",
        "Security block at the issuer.",
    ),
    _card(
        "service_not_allowed",
        HARD,
        "Your card cannot be used for this kind of service.",
        "The card is barred from this kind of service.",
    ),
    _card("stolen_card", HARD, _GENERIC_CLIENT_WORDS, "The card was reported stolen; never retried."),
    _card(
        "stop_payment_order",
        HARD,
        "Your bank has a stop-payment order for payments to us from this card.",
        "Stop-payment order at the issuer.",
    ),
    _card(
        "testmode_decline",
        HARD,
        "The saved card is a test card and cannot be charged.",
        "A Stripe test card was used; check the Stripe keys.",
    ),
    _card(
        "transaction_not_allowed",
        HARD,
        "Your bank does not allow this payment on this card.",
        "The issuer does not allow this transaction.",
    ),
    _card(
        "try_again_later",
        SOFT,
        "Your bank declined the card for now.",
        "The issuer asked to try again later (deprecated code).",
    ),
    _card(
        "withdrawal_count_limit_exceeded",
        SOFT,
        "Your card has reached its balance or credit limit.",
        "Over the balance or credit limit; retry after at least 24 h and ask for another card.",
        minimum_delay=_DAY,
        ask_for_new_card=True,
    ),
    _card(
        "mobile_device_authentication_required",
        ACTION,
        "Your card needs to be tapped on a phone, which cannot be done for an online payment.",
        "Tap to Pay authentication required (card-present only).",
        ask_for_new_card=True,
    ),
)

# Local (non-card) payment methods. The product charges cards only, but a code must never be unknown
# to the policy just because it came from another table. "Might succeed after the customer takes
# action" is HARD: nothing changes until the customer acts, so an automatic retry is wasted.
_LOCAL_RULES = (
    _local(
        "invalid_billing_agreement",
        HARD,
        "The billing agreement is no longer valid.",
        "Invalid billing agreement.",
    ),
    _local(
        "partner_invalid_currency",
        HARD,
        "This payment method does not support the currency.",
        "The currency is not supported.",
    ),
    _local(
        "partner_invalid_amount",
        HARD,
        "The payment method refused the amount.",
        "The amount is invalid for this payment method.",
    ),
    _local("compliance_violation", HARD, _GENERIC_CLIENT_WORDS, "Compliance violation at the provider."),
    _local(
        "invalid_authorization",
        HARD,
        "The authorization for this payment method is no longer valid.",
        "Invalid authorization.",
    ),
    _local(
        "invalid_payment_information",
        HARD,
        "The payment details are incorrect.",
        "Invalid payment information.",
    ),
    _local(
        "invalid_customer_account",
        HARD,
        "The account behind this payment method cannot be used.",
        "Invalid customer account; the customer must act.",
    ),
    _local(
        "payment_limit_exceeded",
        HARD,
        "This payment method has reached its limit.",
        "Payment limit exceeded; the customer must act.",
    ),
    _local("partner_expired_card", HARD, "Your card has expired.", "The card has expired."),
    _local(
        "partner_insufficient_funds",
        HARD,
        "The payment was declined: insufficient funds.",
        "Insufficient funds at the provider; the customer must act.",
    ),
    _local(
        "expired_payment_information",
        HARD,
        "The payment details have expired.",
        "Expired payment information.",
    ),
    _local(
        "invalid_business_account",
        HARD,
        "The payment could not be accepted.",
        "Our business account is invalid at the provider; retry only once it is reactivated.",
    ),
    _local(
        "payment_disputed",
        HARD,
        "An earlier payment is disputed.",
        "An earlier payment is disputed; retry only once the dispute is resolved in our favour.",
    ),
    _local(
        "partner_generic_decline",
        SOFT,
        _GENERIC_CLIENT_WORDS,
        "Declined by the provider for an unknown reason.",
    ),
    _local(
        "partner_processing_error",
        SOFT,
        "An error occurred while processing the payment.",
        "Processing error at the provider.",
    ),
    _local(
        "partner_high_risk_customer",
        HARD,
        _GENERIC_CLIENT_WORDS,
        "The provider rates the customer as high risk.",
    ),
    _local(
        "partner_payment_not_found",
        SOFT,
        _GENERIC_CLIENT_WORDS,
        "The provider could not find the payment.",
    ),
    _local(
        "partner_duplicate_transaction",
        SOFT,
        "The payment was declined as a possible duplicate of a very recent one.",
        "Possible duplicate at the provider; check that no payment succeeded before retrying.",
    ),
)

# Top-level error codes that carry no decline_code of their own (declines.md "Error fields").
_ERROR_RULES = (
    DeclineRule(
        "card_decline_rate_limit_exceeded",
        SOFT,
        "Your bank declined the card too many times today.",
        "Declined too many times; Stripe allows the next try after 24 hours.",
        minimum_delay=_DAY,
        source="error",
    ),
    DeclineRule(
        "payment_intent_authentication_failure",
        HARD,
        "The payment could not be confirmed with your bank. Please add another card.",
        "Authentication failed; a new payment method is needed.",
        source="error",
    ),
)

DECLINE_RULES: Mapping[str, DeclineRule] = {
    rule.code: rule for rule in (*_CARD_RULES, *_LOCAL_RULES, *_ERROR_RULES)
}
UNKNOWN_CODE_FALLBACK = "generic_decline"

# Where this table knowingly departs from declines.md's class, and why.
DEVIATIONS_FROM_DECLINES_MD: Mapping[str, str] = {
    "do_not_honor": "declines.md: SOFT; hard here, as the README's retry policy says: never retried",
}

# outcome.reason values that come with outcome.type=blocked (declines.md rule 1).
BLOCKED_OUTCOME_REASONS = frozenset({"highest_risk_level", "previously_declined_do_not_retry"})


@dataclass(frozen=True)
class NetworkAdvice:
    """What a Mastercard Merchant Advice Code (network_advice_code) says about a retry."""

    decline_class: DeclineClass
    minimum_delay: timedelta
    meaning: str
    client_words: str | None = None  # replaces the table's words when the advice says more


_NEW_CARD_WORDS = "Your bank has issued new card details. Please add the new card."
NETWORK_ADVICE_RULES: Mapping[str, NetworkAdvice] = {
    "01": NetworkAdvice(HARD, timedelta(0), "new account information available", _NEW_CARD_WORDS),
    "02": NetworkAdvice(SOFT, timedelta(hours=72), "try again later (at least 72 h)"),
    "03": NetworkAdvice(HARD, timedelta(0), "do not try again"),
    "21": NetworkAdvice(HARD, timedelta(0), "payment cancelled: stop recurring payments"),
    "24": NetworkAdvice(SOFT, timedelta(hours=1), "retry after 1 hour"),
    "25": NetworkAdvice(SOFT, timedelta(hours=24), "retry after 24 hours"),
    "26": NetworkAdvice(SOFT, timedelta(days=2), "retry after 2 days"),
    "27": NetworkAdvice(SOFT, timedelta(days=4), "retry after 4 days"),
    "28": NetworkAdvice(SOFT, timedelta(days=6), "retry after 6 days"),
    "29": NetworkAdvice(SOFT, timedelta(days=8), "retry after 8 days"),
    "30": NetworkAdvice(SOFT, timedelta(days=10), "retry after 10 days"),
}

# advice_code (on the error and on charge.outcome) → class, with words where it says more than the code.
ADVICE_RULES: Mapping[str, tuple[DeclineClass, str | None]] = {
    "do_not_try_again": (HARD, None),
    "confirm_card_data": (
        HARD,
        "Some of the card details are incorrect. Please check them or add another card.",
    ),
    "try_again_later": (SOFT, None),
}


def normalize_code(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value or None


def decline_rule(code: str | None, decline_code: str | None) -> DeclineRule:
    """The table row for a decline: decline_code first, then code; unknown → generic_decline."""
    for candidate in (normalize_code(decline_code), normalize_code(code)):
        if candidate is not None and candidate in DECLINE_RULES:
            return DECLINE_RULES[candidate]
    return DECLINE_RULES[UNKNOWN_CODE_FALLBACK]


def describe_decline(
    code: str | None, decline_code: str | None, *, audience: Literal["client", "admin"] = "client"
) -> str:
    """Short human words for a decline, for the client (default) or the admin."""
    rule = decline_rule(code, decline_code)
    return rule.client_words if audience == "client" else rule.admin_words
