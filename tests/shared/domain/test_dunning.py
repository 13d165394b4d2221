from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import ConfigError
from shared.domain.declines import (
    DECLINE_RULES,
    DEVIATIONS_FROM_DECLINES_MD,
    NETWORK_ADVICE_RULES,
    DeclineClass,
    decline_rule,
    describe_decline,
)
from shared.domain.dunning import DeclineFacts, RetryPolicy, decide, policy_from_env, policy_table_markdown
from shared.domain.payments import CardDeclined

FIRST = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
DAY = timedelta(days=1)
# CI clones the repository with ../shared (read-only) beside it, as on the workstation.
DECLINES_MD = Path(__file__).resolve().parents[4] / "shared" / "docs" / "declines.md"

HARD_CODES = [
    "stolen_card",
    "lost_card",
    "pickup_card",
    "fraudulent",
    "expired_card",
    "incorrect_number",
    "do_not_honor",
]


def declined(decline_code: str | None, **kwargs: str | None) -> DeclineFacts:
    return DeclineFacts(code="card_declined", decline_code=decline_code, **kwargs)


# --- soft declines: day 1, 3, 7, then stop ------------------------------------------------------------


def test_soft_decline_is_retried_on_day_1_3_and_7_then_stops() -> None:
    facts = declined("insufficient_funds")
    schedule = [decide(facts, failures_so_far=n, first_failure_at=FIRST) for n in (1, 2, 3, 4)]

    assert [d.retry_at for d in schedule] == [FIRST + DAY, FIRST + 3 * DAY, FIRST + 7 * DAY, None]
    assert [d.attempts_left for d in schedule] == [3, 2, 1, 0]
    assert [d.notify_kind for d in schedule] == ["will_retry"] * 3 + ["card_update_needed"]
    assert all(d.decline_class is DeclineClass.SOFT for d in schedule)
    assert schedule[0].reason == "Your bank declined the card: insufficient funds."
    # Funds declines ask for another card while the retries run; after the last one, it is the only way.
    assert schedule[0].ask_client_to_update_card and schedule[-1].ask_client_to_update_card


@pytest.mark.parametrize(
    "code", ["generic_decline", "processing_error", "try_again_later", "issuer_not_available"]
)
def test_other_soft_declines_follow_the_same_schedule(code: str) -> None:
    first = decide(declined(code), failures_so_far=1, first_failure_at=FIRST)
    assert first.decline_class is DeclineClass.SOFT
    assert first.retry_at == FIRST + DAY
    assert first.notify_kind == "will_retry"
    assert not first.ask_client_to_update_card


def test_the_schedule_is_configurable() -> None:
    policy = RetryPolicy(soft_retry_days=(2, 5))
    facts = declined("generic_decline")
    retry_times = [
        decide(facts, failures_so_far=n, first_failure_at=FIRST, policy=policy).retry_at for n in (1, 2, 3)
    ]
    assert retry_times == [FIRST + 2 * DAY, FIRST + 5 * DAY, None]


def test_a_late_running_retry_keeps_the_next_slot_but_stays_24h_after_the_decline() -> None:
    # The day-1 retry only ran on day 2.5: the day-3 slot is too close, so the next is 24 h later.
    decision = decide(
        declined("generic_decline"), failures_so_far=2, first_failure_at=FIRST, failed_at=FIRST + 2.5 * DAY
    )
    assert decision.retry_at == FIRST + 3.5 * DAY
    assert decision.attempts_left == 2


# --- hard and action declines ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", HARD_CODES)
def test_hard_declines_are_never_retried(code: str) -> None:
    for failures in (1, 2, 3):
        decision = decide(declined(code), failures_so_far=failures, first_failure_at=FIRST)
        assert decision.decline_class is DeclineClass.HARD
        assert decision.retry_at is None
        assert decision.attempts_left == 0
        assert decision.ask_client_to_update_card
        assert decision.notify_kind == "card_update_needed"


@pytest.mark.parametrize("code", ["stolen_card", "lost_card", "fraudulent", "merchant_blacklist"])
def test_codes_stripe_says_to_hide_are_shown_to_the_client_as_a_generic_decline(code: str) -> None:
    assert describe_decline("card_declined", code) == describe_decline("card_declined", "generic_decline")
    assert describe_decline("card_declined", code, audience="admin") != describe_decline(
        "card_declined", "generic_decline", audience="admin"
    )


def test_authentication_required_is_not_retried_off_session_and_expires_after_the_ttl() -> None:
    policy = RetryPolicy(authentication_ttl=timedelta(days=5))
    decision = decide(
        DeclineFacts(code="authentication_required"), failures_so_far=1, first_failure_at=FIRST, policy=policy
    )
    assert decision.decline_class is DeclineClass.ACTION
    assert decision.retry_at is None and decision.attempts_left == 0
    assert decision.notify_kind == "authentication_needed"
    assert not decision.ask_client_to_update_card
    assert decision.authentication_expires_at == FIRST + 5 * DAY


def test_a_pin_decline_cannot_be_fixed_by_a_link_so_the_client_is_asked_for_another_card() -> None:
    decision = decide(declined("offline_pin_required"), failures_so_far=1, first_failure_at=FIRST)
    assert decision.decline_class is DeclineClass.ACTION
    assert decision.notify_kind == "card_update_needed" and decision.ask_client_to_update_card
    assert decision.authentication_expires_at is None


# --- runtime signals outrank the table -----------------------------------------------------------------


def test_blocked_outcome_makes_a_soft_code_hard() -> None:
    decision = decide(
        declined("generic_decline", outcome_type="blocked"), failures_so_far=1, first_failure_at=FIRST
    )
    assert decision.decline_class is DeclineClass.HARD and decision.retry_at is None
    assert decision.decided_by == "outcome.type=blocked"
    assert "outcome.type=blocked" in decision.admin_reason

    excessive = declined("generic_decline", outcome_reason="previously_declined_do_not_retry")
    assert decide(excessive, failures_so_far=1, first_failure_at=FIRST).decline_class is DeclineClass.HARD


@pytest.mark.parametrize("advice", ["do_not_try_again", "confirm_card_data"])
def test_advice_code_can_make_a_soft_code_hard(advice: str) -> None:
    decision = decide(
        declined("insufficient_funds", advice_code=advice), failures_so_far=1, first_failure_at=FIRST
    )
    assert decision.decline_class is DeclineClass.HARD
    assert decision.retry_at is None
    assert decision.decided_by == f"advice_code={advice}"


def test_confirm_card_data_tells_the_client_to_check_the_details() -> None:
    decision = decide(
        declined("generic_decline", advice_code="confirm_card_data"),
        failures_so_far=1,
        first_failure_at=FIRST,
    )
    assert "card details are incorrect" in decision.reason


def test_try_again_later_never_softens_a_hard_code() -> None:
    # "Take the strictest result": a soft signal cannot reopen retries on a stolen card.
    decision = decide(
        declined("stolen_card", advice_code="try_again_later"), failures_so_far=1, first_failure_at=FIRST
    )
    assert decision.decline_class is DeclineClass.HARD


def test_try_again_later_keeps_a_soft_code_on_schedule() -> None:
    decision = decide(
        declined("generic_decline", advice_code="try_again_later"), failures_so_far=1, first_failure_at=FIRST
    )
    assert decision.retry_at == FIRST + DAY
    assert decision.decided_by == "advice_code=try_again_later"


@pytest.mark.parametrize("mac", ["01", "03", "21"])
def test_mastercard_never_retry_advice_is_hard(mac: str) -> None:
    decision = decide(
        declined("generic_decline", network_advice_code=mac), failures_so_far=1, first_failure_at=FIRST
    )
    assert decision.decline_class is DeclineClass.HARD
    assert decision.retry_at is None


def test_mastercard_01_asks_for_the_new_card_details() -> None:
    decision = decide(
        declined("do_not_honor", network_advice_code="01"), failures_so_far=1, first_failure_at=FIRST
    )
    assert "new card details" in decision.reason


def test_mastercard_02_waits_at_least_72_hours() -> None:
    decision = decide(
        declined("insufficient_funds", network_advice_code="02"), failures_so_far=1, first_failure_at=FIRST
    )
    assert decision.retry_at == FIRST + timedelta(hours=72)
    assert decision.attempts_left == 3


@pytest.mark.parametrize(
    ("mac", "delay"),
    [
        ("24", DAY),  # 1 h is shorter than the day-1 slot and the 24 h gap
        ("25", DAY),
        ("26", 2 * DAY),
        ("27", 4 * DAY),
        ("28", 6 * DAY),
        ("29", 8 * DAY),
        ("30", 10 * DAY),
    ],
)
def test_mastercard_stated_delays_are_respected(mac: str, delay: timedelta) -> None:
    decision = decide(
        declined("generic_decline", network_advice_code=mac), failures_so_far=1, first_failure_at=FIRST
    )
    assert decision.decline_class is DeclineClass.SOFT
    assert decision.retry_at == FIRST + delay


def test_a_delay_that_leaves_the_30_day_window_stops_the_retries() -> None:
    policy = RetryPolicy(soft_retry_days=(1, 3, 25))
    # The day-3 retry declined with "retry after 10 days": day 13 is before the day-25 slot, which stands.
    in_window = decide(
        declined("generic_decline", network_advice_code="30"),
        failures_so_far=3,
        first_failure_at=FIRST,
        policy=policy,
    )
    assert in_window.retry_at == FIRST + 25 * DAY
    # The same retry ran late, on day 24: ten more days is day 34, outside the 30-day window.
    late = decide(
        declined("generic_decline", network_advice_code="30"),
        failures_so_far=3,
        first_failure_at=FIRST,
        policy=policy,
        failed_at=FIRST + 24 * DAY,
    )
    assert late.retry_at is None and late.notify_kind == "card_update_needed"


def test_network_advice_is_ignored_for_a_card_known_not_to_be_mastercard() -> None:
    visa = declined("generic_decline", network_advice_code="03", card_brand="visa")
    mastercard = declined("generic_decline", network_advice_code="03", card_brand="Mastercard")
    assert decide(visa, failures_so_far=1, first_failure_at=FIRST).decline_class is DeclineClass.SOFT
    assert decide(mastercard, failures_so_far=1, first_failure_at=FIRST).decline_class is DeclineClass.HARD


def test_limit_codes_wait_24h_after_a_late_decline() -> None:
    decision = decide(
        declined("card_velocity_exceeded"),
        failures_so_far=2,
        first_failure_at=FIRST,
        failed_at=FIRST + 2.9 * DAY,
    )
    assert decision.retry_at == FIRST + 3.9 * DAY


# --- lookup ---------------------------------------------------------------------------------------------


def test_lookup_uses_decline_code_then_code_then_generic() -> None:
    assert decline_rule("card_declined", "expired_card").code == "expired_card"
    assert decline_rule("expired_card", None).code == "expired_card"  # top-level error code form
    assert decline_rule("expired_card", "some_new_code").code == "expired_card"
    assert decline_rule("card_declined", None).code == "generic_decline"
    assert decline_rule(None, None).code == "generic_decline"
    assert decline_rule("card_declined", " Insufficient_Funds ").code == "insufficient_funds"


def test_unknown_codes_are_handled_like_generic_decline() -> None:
    unknown = decide(declined("brand_new_code_2031"), failures_so_far=1, first_failure_at=FIRST)
    generic = decide(declined("generic_decline"), failures_so_far=1, first_failure_at=FIRST)
    assert unknown == generic
    assert unknown.matched_code == "generic_decline"
    assert describe_decline("card_declined", "brand_new_code_2031") == "Your bank declined the card."


def test_facts_from_a_gateway_decline() -> None:
    card_declined = CardDeclined(
        code="card_declined",
        decline_code="insufficient_funds",
        message="Your card has insufficient funds.",
        payment_intent_id="pi_1",
        advice_code="try_again_later",
        network_advice_code="02",
    )
    facts = DeclineFacts.from_decline(card_declined, card_brand="mastercard")
    assert facts == DeclineFacts(
        code="card_declined",
        decline_code="insufficient_funds",
        advice_code="try_again_later",
        network_advice_code="02",
        card_brand="mastercard",
    )


def test_every_rule_has_words_for_both_audiences() -> None:
    for rule in DECLINE_RULES.values():
        assert rule.client_words.endswith(".") and len(rule.client_words) <= 100, rule.code
        assert rule.admin_words.endswith(".") and rule.admin_words, rule.code
        assert "_" not in rule.client_words, rule.code  # never a code name shown to a client


def _declines_md_card_table(text: str) -> dict[str, str]:
    """decline_code → class from the card table of declines.md."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"\|\s*`([a-z_]+)`[^|]*\|[^|]*\|[^|]*\|\s*(HARD|SOFT|ACTION)\s*\|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def _declines_md_local_codes(text: str) -> set[str]:
    start = text.index("local (non-card) payment method decline codes")
    end = text.index("## Error fields")
    return set(re.findall(r"`([a-z_]+)`", text[start:end])) - {"decline_code"}


@pytest.mark.skipif(not DECLINES_MD.exists(), reason=f"{DECLINES_MD} is not beside this clone")
def test_every_code_in_declines_md_is_in_the_table_with_its_class() -> None:
    text = DECLINES_MD.read_text(encoding="utf-8")
    card_table = _declines_md_card_table(text)
    assert len(card_table) >= 47  # the parse found the table (50 rows in the 2026 copy)

    missing = sorted(set(card_table) - set(DECLINE_RULES))
    assert not missing, f"codes in declines.md but not in shared.domain.dunning: {missing}"
    differing = {
        code: (expected, DECLINE_RULES[code].decline_class.name)
        for code, expected in card_table.items()
        if DECLINE_RULES[code].decline_class.name != expected and code not in DEVIATIONS_FROM_DECLINES_MD
    }
    assert not differing, f"classes differ from declines.md without a recorded reason: {differing}"

    local_missing = sorted(_declines_md_local_codes(text) - set(DECLINE_RULES))
    assert not local_missing, f"local payment method codes missing: {local_missing}"
    for error_code in ("card_decline_rate_limit_exceeded", "payment_intent_authentication_failure"):
        assert error_code in DECLINE_RULES


def test_recorded_deviations_are_real() -> None:
    # do_not_honor is hard because the README's retry policy says so, against declines.md's SOFT.
    assert DECLINE_RULES["do_not_honor"].decline_class is DeclineClass.HARD
    assert set(DEVIATIONS_FROM_DECLINES_MD) <= set(DECLINE_RULES)


# --- configuration ----------------------------------------------------------------------------------------


def test_policy_from_env_reads_days_and_ttl() -> None:
    policy = policy_from_env({"OFFSESSION_SOFT_RETRY_DAYS": " 2, 4 ,9", "OFFSESSION_AUTH_TTL_DAYS": "3"})
    assert policy == RetryPolicy(soft_retry_days=(2, 4, 9), authentication_ttl=3 * DAY)
    assert policy_from_env({}) == RetryPolicy()


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"OFFSESSION_SOFT_RETRY_DAYS": "1,three,7"}, "whole days separated by commas"),
        ({"OFFSESSION_SOFT_RETRY_DAYS": "3,1"}, "increasing"),
        ({"OFFSESSION_SOFT_RETRY_DAYS": "0,1"}, "at least 1"),
        ({"OFFSESSION_SOFT_RETRY_DAYS": "1,3,45"}, "within 30 days"),
        ({"OFFSESSION_SOFT_RETRY_DAYS": "1,2,3,4,5,6,7,8,9"}, "1 to 8 days"),
        ({"OFFSESSION_AUTH_TTL_DAYS": "a week"}, "number of days"),
        ({"OFFSESSION_AUTH_TTL_DAYS": "0"}, "positive"),
        ({"OFFSESSION_AUTH_TTL_DAYS": "-2"}, "positive"),
    ],
)
def test_policy_from_env_refuses_bad_values_with_clear_words(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        policy_from_env(env)


def test_decide_refuses_nonsense_inputs() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        decide(declined("generic_decline"), failures_so_far=0, first_failure_at=FIRST)
    with pytest.raises(ValueError, match="naive"):
        decide(declined("generic_decline"), failures_so_far=1, first_failure_at=datetime(2026, 1, 1))


# --- the README table -------------------------------------------------------------------------------------


def test_policy_table_markdown_lists_every_code_and_the_schedule() -> None:
    markdown = policy_table_markdown(RetryPolicy(soft_retry_days=(1, 3, 7), authentication_ttl=7 * DAY))
    code_rows = {
        match.group(1): line
        for line in markdown.splitlines()
        if (match := re.match(r"\| `([a-z_]+)`(?: \([a-z ]+\))? \|", line))
    }
    assert set(code_rows) == set(DECLINE_RULES)
    rows = list(code_rows.values())
    assert all(row.count(" | ") == 3 for row in rows)  # four cells: nothing broke the table
    assert "days 1, 3, 7 after the first decline" in markdown
    assert (
        "| `stolen_card` | hard | never; client asked for a new card | Your bank declined the card. |"
        in markdown
    )
    assert "expires after 7 days" in markdown
    for mac in NETWORK_ADVICE_RULES:
        assert f"`network_advice_code={mac}`" in markdown


# --- properties ---------------------------------------------------------------------------------------------

SOFT_CODES = sorted(code for code, rule in DECLINE_RULES.items() if rule.decline_class is DeclineClass.SOFT)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    days = draw(st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=8, unique=True))
    return RetryPolicy(soft_retry_days=tuple(sorted(days)))


@given(
    code=st.sampled_from([*SOFT_CODES, "unknown_code", None]),
    advice=st.sampled_from([None, "try_again_later", "do_not_try_again", "confirm_card_data", "bogus"]),
    mac=st.sampled_from([None, "", "99", *NETWORK_ADVICE_RULES]),
    policy=policies(),
    first=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
    ),
)
def test_retry_times_are_after_the_first_failure_and_never_go_back(
    code: str | None, advice: str | None, mac: str | None, policy: RetryPolicy, first: datetime
) -> None:
    facts = DeclineFacts(code="card_declined", decline_code=code, advice_code=advice, network_advice_code=mac)
    decisions = [
        decide(facts, failures_so_far=n, first_failure_at=first, policy=policy)
        for n in range(1, len(policy.soft_retry_days) + 3)
    ]
    retry_times = [d.retry_at for d in decisions]
    scheduled = [t for t in retry_times if t is not None]

    assert all(t > first for t in scheduled)
    assert scheduled == sorted(scheduled)
    # Once the retries stop they never start again, and a stop always leaves nothing to do.
    assert retry_times == scheduled + [None] * (len(retry_times) - len(scheduled))
    assert all(d.attempts_left == 0 for d in decisions if d.retry_at is None)
    assert all(d.attempts_left > 0 for d in decisions if d.retry_at is not None)
    assert len(scheduled) <= len(policy.soft_retry_days)
