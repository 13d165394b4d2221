from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.money import (
    Money,
    MoneyError,
    exponent,
    format_money,
    minimum_charge,
    normalize_currency,
    parse_amount,
    to_major_string,
)


def test_minor_units_per_currency() -> None:
    assert parse_amount("1000", "JPY") == 1000
    assert parse_amount("10.00", "USD") == 1000
    assert exponent("jpy") == 0 and exponent("krw") == 0 and exponent("usd") == 2


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.5", "usd", 1250),
        ("12.50", "usd", 1250),
        ("1,000", "jpy", 1000),
        ("$1,234.50", "usd", 123450),
        ("0.5", "eur", 50),
        (".5", "usd", 50),
        ("7", "gbp", 700),
        ("¥1,235", "jpy", 1235),
        ("-3", "usd", -300),
    ],
)
def test_parse_what_people_type(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "message"),
    [
        ("12.345", "usd", "too many decimals"),
        ("10.5", "jpy", "whole units"),
        ("abc", "usd", "not an amount"),
        ("", "usd", "not an amount"),
        ("1e5", "usd", "not an amount"),
        ("1.2.3", "usd", "not an amount"),
    ],
)
def test_parse_refuses_clearly(text: str, currency: str, message: str) -> None:
    with pytest.raises(MoneyError, match=message):
        parse_amount(text, currency)


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (123450, "usd", "$1,234.50"),
        (1235, "jpy", "¥1,235"),
        (-300, "eur", "-€3.00"),
        (5, "usd", "$0.05"),
        (123456, "czk", "1,234.56 CZK"),
        (1000, "krw", "₩1,000"),
    ],
)
def test_format(amount: int, currency: str, shown: str) -> None:
    assert format_money(amount, currency) == shown


def test_three_decimal_currencies_are_refused() -> None:
    with pytest.raises(MoneyError, match="three-decimal"):
        normalize_currency("KWD")


def test_a_currency_stripe_does_not_charge_in_is_refused() -> None:
    with pytest.raises(MoneyError, match="not a currency Stripe charges cards in"):
        normalize_currency("zzz")


def test_currency_must_be_iso() -> None:
    with pytest.raises(MoneyError, match="three-letter"):
        normalize_currency("dollars")
    assert normalize_currency(" USD ") == "usd"


def test_stripe_minimums() -> None:
    assert minimum_charge("usd") == 50
    assert minimum_charge("jpy") == 50
    assert minimum_charge("gbp") == 30
    assert minimum_charge("php") == 50  # not in Stripe's table: the USD-equivalent rule of thumb


def test_money_refuses_floats_and_mixed_currencies() -> None:
    with pytest.raises(MoneyError):
        Money(10.5, "usd")  # type: ignore[arg-type]
    with pytest.raises(MoneyError, match="Cannot combine"):
        Money(100, "usd") + Money(100, "eur")
    assert Money(100, "usd") + Money(250, "USD") == Money(350, "usd")
    assert str(Money(123450, "usd")) == "$1,234.50"


currencies = st.sampled_from(["usd", "eur", "gbp", "jpy", "krw", "chf", "sek"])


@given(amount=st.integers(min_value=-(10**12), max_value=10**12), currency=currencies)
def test_round_trip_through_text(amount: int, currency: str) -> None:
    assert parse_amount(to_major_string(amount, currency), currency) == amount
    assert parse_amount(format_money(amount, currency), currency) == amount


@given(a=st.integers(-(10**9), 10**9), b=st.integers(-(10**9), 10**9), currency=currencies)
def test_addition_is_exact(a: int, b: int, currency: str) -> None:
    assert (Money(a, currency) + Money(b, currency)).amount == a + b
    assert (Money(a, currency) - Money(b, currency) + Money(b, currency)).amount == a
