"""What to do after a declined off-session charge: the retry policy as data, and one pure decision.

The table below classifies every decline code of ../shared/docs/declines.md (Stripe's decline codes
page, the local-payment-method codes and the card error codes) as HARD, SOFT or ACTION, with the words a
client and an admin see. `decide()` applies the runtime signals that outrank the table, in the order
declines.md gives (outcome blocked, advice_code, Mastercard network_advice_code, then the table), takes
the strictest result and turns it into a schedule: soft declines are tried again 1, 3 and 7 days after
the first failure (configurable), then never again; hard ones never; ACTION ones never off-session.

Nothing here touches the database, the clock or the network: callers pass the facts and the times.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Literal, Protocol

from shared.config import ConfigError

__all__ = [
    "BLOCKED_OUTCOME_REASONS",
    "DECLINE_RULES",
    "DEVIATIONS_FROM_DECLINES_MD",
    "MAX_SOFT_RETRIES",
    "MINIMUM_RETRY_GAP",
    "NETWORK_ADVICE_RULES",
    "RETRY_WINDOW",
    "UNKNOWN_CODE_FALLBACK",
    "DeclineClass",
    "DeclineFacts",
    "DeclineRule",
    "NetworkAdvice",
    "NotifyKind",
    "RetryDecision",
    "RetryPolicy",
    "decide",
    "decline_rule",
    "describe_decline",
    "policy_from_env",
    "policy_table_markdown",
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
_ADVICE_RULES: Mapping[str, tuple[DeclineClass, str | None]] = {
    "do_not_try_again": (HARD, None),
    "confirm_card_data": (
        HARD,
        "Some of the card details are incorrect. Please check them or add another card.",
    ),
    "try_again_later": (SOFT, None),
}

# Budget limits from declines.md "Retry timing": attempts at least 24 h apart, at most eight retries,
# all inside the card networks' 30-day window.
MINIMUM_RETRY_GAP = timedelta(hours=24)
MAX_SOFT_RETRIES = 8
RETRY_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class RetryPolicy:
    # Days after the FIRST failure at which a soft decline is tried again; after the last, stop.
    soft_retry_days: tuple[int, ...] = (1, 3, 7)
    # How long a charge waiting for the client to authenticate stays open before it expires.
    authentication_ttl: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        days = self.soft_retry_days
        if not isinstance(days, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in days
        ):
            raise ValueError(f"soft_retry_days must be a tuple of whole days, got {days!r}")
        if not 1 <= len(days) <= MAX_SOFT_RETRIES:
            raise ValueError(f"soft_retry_days must list 1 to {MAX_SOFT_RETRIES} days, got {len(days)}")
        if days[0] < 1 or any(later <= earlier for earlier, later in pairwise(days)):
            raise ValueError(f"soft_retry_days must be increasing whole days of at least 1, got {days!r}")
        if timedelta(days=days[-1]) > RETRY_WINDOW:
            raise ValueError(
                f"soft_retry_days must end within {RETRY_WINDOW.days} days of the first failure "
                f"(card network retry window), got {days[-1]}"
            )
        if self.authentication_ttl <= timedelta(0):
            raise ValueError("authentication_ttl must be positive")


def policy_from_env(env: Mapping[str, str] | None = None) -> RetryPolicy:
    """OFFSESSION_SOFT_RETRY_DAYS="1,3,7" and OFFSESSION_AUTH_TTL_DAYS=7; unset means the defaults."""
    env = os.environ if env is None else env
    defaults = RetryPolicy()
    days_raw = (env.get("OFFSESSION_SOFT_RETRY_DAYS") or "").strip()
    ttl_raw = (env.get("OFFSESSION_AUTH_TTL_DAYS") or "").strip()

    soft_retry_days = defaults.soft_retry_days
    if days_raw:
        try:
            soft_retry_days = tuple(int(part) for part in days_raw.split(","))
        except ValueError as exc:
            raise ConfigError(
                f"OFFSESSION_SOFT_RETRY_DAYS must be whole days separated by commas (e.g. 1,3,7), "
                f"got {days_raw!r}"
            ) from exc

    authentication_ttl = defaults.authentication_ttl
    if ttl_raw:
        try:
            ttl_days = float(ttl_raw)
        except ValueError as exc:
            raise ConfigError(f"OFFSESSION_AUTH_TTL_DAYS must be a number of days, got {ttl_raw!r}") from exc
        if not ttl_days > 0 or ttl_days == float("inf"):
            raise ConfigError(f"OFFSESSION_AUTH_TTL_DAYS must be a positive number of days, got {ttl_raw!r}")
        authentication_ttl = timedelta(days=ttl_days)

    try:
        return RetryPolicy(soft_retry_days=soft_retry_days, authentication_ttl=authentication_ttl)
    except ValueError as exc:
        raise ConfigError(f"OFFSESSION_SOFT_RETRY_DAYS: {exc}") from exc


class _DeclineLike(Protocol):
    code: str | None
    decline_code: str | None
    advice_code: str | None
    network_advice_code: str | None


@dataclass(frozen=True)
class DeclineFacts:
    """What Stripe said about one declined attempt (the 402 error, or last_payment_error + outcome)."""

    code: str | None
    decline_code: str | None = None
    advice_code: str | None = None
    network_advice_code: str | None = None
    outcome_type: str | None = None  # charge.outcome.type: issuer_declined / blocked / invalid
    outcome_reason: str | None = None  # charge.outcome.reason, e.g. previously_declined_do_not_retry
    # network_advice_code means Mastercard's Merchant Advice Codes only for Mastercard; for another
    # known brand it is ignored. None (brand unknown) applies them, as declines.md does.
    card_brand: str | None = None

    @classmethod
    def from_decline(
        cls,
        declined: _DeclineLike,
        *,
        outcome_type: str | None = None,
        outcome_reason: str | None = None,
        card_brand: str | None = None,
    ) -> DeclineFacts:
        """From shared.adapters.stripe_gateway.CardDeclined or PaymentError (anything with the four code
        fields)."""
        return cls(
            code=declined.code,
            decline_code=declined.decline_code,
            advice_code=declined.advice_code,
            network_advice_code=declined.network_advice_code,
            outcome_type=outcome_type,
            outcome_reason=outcome_reason,
            card_brand=card_brand,
        )


@dataclass(frozen=True)
class RetryDecision:
    decline_class: DeclineClass
    retry_at: datetime | None  # when to open the next attempt; None = no automatic attempt
    attempts_left: int  # automatic attempts still to come, counting the one at retry_at
    reason: str  # words for the client (Stripe's "present as generic_decline" respected)
    admin_reason: str  # words for the admin, naming the real cause
    ask_client_to_update_card: bool
    notify_kind: NotifyKind
    matched_code: str  # the table row used (after falling back to code, then generic_decline)
    decided_by: str  # which signal set the class, e.g. "advice_code=do_not_try_again" or "table"
    # For an authentication request: when the waiting attempt expires (failed_at + authentication_ttl).
    authentication_expires_at: datetime | None = None


def _normalize(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value or None


def decline_rule(code: str | None, decline_code: str | None) -> DeclineRule:
    """The table row for a decline: decline_code first, then code; unknown → generic_decline."""
    for candidate in (_normalize(decline_code), _normalize(code)):
        if candidate is not None and candidate in DECLINE_RULES:
            return DECLINE_RULES[candidate]
    return DECLINE_RULES[UNKNOWN_CODE_FALLBACK]


def describe_decline(
    code: str | None, decline_code: str | None, *, audience: Literal["client", "admin"] = "client"
) -> str:
    """Short human words for a decline, for the client (default) or the admin."""
    rule = decline_rule(code, decline_code)
    return rule.client_words if audience == "client" else rule.admin_words


@dataclass(frozen=True)
class _Verdict:
    decline_class: DeclineClass
    minimum_delay: timedelta
    decided_by: str
    client_words: str | None = None


def _verdicts(facts: DeclineFacts, rule: DeclineRule) -> list[_Verdict]:
    """Every opinion on this decline, in declines.md's order of precedence."""
    verdicts: list[_Verdict] = []
    outcome_type = _normalize(facts.outcome_type)
    outcome_reason = _normalize(facts.outcome_reason)
    if outcome_type == "blocked":
        verdicts.append(_Verdict(HARD, timedelta(0), "outcome.type=blocked"))
    elif outcome_reason in BLOCKED_OUTCOME_REASONS:
        verdicts.append(_Verdict(HARD, timedelta(0), f"outcome.reason={outcome_reason}"))

    advice = _normalize(facts.advice_code)
    if advice is not None and advice in _ADVICE_RULES:
        advice_class, advice_words = _ADVICE_RULES[advice]
        verdicts.append(_Verdict(advice_class, timedelta(0), f"advice_code={advice}", advice_words))

    brand = _normalize(facts.card_brand)
    network_advice = (facts.network_advice_code or "").strip()
    if network_advice in NETWORK_ADVICE_RULES and brand in (None, "mastercard"):
        mac = NETWORK_ADVICE_RULES[network_advice]
        verdicts.append(
            _Verdict(
                mac.decline_class,
                mac.minimum_delay,
                f"network_advice_code={network_advice}",
                mac.client_words,
            )
        )

    verdicts.append(_Verdict(rule.decline_class, rule.minimum_delay, "table"))
    return verdicts


def _scheduled_slot(first_failure_at: datetime, policy: RetryPolicy, index: int) -> datetime:
    days = policy.soft_retry_days
    return first_failure_at + timedelta(days=days[min(index, len(days) - 1)])


def decide(
    failure: DeclineFacts,
    *,
    failures_so_far: int,
    first_failure_at: datetime,
    policy: RetryPolicy | None = None,
    failed_at: datetime | None = None,
) -> RetryDecision:
    """What to do after a declined attempt.

    `failures_so_far` counts declined attempts of this invoice's dunning run including this one (so 1
    after the first decline). `first_failure_at` is when that run's first decline happened; soft
    retries fall on `first_failure_at + soft_retry_days[failures_so_far - 1]`, never earlier than
    the signals' minimum delay (and 24 h) after `failed_at`. `failed_at` is when this decline
    happened; by default the slot this attempt was scheduled for (the first failure for the first).
    """
    policy = policy or RetryPolicy()
    if isinstance(failures_so_far, bool) or not isinstance(failures_so_far, int) or failures_so_far < 1:
        raise ValueError(
            f"failures_so_far counts this decline too, so it is at least 1; got {failures_so_far!r}"
        )
    if first_failure_at.tzinfo is None or (failed_at is not None and failed_at.tzinfo is None):
        raise ValueError("naive datetimes are refused: pass aware UTC datetimes")
    if failed_at is None:
        failed_at = (
            first_failure_at
            if failures_so_far == 1
            else _scheduled_slot(first_failure_at, policy, failures_so_far - 2)
        )
    if failed_at < first_failure_at:
        raise ValueError("failed_at is before first_failure_at")

    rule = decline_rule(failure.code, failure.decline_code)
    verdicts = _verdicts(failure, rule)
    # The strictest class wins; on a tie, the earliest (highest-precedence) signal names it.
    strictest = max(verdicts, key=lambda v: v.decline_class.strictness)
    final_class = strictest.decline_class
    client_words = next(
        (v.client_words for v in verdicts if v.client_words and v.decline_class is final_class),
        rule.client_words,
    )

    admin_reason = rule.admin_words
    if strictest.decided_by != "table":
        admin_reason += f" Decided by {strictest.decided_by}."

    def stop(notify_kind: NotifyKind, ask: bool, expires_at: datetime | None = None) -> RetryDecision:
        return RetryDecision(
            decline_class=final_class,
            retry_at=None,
            attempts_left=0,
            reason=client_words,
            admin_reason=admin_reason,
            ask_client_to_update_card=ask,
            notify_kind=notify_kind,
            matched_code=rule.code,
            decided_by=strictest.decided_by,
            authentication_expires_at=expires_at,
        )

    if final_class is HARD:
        return stop("card_update_needed", ask=True)
    if final_class is ACTION:
        # Only the table says ACTION, so the rule is the ACTION row.
        if rule.ask_for_new_card:
            # A PIN or a tap cannot be given through a link: only another card helps.
            return stop("card_update_needed", ask=True)
        return stop("authentication_needed", ask=False, expires_at=failed_at + policy.authentication_ttl)

    retries_total = len(policy.soft_retry_days)
    retries_done = failures_so_far - 1
    if retries_done >= retries_total:
        return stop("card_update_needed", ask=True)
    # Every soft signal's delay is honoured; the longest one governs.
    minimum_delay = max([MINIMUM_RETRY_GAP, *(v.minimum_delay for v in verdicts if v.decline_class is SOFT)])
    retry_at = max(_scheduled_slot(first_failure_at, policy, retries_done), failed_at + minimum_delay)
    if retry_at - first_failure_at > RETRY_WINDOW:
        return stop("card_update_needed", ask=True)
    return RetryDecision(
        decline_class=SOFT,
        retry_at=retry_at,
        attempts_left=retries_total - retries_done,
        reason=client_words,
        admin_reason=admin_reason,
        ask_client_to_update_card=rule.asks_for_new_card,
        notify_kind="will_retry",
        matched_code=rule.code,
        decided_by=strictest.decided_by,
    )


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def policy_table_markdown(policy: RetryPolicy | None = None) -> str:
    """The policy as Markdown for the README: the signals that outrank the table, then the table."""
    policy = policy or RetryPolicy()
    days = ", ".join(str(d) for d in policy.soft_retry_days)
    ttl_days = policy.authentication_ttl / timedelta(days=1)
    ttl = f"{ttl_days:g} day" + ("" if ttl_days == 1 else "s")
    soft_words = f"days {days} after the first decline, then stop"
    lines = [
        "Runtime signals outrank the table; the strictest result wins (hard > action > soft).",
        "",
        "| signal | class | effect |",
        "|---|---|---|",
        "| `outcome.type=blocked` (or reason `highest_risk_level` / `previously_declined_do_not_retry`) "
        "| hard | never retried |",
    ]
    for advice, (advice_class, _) in _ADVICE_RULES.items():
        effect = "never retried" if advice_class is HARD else "retried on the soft schedule"
        lines.append(f"| `advice_code={advice}` | {advice_class.value} | {effect} |")
    for mac_code, mac in NETWORK_ADVICE_RULES.items():
        if mac.decline_class is HARD:
            effect = f"never retried ({mac.meaning})"
        else:
            effect = f"soft schedule, not before {_format_delay(mac.minimum_delay)} after the decline"
        lines.append(
            f"| Mastercard `network_advice_code={mac_code}` | {mac.decline_class.value} | {effect} |"
        )
    lines += [
        "",
        f"Soft declines are tried again on {soft_words}; each attempt at least 24 h after the previous "
        "decline and after any delay a signal asks for. Unknown codes are handled "
        f"like `{UNKNOWN_CODE_FALLBACK}`. Codes are looked up by `decline_code`, then `code`.",
        "",
        "| code | class | automatic retry | the client is told |",
        "|---|---|---|---|",
    ]
    for rule in sorted(
        DECLINE_RULES.values(), key=lambda r: ({"card": 0, "error": 1, "local": 2}[r.source], r.code)
    ):
        new_method = "another payment method" if rule.source == "local" else "a new card"
        if rule.decline_class is HARD:
            retry = f"never; client asked for {new_method}"
        elif rule.decline_class is ACTION and rule.ask_for_new_card:
            retry = f"never (card-present only); client asked for {new_method}"
        elif rule.decline_class is ACTION:
            retry = f"never off-session; client emailed a link to authenticate (expires after {ttl})"
        else:
            retry = soft_words
            if rule.minimum_delay:
                retry += f" (≥ {_format_delay(rule.minimum_delay)} after the decline)"
            if rule.ask_for_new_card:
                retry += f"; client asked for {new_method} meanwhile"
        label = f"`{rule.code}`" + (" (local payment method)" if rule.source == "local" else "")
        if rule.source == "error":
            label += " (error code)"
        words = _escape_cell(rule.client_words)
        lines.append(f"| {label} | {rule.decline_class.value} | {_escape_cell(retry)} | {words} |")
    return "\n".join(lines) + "\n"


def _format_delay(delay: timedelta) -> str:
    hours = delay / timedelta(hours=1)
    # Hours where the sources speak in hours (up to a day, and Mastercard's "72 hours"), else days.
    if hours < 48 or hours == 72:
        return f"{hours:g} h"
    return f"{hours / 24:g} days"
