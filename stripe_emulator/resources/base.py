"""What every resource module shares: the request context, expansion, lists and the money rules.

Every handler validates all of its input before it changes anything, so an ``ApiError`` raised during
validation leaves no trace (and is not saved under the idempotency key). Errors raised after a change
(card declines) are marked ``saved``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..store import PREFIX_TABLE, AccountData
from ..wire import Params, invalid, no_such

if TYPE_CHECKING:
    from ..accounts import Registry
    from ..faults import Faults

# Minimum charge per currency in the smallest unit (stripe.com/docs/currencies#minimum-and-maximum).
ZERO_DECIMAL = frozenset(
    ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf",
     "xof", "xpf"]
)
_MIN_MAJOR = {
    "usd": 0.50, "aud": 0.50, "brl": 0.50, "cad": 0.50, "chf": 0.50, "eur": 0.50, "inr": 0.50,
    "nzd": 0.50, "sgd": 0.50, "gbp": 0.30, "aed": 2.00, "pln": 2.00, "ron": 2.00, "myr": 2.00,
    "bgn": 1.00, "dkk": 2.50, "nok": 3.00, "sek": 3.00, "hkd": 4.00, "mxn": 10.0, "thb": 10.0,
    "czk": 15.0, "huf": 175.0, "jpy": 50.0,
}
CURRENCIES = frozenset(_MIN_MAJOR) | ZERO_DECIMAL | frozenset(
    ["zar", "ils", "isk", "try", "cny", "twd", "php", "idr", "sar", "qar", "kwd", "bhd", "omr", "jod", "tnd",
     "egp", "ngn", "kes", "cop", "pen", "ars", "uyu"]
)
MAX_AMOUNT = 99_999_999


class Services(Protocol):
    """What handlers reach beyond their account's objects (the Emulator provides it)."""

    registry: Registry

    @property
    def faults(self) -> Faults: ...

    def emit(self, ctx: Ctx, type_: str, obj: dict[str, Any], previous: dict[str, Any] | None,
             platforms: list[str] | None = None) -> None:
        """Create the event (a snapshot of ``obj``) and queue its webhook deliveries."""

    def plan(self, ctx: Ctx, obj_id: str, action: dict[str, Any], at: float | None = None) -> None:
        """Make ``action`` happen to ``obj_id`` later: at ``at`` (epoch seconds), or after the
        settle_delay_ms fault (None: only when a test settles it)."""


@dataclass
class Ctx:
    account: str
    data: AccountData
    request_id: str | None
    idempotency_key: str | None
    now: int
    services: Services
    # Where this emulator is reached (from the Host header), for URLs it hands out.
    base_url: str = "http://127.0.0.1:12111"
    # The account whose API key made the request (a platform acting with Stripe-Account differs from
    # ``account``); None outside an API request.
    key_account: str | None = None

    def emit(self, type_: str, obj: dict[str, Any], previous: dict[str, Any] | None = None,
             platforms: list[str] | None = None) -> None:
        self.services.emit(self, type_, obj, previous, platforms)


Handler = Callable[[Ctx, Params, tuple[str, ...]], dict[str, Any]]
# (HTTP method, path with {id} for each path parameter, handler): what each resource module serves.
Route = tuple[str, str, Handler]


def render(ctx: Ctx, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The object with ``expand[]`` paths replaced by the objects they name."""
    if not paths:
        return obj
    groups: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        groups.setdefault(head, [])
        if rest:
            groups[head].append(rest)
    out = dict(obj)
    for head, rests in groups.items():
        if head not in out:
            raise invalid(f"This property cannot be expanded ({head}).", param="expand")
        value = out[head]
        if isinstance(value, str):
            target = lookup(ctx, value)
            if target is None:
                raise invalid(f"This property cannot be expanded ({head}).", param="expand")
            out[head] = render(ctx, target, rests)
        elif isinstance(value, dict):
            out[head] = render(ctx, value, rests)
        elif value is not None:
            raise invalid(f"This property cannot be expanded ({head}).", param="expand")
    return out


def lookup(ctx: Ctx, obj_id: str) -> dict[str, Any] | None:
    for prefix, table in PREFIX_TABLE.items():
        if obj_id.startswith(prefix) and table != "events":
            found: dict[str, Any] | None = ctx.data.table(table).get(obj_id)
            return found
    return None


def list_page(ctx: Ctx, p: Params, items: Iterable[dict[str, Any]], url: str,
          kind: str) -> dict[str, Any]:
    """A list answer over ``items`` (newest first) with limit/starting_after/ending_before."""
    limit = list_limit(p, default=10)
    created = _created_filter(p)
    rows = [o for o in items if created(o["created"])] if created else list(items)
    after, before = p.str("starting_after"), p.str("ending_before")
    if after:
        idx = _index(rows, after, kind, "starting_after")
        rest = rows[idx + 1:]
        page, has_more = rest[:limit], len(rest) > limit
    elif before:
        idx = _index(rows, before, kind, "ending_before")
        head = rows[:idx]
        page, has_more = head[-limit:], len(head) > limit
    else:
        page, has_more = rows[:limit], len(rows) > limit
    sub = [path[5:] for path in p.expand() if path.startswith("data.")]
    return {"object": "list", "data": [render(ctx, o, sub) for o in page],
            "has_more": has_more, "url": url}


def _index(rows: list[dict[str, Any]], obj_id: str, kind: str, param: str) -> int:
    for i, row in enumerate(rows):
        if row["id"] == obj_id:
            return i
    raise no_such(kind, obj_id, param=param)


def list_limit(p: Params, default: int) -> int:
    limit = p.int("limit")
    if limit is None:
        return default
    if not 1 <= limit <= 100:
        raise invalid("Invalid integer: limit must be between 1 and 100", param="limit")
    return limit


def _created_filter(p: Params) -> Callable[[int], bool] | None:
    raw = p.data.get("created")
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        exact = p.int("created")
        return lambda c: c == exact
    if not isinstance(raw, dict):
        raise invalid("Invalid created filter", param="created")
    bounds: list[Callable[[int], bool]] = []
    ops: dict[str, Callable[[int, int], bool]] = {
        "gt": lambda c, v: c > v, "gte": lambda c, v: c >= v,
        "lt": lambda c, v: c < v, "lte": lambda c, v: c <= v,
    }
    for key, value in raw.items():
        if key not in ops or not isinstance(value, str):
            raise invalid(f"Received unknown parameter: created[{key}]", param=f"created[{key}]")
        try:
            bound = int(value)
        except ValueError:
            raise invalid(f"Invalid integer: {value}", param=f"created[{key}]") from None
        op = ops[key]
        bounds.append(lambda c, op=op, bound=bound: op(c, bound))
    return lambda c: all(b(c) for b in bounds)


def get(ctx: Ctx, table: str, obj_id: str, kind: str, param: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] | None = ctx.data.table(table).get(obj_id)
    if obj is None:
        raise no_such(kind, obj_id, param=param)
    return obj


def customer_param(ctx: Ctx, customer_id: str | None) -> dict[str, Any] | None:
    if not customer_id:
        return None
    return get(ctx, "customers", customer_id, "customer", param="customer")


def currency_param(p: Params, required: bool = True) -> str | None:
    cur = p.str("currency", required=required)
    if cur is None:
        return None
    if cur not in CURRENCIES:
        raise invalid(f"Invalid currency: {cur}. Stripe currently supports these currencies: "
                      f"{', '.join(sorted(CURRENCIES))}", param="currency")
    return cur


def check_amount(amount: int, currency: str) -> None:
    minimum = round(_MIN_MAJOR.get(currency, 0.50) * (1 if currency in ZERO_DECIMAL else 100))
    if amount < minimum:
        shown = f"{minimum}" if currency in ZERO_DECIMAL else f"{minimum / 100:.2f}"
        raise invalid(f"Amount must be at least {shown} {currency}", param="amount",
                      code="amount_too_small")
    if amount > MAX_AMOUNT:
        raise invalid("Amount must be no more than 99,999,999", param="amount",
                      code="amount_too_large")


def request_log_url(ctx: Ctx) -> str:
    return f"https://dashboard.stripe.com/test/logs/{ctx.request_id}?t={ctx.now}"


def apply_text(obj: dict[str, Any], p: Params, key: str, max_len: int | None = None) -> None:
    if p.has(key):
        value = p.str(key, max_len=max_len)
        obj[key] = value or None


