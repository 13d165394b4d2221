"""What to do after a declined off-session charge: the retry policy, and one pure decision.

`decide()` applies the runtime signals that outrank the decline table (shared.domain.declines), in the
order declines.md gives (outcome blocked, advice_code, Mastercard network_advice_code, then the table),
takes the strictest result and turns it into a schedule: soft declines are tried again 1, 3 and 7 days
after the first failure (configurable), then never again; hard ones never; ACTION ones never off-session.

Nothing here touches the database, the clock or the network: callers pass the facts and the times.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Protocol

from shared.config import ConfigError
from shared.domain.declines import (
    ACTION,
    ADVICE_RULES,
    BLOCKED_OUTCOME_REASONS,
    DECLINE_RULES,
    HARD,
    NETWORK_ADVICE_RULES,
    SOFT,
    UNKNOWN_CODE_FALLBACK,
    DeclineClass,
    DeclineRule,
    NotifyKind,
    decline_rule,
    normalize_code,
)

__all__ = [
    "MAX_SOFT_RETRIES",
    "MINIMUM_RETRY_GAP",
    "RETRY_WINDOW",
    "DeclineFacts",
    "RetryDecision",
    "RetryPolicy",
    "decide",
    "policy_from_env",
    "policy_table_markdown",
]

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


@dataclass(frozen=True)
class _Verdict:
    decline_class: DeclineClass
    minimum_delay: timedelta
    decided_by: str
    client_words: str | None = None


def _verdicts(facts: DeclineFacts, rule: DeclineRule) -> list[_Verdict]:
    """Every opinion on this decline, in declines.md's order of precedence."""
    verdicts: list[_Verdict] = []
    outcome_type = normalize_code(facts.outcome_type)
    outcome_reason = normalize_code(facts.outcome_reason)
    if outcome_type == "blocked":
        verdicts.append(_Verdict(HARD, timedelta(0), "outcome.type=blocked"))
    elif outcome_reason in BLOCKED_OUTCOME_REASONS:
        verdicts.append(_Verdict(HARD, timedelta(0), f"outcome.reason={outcome_reason}"))

    advice = normalize_code(facts.advice_code)
    if advice is not None and advice in ADVICE_RULES:
        advice_class, advice_words = ADVICE_RULES[advice]
        verdicts.append(_Verdict(advice_class, timedelta(0), f"advice_code={advice}", advice_words))

    brand = normalize_code(facts.card_brand)
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
    for advice, (advice_class, _) in ADVICE_RULES.items():
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
