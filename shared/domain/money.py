"""Money as an integer in the currency's minor unit, with Stripe's rules for exponents and minimums.

Floats never touch an amount: parsing goes through Decimal and formatting through integer arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# Stripe's zero-decimal currencies: the amount is in whole units (¥1000 is amount=1000).
ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf"}
    | {"xof", "xpf"}
)
# Stripe takes three-decimal currencies with a last digit of 0, a rule we do not want to half-apply to
# money: they are refused outright until a business needs them.
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])

# The currencies Stripe presents card charges in (ISO 4217, lowercase), from Stripe's currency list.
STRIPE_CURRENCIES = frozenset(
    """usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bif bmd bnd bob brl bsd bwp byn bzd
    cad cdf chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip gmd gnf gtq gyd
    hkd hnl htg huf idr ils inr isk jmd jpy kes kgs khr kmf krw kyd kzt lak lbp lkr lrd lsl mad mdl mga
    mkd mmk mnt mop mur mvr mwk mxn myr mzn nad ngn nio nok npr nzd pab pen pgk php pkr pln pyg qar ron
    rsd rub rwf sar sbd scr sek sgd shp sle sos srd std szl thb tjs top try ttd twd tzs uah ugx uyu uzs
    vnd vuv wst xaf xcd xof xpf yer zar zmw""".split()
)

# Stripe's minimum charge per currency in minor units (docs: minimum and maximum charge amounts).
# Currencies not listed fall back to the USD-equivalent rule of thumb of 50 minor units.
STRIPE_MINIMUM_CHARGE: dict[str, int] = {
    "usd": 50,
    "aud": 50,
    "brl": 50,
    "cad": 50,
    "chf": 50,
    "eur": 50,
    "inr": 50,
    "nzd": 50,
    "sgd": 50,
    "gbp": 30,
    "aed": 200,
    "pln": 200,
    "ron": 200,
    "myr": 200,
    "bgn": 100,
    "dkk": 250,
    "nok": 300,
    "sek": 300,
    "hkd": 400,
    "mxn": 1000,
    "thb": 1000,
    "czk": 1500,
    "huf": 17500,
    "jpy": 50,
}
DEFAULT_MINIMUM_CHARGE = 50
# Stripe accepts at most eight digits of minor units.
STRIPE_MAXIMUM_AMOUNT = 99_999_999
# What a person may type for an amount ('-99,999,999.99 USD' and some spaces, with room to spare): longer
# is not one, and is refused before any arithmetic or formatting (and before a message repeats it).
MAX_AMOUNT_TEXT = 40

SYMBOLS: dict[str, str] = {
    "usd": "$",
    "eur": "€",
    "gbp": "£",
    "jpy": "¥",
    "krw": "₩",
    "inr": "₹",
    "cad": "CA$",
    "aud": "A$",
    "nzd": "NZ$",
    "chf": "CHF ",
    "sek": "SEK ",
    "nok": "NOK ",
    "dkk": "DKK ",
    "pln": "PLN ",
}


class MoneyError(ValueError):
    """An amount or currency that cannot be used; the message is fit to show to a person."""


def normalize_currency(currency: str) -> str:
    """Lowercase ISO 4217 code as Stripe wants it; three-decimal currencies are refused."""
    code = currency.strip().lower() if isinstance(currency, str) else ""
    if not re.fullmatch(r"[a-z]{3}", code):
        raise MoneyError(f"Currency must be a three-letter ISO code, got {currency!r}.")
    if code not in STRIPE_CURRENCIES and code not in THREE_DECIMAL:
        raise MoneyError(f"{code.upper()} is not a currency Stripe charges cards in.")
    if code in THREE_DECIMAL:
        raise MoneyError(f"{code.upper()} is a three-decimal currency; Offsession does not charge in it yet.")
    return code


def exponent(currency: str) -> int:
    """How many digits the minor unit has: 0 for JPY, 2 for USD."""
    return 0 if normalize_currency(currency) in ZERO_DECIMAL else 2


def minimum_charge(currency: str) -> int:
    return STRIPE_MINIMUM_CHARGE.get(normalize_currency(currency), DEFAULT_MINIMUM_CHARGE)


@dataclass(frozen=True, order=True)
class Money:
    """An amount in minor units with its currency. Arithmetic refuses to mix currencies."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise MoneyError(f"Amount must be a whole number of minor units, got {self.amount!r}.")
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise MoneyError(f"Cannot combine {self.currency.upper()} with {other.currency.upper()}.")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __str__(self) -> str:
        return format_money(self.amount, self.currency)


def format_money(amount: int, currency: str) -> str:
    """'$1,234.50', '¥1,235', '-€3.00'; unknown currencies as '1,234.50 XYZ'."""
    code = normalize_currency(currency)
    digits = exponent(code)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**digits) if digits else (abs(amount), 0)
    number = f"{whole:,}" + (f".{fraction:0{digits}d}" if digits else "")
    symbol = SYMBOLS.get(code)
    if symbol is None:
        return f"{sign}{number} {code.upper()}"
    return f"{sign}{symbol}{number}"


def to_major_string(amount: int, currency: str) -> str:
    """The plain decimal a form field shows: 1250 USD → '12.50', 1000 JPY → '1000'."""
    digits = exponent(currency)
    if not digits:
        return str(amount)
    sign = "-" if amount < 0 else ""
    whole, fraction = divmod(abs(amount), 10**digits)
    return f"{sign}{whole}.{fraction:0{digits}d}"


def parse_amount(text: str, currency: str) -> int:
    """What a person types → minor units. '12.5' USD → 1250, '1,000' JPY → 1000.

    Too many decimals for the currency ('12.345' USD, '10.5' JPY) is an error, never a rounding.
    """
    digits = exponent(currency)
    if len(text or "") > MAX_AMOUNT_TEXT:
        raise MoneyError("That is not an amount: it has far too many digits.")
    cleaned = (text or "").strip().replace(",", "").replace("_", "").replace(" ", "")
    # What format_money prints must parse back: symbols and the currency's own code are dropped.
    cleaned = re.sub(rf"(?i)^(-?)(?:{re.escape(currency.strip())}|[A-Z]{{0,2}}[$€£¥₩₹])", r"\1", cleaned)
    cleaned = re.sub(rf"(?i){re.escape(currency.strip())}$", "", cleaned)
    if not re.fullmatch(r"-?\d+(\.\d*)?|-?\.\d+", cleaned):
        raise MoneyError(f"{text!r} is not an amount.")
    try:
        value = Decimal(cleaned)
    except InvalidOperation as exc:  # pragma: no cover - the regex already rules these out
        raise MoneyError(f"{text!r} is not an amount.") from exc
    minor = value.scaleb(digits)
    if minor != minor.to_integral_value():
        unit = "whole units" if digits == 0 else f"at most {digits} decimals"
        raise MoneyError(f"{text.strip()} has too many decimals: {currency.upper()} takes {unit}.")
    return int(minor)
