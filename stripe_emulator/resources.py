"""Stripe v1 resources: customers, payment methods, setup/payment intents, charges, refunds, events.

Every handler validates all of its input before it changes anything, so an ``ApiError`` raised
during validation leaves no trace (and is not saved under the idempotency key). Errors raised after
a change (card declines) are marked ``saved``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import cards, schema
from .cards import CardSpec, Decline
from .store import PREFIX_TABLE, AccountData, new_id
from .wire import ApiError, Params, apply_metadata, doc_url, invalid, no_such

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

PI_CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
PI_CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation",
                 "requires_action", "processing")
SI_CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")

# Stripe's answer to a confirm that could need a redirect and has no return_url, as quoted in
# github.com/Attendize/Attendize/issues/1115 ("Here's the error message provided by Stripe").
_RETURN_URL_MESSAGE = (
    "A return_url must be specified because this {kind} is configured to automatically accept the "
    "payment methods enabled in the Dashboard, some of which may require a full page redirect to succeed. "
    "If you do not want to accept redirect-based payment methods, set automatic_payment_methods[enabled] "
    "to true and automatic_payment_methods[allow_redirects] to never when creating Setup Intents and "
    "Payment Intents."
)
_CHOICE_FIELDS = ("allowed_payment_method_types", "automatic_payment_methods",
                  "excluded_payment_method_types", "payment_method_types")


@dataclass
class Ctx:
    account: str
    data: AccountData
    request_id: str | None
    idempotency_key: str | None
    now: int
    # Where this emulator is reached (from the Host header), for URLs it hands out.
    base_url: str = "http://127.0.0.1:12111"


@dataclass(frozen=True)
class _Confirm:
    off_session: bool = False
    error_on_action: bool = False
    return_url: str | None = None
    use_stripe_sdk: bool = False


Emit = Callable[[Ctx, str, dict[str, Any], dict[str, Any] | None], None]
Handler = Callable[[Ctx, Params, tuple[str, ...]], dict[str, Any]]


class Resources:
    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        r = self._route
        self.routes: list[tuple[str, re.Pattern[str], Handler, schema.Endpoint]] = []
        r("POST", "/v1/customers", self.customer_create)
        r("GET", "/v1/customers", self.customer_list)
        r("GET", "/v1/customers/search", self.customer_search)
        r("GET", "/v1/customers/{id}", self.customer_retrieve)
        r("POST", "/v1/customers/{id}", self.customer_update)
        r("DELETE", "/v1/customers/{id}", self.customer_delete)
        r("GET", "/v1/customers/{id}/payment_methods", self.customer_pm_list)
        r("GET", "/v1/customers/{id}/payment_methods/{id}", self.customer_pm_retrieve)
        r("GET", "/v1/payment_methods", self.pm_list)
        r("GET", "/v1/payment_methods/{id}", self.pm_retrieve)
        r("POST", "/v1/payment_methods/{id}", self.pm_update)
        r("POST", "/v1/payment_methods/{id}/attach", self.pm_attach)
        r("POST", "/v1/payment_methods/{id}/detach", self.pm_detach)
        r("POST", "/v1/setup_intents", self.si_create)
        r("GET", "/v1/setup_intents", self.si_list)
        r("GET", "/v1/setup_intents/{id}", self.si_retrieve)
        r("POST", "/v1/setup_intents/{id}", self.si_update)
        r("POST", "/v1/setup_intents/{id}/confirm", self.si_confirm)
        r("POST", "/v1/setup_intents/{id}/cancel", self.si_cancel)
        r("POST", "/v1/payment_intents", self.pi_create)
        r("GET", "/v1/payment_intents", self.pi_list)
        r("GET", "/v1/payment_intents/search", self.pi_search)
        r("GET", "/v1/payment_intents/{id}", self.pi_retrieve)
        r("POST", "/v1/payment_intents/{id}", self.pi_update)
        r("POST", "/v1/payment_intents/{id}/confirm", self.pi_confirm)
        r("POST", "/v1/payment_intents/{id}/cancel", self.pi_cancel)
        r("GET", "/v1/charges", self.charge_list)
        r("GET", "/v1/charges/{id}", self.charge_retrieve)
        r("POST", "/v1/refunds", self.refund_create)
        r("GET", "/v1/refunds", self.refund_list)
        r("GET", "/v1/refunds/{id}", self.refund_retrieve)
        r("GET", "/v1/events", self.event_list)
        r("GET", "/v1/events/{id}", self.event_retrieve)

    def _route(self, method: str, pattern: str, handler: Handler) -> None:
        """Serve `pattern`; the parameters it takes are Stripe's (schema.py), so an endpoint the schema
        does not describe cannot be served (KeyError at start-up)."""
        regex = re.compile("^" + pattern.replace("{id}", "([^/]+)") + "$")
        self.routes.append((method, regex, handler, schema.endpoint(f"{method} {pattern}")))

    def match(self, method: str, path: str) -> tuple[Handler, schema.Endpoint, tuple[str, ...]] | None:
        for m, regex, handler, contract in self.routes:
            if m == method:
                hit = regex.match(path)
                if hit:
                    return handler, contract, hit.groups()
        return None

    # ------------------------------------------------------------------ shared helpers

    def render(self, ctx: Ctx, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
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
                target = self._lookup(ctx, value)
                if target is None:
                    raise invalid(f"This property cannot be expanded ({head}).", param="expand")
                out[head] = self.render(ctx, target, rests)
            elif isinstance(value, dict):
                out[head] = self.render(ctx, value, rests)
            elif value is not None:
                raise invalid(f"This property cannot be expanded ({head}).", param="expand")
        return out

    def _lookup(self, ctx: Ctx, obj_id: str) -> dict[str, Any] | None:
        for prefix, table in PREFIX_TABLE.items():
            if obj_id.startswith(prefix) and table != "events":
                found: dict[str, Any] | None = ctx.data.table(table).get(obj_id)
                return found
        return None

    def _page(self, ctx: Ctx, p: Params, items: Iterable[dict[str, Any]], url: str,
              kind: str) -> dict[str, Any]:
        """A list answer over ``items`` (newest first) with limit/starting_after/ending_before."""
        limit = self._limit(p, default=10)
        created = self._created_filter(p)
        rows = [o for o in items if created(o["created"])] if created else list(items)
        after, before = p.str("starting_after"), p.str("ending_before")
        if after:
            idx = self._index(rows, after, kind, "starting_after")
            rest = rows[idx + 1:]
            page, has_more = rest[:limit], len(rest) > limit
        elif before:
            idx = self._index(rows, before, kind, "ending_before")
            head = rows[:idx]
            page, has_more = head[-limit:], len(head) > limit
        else:
            page, has_more = rows[:limit], len(rows) > limit
        sub = [path[5:] for path in p.expand() if path.startswith("data.")]
        return {"object": "list", "data": [self.render(ctx, o, sub) for o in page],
                "has_more": has_more, "url": url}

    @staticmethod
    def _index(rows: list[dict[str, Any]], obj_id: str, kind: str, param: str) -> int:
        for i, row in enumerate(rows):
            if row["id"] == obj_id:
                return i
        raise no_such(kind, obj_id, param=param)

    @staticmethod
    def _limit(p: Params, default: int) -> int:
        limit = p.int("limit")
        if limit is None:
            return default
        if not 1 <= limit <= 100:
            raise invalid("Invalid integer: limit must be between 1 and 100", param="limit")
        return limit

    @staticmethod
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

    def _get(self, ctx: Ctx, table: str, obj_id: str, kind: str, param: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] | None = ctx.data.table(table).get(obj_id)
        if obj is None:
            raise no_such(kind, obj_id, param=param)
        return obj

    def _customer_param(self, ctx: Ctx, customer_id: str | None) -> dict[str, Any] | None:
        if not customer_id:
            return None
        return self._get(ctx, "customers", customer_id, "customer", param="customer")

    @staticmethod
    def _currency(p: Params, required: bool = True) -> str | None:
        cur = p.str("currency", required=required)
        if cur is None:
            return None
        if cur not in CURRENCIES:
            raise invalid(f"Invalid currency: {cur}. Stripe currently supports these currencies: "
                          f"{', '.join(sorted(CURRENCIES))}", param="currency")
        return cur

    @staticmethod
    def _check_amount(amount: int, currency: str) -> None:
        minimum = round(_MIN_MAJOR.get(currency, 0.50) * (1 if currency in ZERO_DECIMAL else 100))
        if amount < minimum:
            shown = f"{minimum}" if currency in ZERO_DECIMAL else f"{minimum / 100:.2f}"
            raise invalid(f"Amount must be at least {shown} {currency}", param="amount",
                          code="amount_too_small")
        if amount > MAX_AMOUNT:
            raise invalid("Amount must be no more than 99,999,999", param="amount",
                          code="amount_too_large")

    @staticmethod
    def _off_session(p: Params) -> bool | None:
        value = p.str("off_session")
        if value is None or value == "":
            return None
        if value in ("true", "one_off", "recurring"):
            return True
        if value == "false":
            return False
        raise invalid(f"Invalid off_session: {value}", param="off_session")

    @staticmethod
    def _payment_method_choice(p: Params, current: dict[str, Any] | None = None) -> dict[str, Any]:
        """The intent fields that say which payment method types it takes, from the request (and, on
        update and confirm, the intent's `current` values). Mutual exclusion and value types were
        checked by the endpoint's contract (schema.py). Since 2026-09-30.endive the choice is
        `allowed_payment_method_types` or dynamic payment methods (`automatic_payment_methods`, on by
        default, with optional `excluded_payment_method_types`)."""
        choice = {key: current.get(key) for key in _CHOICE_FIELDS} if current else {
            "allowed_payment_method_types": None,
            "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
            "excluded_payment_method_types": None,
        }
        allowed = p.list("allowed_payment_method_types")
        if allowed is not None:
            # Stripe keeps the compatible subset; the emulator's only payment method type is card.
            if "card" not in allowed:
                raise invalid("None of the allowed_payment_method_types can be used here: the emulator "
                              "models card payment methods only.", param="allowed_payment_method_types")
            choice.update(allowed_payment_method_types=allowed, automatic_payment_methods=None,
                          excluded_payment_method_types=None)
        apm_raw = p.dict("automatic_payment_methods")
        if apm_raw is not None:
            enabled = apm_raw["enabled"] == "true"
            choice["automatic_payment_methods"] = (
                {"allow_redirects": apm_raw.get("allow_redirects") or "always", "enabled": True}
                if enabled else None
            )
        if p.has("excluded_payment_method_types"):
            excluded = p.list("excluded_payment_method_types")
            if excluded and "card" in excluded:
                raise invalid("Excluding card leaves no payment method type: the emulator models card "
                              "payment methods only.", param="excluded_payment_method_types")
            choice["excluded_payment_method_types"] = excluded or None
        choice["payment_method_types"] = ["card"]
        return choice

    def _pm_ref(self, ctx: Ctx, pm_param: str | None, customer_id: str | None) -> str | dict[str, Any] | None:
        """Validate a payment_method parameter: a test token (str) or an existing pm (dict)."""
        if not pm_param:
            return None
        if cards.is_test_token(pm_param):
            return pm_param
        pm = self._get(ctx, "payment_methods", pm_param, "PaymentMethod", param="payment_method")
        owner = pm["customer"]
        if owner and customer_id is None:
            raise invalid(f"The provided PaymentMethod {pm_param} is attached to Customer {owner}. "
                          f"To use it, also pass the Customer's id in the `customer` parameter.",
                          param="customer")
        if owner and owner != customer_id:
            raise invalid(f"The provided PaymentMethod {pm_param} belongs to Customer {owner}, not to "
                          f"{customer_id}.", param="payment_method")
        return pm

    def _materialize(self, ctx: Ctx, ref: str | dict[str, Any]) -> dict[str, Any]:
        """A test token becomes a fresh pm_..., as on Stripe; an existing pm is returned as is."""
        if isinstance(ref, dict):
            return ref
        spec = cards.spec_for(ref)
        year = time.gmtime(ctx.now).tm_year
        display = {"amex": "american_express", "diners": "diners_club"}.get(spec.brand, spec.brand)
        pm = {
            "id": new_id("pm_"),
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": {
                "address": {"city": None, "country": None, "line1": None, "line2": None,
                            "postal_code": None, "state": None},
                "email": None, "name": None, "phone": None, "tax_id": None,
            },
            "card": {
                "brand": spec.brand,
                "checks": {"address_line1_check": None, "address_postal_code_check": None,
                           "cvc_check": "unchecked"},
                "country": spec.country,
                "display_brand": display,
                "exp_month": 12,
                "exp_year": year + 2,
                "fingerprint": spec.fingerprint,
                "funding": spec.funding,
                "generated_from": None,
                "last4": spec.last4,
                "networks": {"available": [spec.brand], "preferred": None},
                "regulated_status": "unregulated",
                "three_d_secure_usage": {"supported": True},
                "wallet": None,
            },
            "created": ctx.now,
            "customer": None,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        ctx.data.payment_methods[pm["id"]] = pm
        ctx.data.pm_token[pm["id"]] = ref
        return pm

    def _spec(self, ctx: Ctx, pm: dict[str, Any]) -> CardSpec:
        return cards.spec_for(ctx.data.pm_token.get(pm["id"], "pm_card_visa"))

    def _attach(self, ctx: Ctx, pm: dict[str, Any], customer_id: str) -> None:
        pm["customer"] = customer_id
        self.emit(ctx, "payment_method.attached", pm, None)

    @staticmethod
    def _next_action(ctx: Ctx, obj_id: str, return_url: str | None, use_stripe_sdk: bool) -> dict[str, Any]:
        """Server-side confirmation with a return_url redirects to a 3-D Secure page (here the
        emulator's own /_emulator/3ds/...); otherwise Stripe.js handles it (use_stripe_sdk)."""
        page = f"{ctx.base_url}/_emulator/3ds/{obj_id}"
        if return_url and not use_stripe_sdk:
            return {"type": "redirect_to_url", "redirect_to_url": {"return_url": return_url, "url": page}}
        sdk: dict[str, Any] = {"type": "three_d_secure_redirect", "stripe_js": page, "source": new_id("src_")}
        if return_url:
            # Stripe's contents here are opaque ("only intended to be used by Stripe.js"); the emulator
            # keeps the confirm's return_url in them so its 3-D Secure page can send the browser back.
            sdk["return_url"] = return_url
        return {"type": "use_stripe_sdk", "use_stripe_sdk": sdk}

    @staticmethod
    def _request_log_url(ctx: Ctx) -> str:
        return f"https://dashboard.stripe.com/test/logs/{ctx.request_id}?t={ctx.now}"

    @staticmethod
    def _apply_text(obj: dict[str, Any], p: Params, key: str, max_len: int | None = None) -> None:
        if p.has(key):
            value = p.str(key, max_len=max_len)
            obj[key] = value or None

    # ------------------------------------------------------------------ customers

    def _new_customer(self, ctx: Ctx, p: Params) -> dict[str, Any]:
        cid = new_id("cus_", 14)
        return {
            "id": cid,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": ctx.now,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": None,
            "invoice_prefix": cid[4:12].upper(),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                                 "rendering_options": None},
            "livemode": False,
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }

    def _customer_fields(self, p: Params) -> dict[str, Any]:
        """Validated plain fields shared by create and update (not invoice_settings)."""
        changes: dict[str, Any] = {}
        for key, limit in (("email", 512), ("name", 256), ("description", 350), ("phone", 20)):
            if p.has(key):
                changes[key] = p.str(key, max_len=limit) or None
        for key in ("address", "shipping"):
            if p.has(key):
                changes[key] = p.dict(key)
        if p.has("preferred_locales"):
            changes["preferred_locales"] = p.list("preferred_locales") or []
        if p.has("tax_exempt"):
            changes["tax_exempt"] = p.str("tax_exempt", choices=("none", "exempt", "reverse")) or "none"
        if p.has("balance"):
            changes["balance"] = p.int("balance") or 0
        return changes

    def _invoice_settings(self, ctx: Ctx, p: Params, customer_id: str,
                          pending_pm: str | None = None) -> dict[str, Any] | None:
        raw = p.dict("invoice_settings")
        if raw is None:
            return None
        out: dict[str, Any] = {}
        if "default_payment_method" in raw:
            pm_id = raw["default_payment_method"]
            param = "invoice_settings[default_payment_method]"
            if not isinstance(pm_id, str):
                raise invalid("Invalid string", param=param)
            if pm_id == "":
                out["default_payment_method"] = None
            elif pending_pm is not None and pm_id == pending_pm:
                # Same value as the create call's payment_method: it names the pm being attached;
                # customer_create swaps in the real id once that pm exists.
                out["default_payment_method"] = pending_pm
            else:
                pm = ctx.data.payment_methods.get(pm_id)
                if pm is None or pm["customer"] != customer_id:
                    raise invalid(f"The customer does not have a payment method with the ID {pm_id}. The "
                                  "payment method must be attached to the customer.", param=param)
                out["default_payment_method"] = pm_id
        if "footer" in raw:
            footer = raw["footer"]
            if not isinstance(footer, str):
                raise invalid("Invalid string", param="invoice_settings[footer]")
            out["footer"] = footer or None
        return out

    def customer_create(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        cus = self._new_customer(ctx, p)
        changes = self._customer_fields(p)
        metadata = p.metadata() or {}
        pm_param = p.str("payment_method") or None
        pm_ref = self._pm_ref(ctx, pm_param, None) if pm_param else None
        if isinstance(pm_ref, dict) and pm_ref["customer"]:
            raise invalid("The payment method you provided has already been attached to a customer.",
                          param="payment_method")
        settings = self._invoice_settings(ctx, p, cus["id"], pending_pm=pm_param)
        cus.update(changes)
        cus["metadata"] = metadata
        pm = self._materialize(ctx, pm_ref) if pm_ref is not None else None
        if settings:
            if pm is not None and settings.get("default_payment_method") == pm_param:
                settings["default_payment_method"] = pm["id"]
            cus["invoice_settings"].update(settings)
        ctx.data.customers[cus["id"]] = cus
        self.emit(ctx, "customer.created", cus, None)
        if pm is not None:
            self._attach(ctx, pm, cus["id"])
        return self.render(ctx, cus, p.expand())

    def _customer(self, ctx: Ctx, cid: str) -> dict[str, Any]:
        return self._get(ctx, "customers", cid, "customer")

    def customer_retrieve(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        (cid,) = args
        if cid in ctx.data.deleted_customers:
            return {"id": cid, "object": "customer", "deleted": True}
        return self.render(ctx, self._customer(ctx, cid), p.expand())

    def customer_update(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        (cid,) = args
        cus = self._customer(ctx, cid)
        changes = self._customer_fields(p)
        metadata = p.metadata()
        settings = self._invoice_settings(ctx, p, cid)
        previous: dict[str, Any] = {}
        for key, value in changes.items():
            if cus[key] != value:
                previous[key] = cus[key]
                cus[key] = value
        if metadata is not None:
            merged = apply_metadata(cus["metadata"], metadata)
            if merged != cus["metadata"]:
                previous["metadata"] = cus["metadata"]
                cus["metadata"] = merged
        if settings:
            old = {k: cus["invoice_settings"][k] for k, v in settings.items()
                   if cus["invoice_settings"][k] != v}
            if old:
                previous["invoice_settings"] = old
                cus["invoice_settings"] = {**cus["invoice_settings"], **settings}
        if previous:
            self.emit(ctx, "customer.updated", cus, previous)
        return self.render(ctx, cus, p.expand())

    def customer_delete(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        (cid,) = args
        cus = self._customer(ctx, cid)
        del ctx.data.customers[cid]
        ctx.data.deleted_customers.add(cid)
        for pm in ctx.data.payment_methods.values():
            if pm["customer"] == cid:
                pm["customer"] = None
        self.emit(ctx, "customer.deleted", cus, None)
        return {"id": cid, "object": "customer", "deleted": True}

    def customer_list(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        email = p.str("email")
        rows: Iterator[dict[str, Any]] = reversed(ctx.data.customers.values())
        if email:
            rows = (c for c in rows if c["email"] == email)
        return self._page(ctx, p, rows, "/v1/customers", "customer")

    def customer_search(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        fields = {"email": "str", "name": "str", "phone": "str", "created": "int"}
        return self._search(ctx, p, ctx.data.customers.values(), fields, "/v1/customers/search")

    def customer_pm_list(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        (cid,) = args
        self._customer(ctx, cid)
        self._check_pm_type(p)
        rows = (pm for pm in reversed(ctx.data.payment_methods.values()) if pm["customer"] == cid)
        return self._page(ctx, p, rows, f"/v1/customers/{cid}/payment_methods", "PaymentMethod")

    def customer_pm_retrieve(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        cid, pm_id = args
        self._customer(ctx, cid)
        pm = self._get(ctx, "payment_methods", pm_id, "PaymentMethod")
        if pm["customer"] != cid:
            raise no_such("PaymentMethod", pm_id)
        return self.render(ctx, pm, p.expand())

    # ------------------------------------------------------------------ payment methods

    @staticmethod
    def _check_pm_type(p: Params) -> None:
        pm_type = p.str("type")
        if pm_type not in (None, "", "card"):
            raise invalid(f"The emulator only has card payment methods, not {pm_type!r}.", param="type")

    def pm_list(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        cid = p.str("customer") or None
        if cid:
            self._customer_param(ctx, cid)
        self._check_pm_type(p)
        rows: Iterator[dict[str, Any]] = reversed(ctx.data.payment_methods.values())
        if cid:
            rows = (pm for pm in rows if pm["customer"] == cid)
        return self._page(ctx, p, rows, "/v1/payment_methods", "PaymentMethod")

    def pm_retrieve(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        (pm_id,) = args
        return self.render(ctx, self._get(ctx, "payment_methods", pm_id, "PaymentMethod"), p.expand())

    def pm_update(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        (pm_id,) = args
        pm = self._get(ctx, "payment_methods", pm_id, "PaymentMethod")
        metadata = p.metadata()
        billing = p.dict("billing_details")
        redisplay = p.str("allow_redisplay", choices=("always", "limited", "unspecified"))
        previous: dict[str, Any] = {}
        if metadata is not None:
            merged = apply_metadata(pm["metadata"], metadata)
            if merged != pm["metadata"]:
                previous["metadata"] = pm["metadata"]
                pm["metadata"] = merged
        if billing is not None:
            previous["billing_details"] = pm["billing_details"]
            pm["billing_details"] = {**pm["billing_details"], **billing}
        if redisplay:
            previous["allow_redisplay"] = pm["allow_redisplay"]
            pm["allow_redisplay"] = redisplay
        if previous:
            self.emit(ctx, "payment_method.updated", pm, previous)
        return self.render(ctx, pm, p.expand())

    def pm_attach(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        (pm_id,) = args
        cid = p.str("customer", required=True) or ""
        self._customer_param(ctx, cid)
        if cards.is_test_token(pm_id):
            pm = self._materialize(ctx, pm_id)
        else:
            pm = self._get(ctx, "payment_methods", pm_id, "PaymentMethod")
            if pm["customer"] == cid:
                return self.render(ctx, pm, p.expand())
            if pm["customer"]:
                raise invalid("The payment method you provided has already been attached to a customer.",
                              param="customer")
        self._attach(ctx, pm, cid)
        return self.render(ctx, pm, p.expand())

    def pm_detach(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        (pm_id,) = args
        pm = self._get(ctx, "payment_methods", pm_id, "PaymentMethod")
        cid = pm["customer"]
        if not cid:
            raise invalid("The payment method you provided is not attached to a customer so detachment "
                          "is impossible.", param="payment_method")
        pm["customer"] = None
        cus = ctx.data.customers.get(cid)
        if cus is not None and cus["invoice_settings"]["default_payment_method"] == pm_id:
            # Detaching the default card leaves the customer without a default, as on Stripe.
            cus["invoice_settings"] = {**cus["invoice_settings"], "default_payment_method": None}
            self.emit(ctx, "customer.updated", cus, {"invoice_settings": {"default_payment_method": pm_id}})
        self.emit(ctx, "payment_method.detached", pm, {"customer": cid})
        return self.render(ctx, pm, p.expand())

    # ------------------------------------------------------------------ setup intents

    def si_create(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        cid = p.str("customer") or None
        self._customer_param(ctx, cid)
        pm_ref = self._pm_ref(ctx, p.str("payment_method"), cid)
        usage = p.str("usage", choices=("off_session", "on_session")) or "off_session"
        confirm = p.bool("confirm") or False
        metadata = p.metadata() or {}
        description = p.str("description", max_len=1000)
        choice = self._payment_method_choice(p)
        if confirm and pm_ref is None:
            raise invalid("You cannot confirm this SetupIntent because it's missing a payment method. "
                          "Pass `payment_method`.", param="payment_method", code="parameter_missing")
        return_url = p.str("return_url") or None
        if confirm:
            _require_return_url(choice, return_url, "Setup Intent")
        pm = self._materialize(ctx, pm_ref) if pm_ref is not None else None
        sid = new_id("seti_")
        si = {
            "id": sid,
            "object": "setup_intent",
            "allowed_payment_method_types": choice["allowed_payment_method_types"],
            "application": None,
            "automatic_payment_methods": choice["automatic_payment_methods"],
            "cancellation_reason": None,
            "client_secret": f"{sid}_secret_{new_id('', 25)}",
            "created": ctx.now,
            "customer": cid,
            "description": description or None,
            "excluded_payment_method_types": choice["excluded_payment_method_types"],
            "flow_directions": None,
            "last_setup_error": None,
            "latest_attempt": None,
            "livemode": False,
            "mandate": None,
            "metadata": metadata,
            "next_action": None,
            "on_behalf_of": p.str("on_behalf_of") or None,
            "payment_method": pm["id"] if pm else None,
            "payment_method_configuration_details": None,
            "payment_method_options": {"card": {"mandate_options": None, "network": None,
                                                "request_three_d_secure": "automatic"}},
            "payment_method_types": choice["payment_method_types"],
            "single_use_mandate": None,
            "status": "requires_confirmation" if pm else "requires_payment_method",
            "usage": usage,
        }
        ctx.data.setup_intents[sid] = si
        self.emit(ctx, "setup_intent.created", si, None)
        if confirm and pm is not None:
            self._si_confirm(ctx, si, pm, return_url, p.bool("use_stripe_sdk") or False)
        return self.render(ctx, si, p.expand())

    def _si(self, ctx: Ctx, sid: str) -> dict[str, Any]:
        return self._get(ctx, "setup_intents", sid, "setupintent")

    def si_retrieve(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        return self.render(ctx, self._si(ctx, args[0]), p.expand())

    def si_list(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        cid = p.str("customer") or None
        pm_id = p.str("payment_method") or None
        rows: Iterator[dict[str, Any]] = reversed(ctx.data.setup_intents.values())
        if cid:
            rows = (s for s in rows if s["customer"] == cid)
        if pm_id:
            rows = (s for s in rows if s["payment_method"] == pm_id)
        return self._page(ctx, p, rows, "/v1/setup_intents", "setupintent")

    def si_update(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        si = self._si(ctx, args[0])
        if si["status"] not in SI_CONFIRMABLE:
            raise self._unexpected_si(ctx, si, "update")
        cid = si["customer"]
        if p.has("customer"):
            cid = p.str("customer") or None
            self._customer_param(ctx, cid)
        pm_ref = self._pm_ref(ctx, p.str("payment_method"), cid)
        metadata = p.metadata()
        choice = self._payment_method_choice(p, si)
        si.update(choice)
        si["customer"] = cid
        self._apply_text(si, p, "description", 1000)
        si["metadata"] = apply_metadata(si["metadata"], metadata)
        if pm_ref is not None:
            si["payment_method"] = self._materialize(ctx, pm_ref)["id"]
            si["status"] = "requires_confirmation"
            si["next_action"] = None
        return self.render(ctx, si, p.expand())

    def si_confirm(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        si = self._si(ctx, args[0])
        if si["status"] not in SI_CONFIRMABLE:
            raise self._unexpected_si(ctx, si, "confirm")
        pm_param = p.str("payment_method") or si["payment_method"]
        if not pm_param:
            raise invalid("You cannot confirm this SetupIntent because it's missing a payment method. "
                          "Pass `payment_method`.", param="payment_method", code="parameter_missing")
        pm_ref = self._pm_ref(ctx, pm_param, si["customer"])
        assert pm_ref is not None
        return_url, sdk = p.str("return_url") or None, p.bool("use_stripe_sdk") or False
        choice = self._payment_method_choice(p, si)
        _require_return_url(choice, return_url, "Setup Intent")
        pm = self._materialize(ctx, pm_ref)
        si.update(choice)
        self._si_confirm(ctx, si, pm, return_url, sdk)
        return self.render(ctx, si, p.expand())

    def si_cancel(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        si = self._si(ctx, args[0])
        reason = p.str("cancellation_reason", choices=("abandoned", "requested_by_customer", "duplicate"))
        if si["status"] in ("succeeded", "canceled"):
            raise self._unexpected_si(ctx, si, "cancel")
        si.update(status="canceled", cancellation_reason=reason or None, next_action=None)
        self.emit(ctx, "setup_intent.canceled", si, None)
        return self.render(ctx, si, p.expand())

    def _unexpected_si(self, ctx: Ctx, si: dict[str, Any], action: str) -> ApiError:
        err = invalid(f"You cannot {action} this SetupIntent because it has a status of {si['status']}.",
                      code="setup_intent_unexpected_state")
        err.error["setup_intent"] = si
        return err

    def _si_confirm(self, ctx: Ctx, si: dict[str, Any], pm: dict[str, Any], return_url: str | None,
                    use_stripe_sdk: bool) -> None:
        """Run the card check; raises a saved 402 when the card is declined."""
        spec = self._spec(ctx, pm)
        si.update(payment_method=pm["id"], latest_attempt=new_id("setatt_"), last_setup_error=None,
                  next_action=None)
        if cards.setup_needs_auth(spec):
            si.update(status="requires_action",
                      next_action=self._next_action(ctx, si["id"], return_url, use_stripe_sdk))
            self.emit(ctx, "setup_intent.requires_action", si, None)
            return
        decline = cards.setup_decline(spec)
        if decline is not None:
            raise self._si_decline(ctx, si, pm, decline)
        self._si_succeed(ctx, si, pm)

    def _si_succeed(self, ctx: Ctx, si: dict[str, Any], pm: dict[str, Any]) -> None:
        si.update(status="succeeded", next_action=None, last_setup_error=None)
        if si["customer"] and not pm["customer"]:
            self._attach(ctx, pm, si["customer"])
        if si["usage"] == "off_session":
            ctx.data.pm_setup.add(pm["id"])
        self.emit(ctx, "setup_intent.succeeded", si, None)

    def _si_decline(self, ctx: Ctx, si: dict[str, Any], pm: dict[str, Any], decline: Decline) -> ApiError:
        error = self._card_error(decline, pm, charge=None)
        si.update(status="requires_payment_method", payment_method=None, last_setup_error=error,
                  next_action=None)
        self.emit(ctx, "setup_intent.setup_failed", si, None)
        body = {**error, "setup_intent": si, "request_log_url": self._request_log_url(ctx)}
        return ApiError(402, body, saved=True)

    def authenticate_si(self, ctx: Ctx, si: dict[str, Any], succeed: bool) -> dict[str, Any]:
        if si["status"] != "requires_action":
            raise self._unexpected_si(ctx, si, "authenticate")
        pm = ctx.data.payment_methods[si["payment_method"]]
        if not succeed:
            error = {"code": "setup_intent_authentication_failure",
                     "doc_url": doc_url("setup_intent_authentication_failure"),
                     "message": "The latest attempt to set up the payment method has failed because "
                                "authentication failed.",
                     "payment_method": dict(pm), "type": "invalid_request_error"}
            si.update(status="requires_payment_method", payment_method=None, last_setup_error=error,
                      next_action=None)
            self.emit(ctx, "setup_intent.setup_failed", si, None)
            return si
        decline = cards.setup_decline(self._spec(ctx, pm))
        if decline is not None:
            self._si_decline(ctx, si, pm, decline)
        else:
            self._si_succeed(ctx, si, pm)
        return si

    # ------------------------------------------------------------------ payment intents

    def _pi(self, ctx: Ctx, pi_id: str) -> dict[str, Any]:
        return self._get(ctx, "payment_intents", pi_id, "payment_intent")

    def _confirm_args(self, p: Params, choice: dict[str, Any]) -> _Confirm:
        """How to confirm, from the request; checks the return_url that redirecting methods need."""
        args = _Confirm(off_session=bool(self._off_session(p)),
                        error_on_action=p.bool("error_on_requires_action") or False,
                        return_url=p.str("return_url") or None,
                        use_stripe_sdk=p.bool("use_stripe_sdk") or False)
        _require_return_url(choice, args.return_url, "Payment Intent")
        return args

    def pi_create(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        amount = p.int("amount", required=True)
        currency = self._currency(p)
        assert amount is not None and currency is not None
        self._check_amount(amount, currency)
        cid = p.str("customer") or None
        self._customer_param(ctx, cid)
        confirm = p.bool("confirm") or False
        if self._off_session(p) is not None and not confirm:
            raise invalid("You can only pass in `off_session` when `confirm` is set to `true`.",
                          param="off_session")
        pm_ref = self._pm_ref(ctx, p.str("payment_method"), cid)
        metadata = p.metadata() or {}
        choice = self._payment_method_choice(p)
        if p.str("statement_descriptor"):
            raise invalid("The `statement_descriptor` parameter is not supported for the `card` payment "
                          "method type. Use `statement_descriptor_suffix` instead.",
                          param="statement_descriptor")
        suffix = p.str("statement_descriptor_suffix", max_len=22)
        sfu = p.str("setup_future_usage", choices=("off_session", "on_session"))
        capture = p.str("capture_method", choices=("automatic", "automatic_async"))
        confirmation = p.str("confirmation_method", choices=("automatic", "manual"))
        fee = p.int("application_fee_amount")
        transfer = self._transfer_data(p)
        how = _Confirm()
        if confirm:
            if pm_ref is None:
                raise invalid("You cannot confirm this PaymentIntent because it's missing a payment method. "
                              "To confirm it, pass `payment_method`.", param="payment_method",
                              code="payment_intent_unexpected_state")
            how = self._confirm_args(p, choice)
        pm = self._materialize(ctx, pm_ref) if pm_ref is not None else None
        pid = new_id("pi_")
        pi: dict[str, Any] = {
            "id": pid,
            "object": "payment_intent",
            "allowed_payment_method_types": choice["allowed_payment_method_types"],
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": fee,
            "automatic_payment_methods": choice["automatic_payment_methods"],
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": capture or "automatic_async",
            "client_secret": f"{pid}_secret_{new_id('', 25)}",
            "confirmation_method": confirmation or "automatic",
            "created": ctx.now,
            "currency": currency,
            "customer": cid,
            "description": p.str("description", max_len=1000) or None,
            "excluded_payment_method_types": choice["excluded_payment_method_types"],
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "next_action": None,
            "on_behalf_of": p.str("on_behalf_of") or None,
            "payment_method": pm["id"] if pm else None,
            "payment_method_configuration_details": None,
            "payment_method_options": {"card": {"installments": None, "mandate_options": None,
                                                "network": None, "request_three_d_secure": "automatic"}},
            "payment_method_types": choice["payment_method_types"],
            "processing": None,
            "receipt_email": p.str("receipt_email") or None,
            "review": None,
            "setup_future_usage": sfu or None,
            "shipping": p.dict("shipping"),
            "source": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": suffix or None,
            "status": "requires_confirmation" if pm else "requires_payment_method",
            "transfer_data": transfer,
            "transfer_group": p.str("transfer_group") or None,
        }
        ctx.data.payment_intents[pid] = pi
        if cid:
            ctx.data.pis_by_customer.setdefault(cid, []).append(pid)
        self.emit(ctx, "payment_intent.created", pi, None)
        if confirm and pm is not None:
            self._pi_confirm(ctx, pi, pm, how)
        return self.render(ctx, pi, p.expand())

    @staticmethod
    def _transfer_data(p: Params) -> dict[str, Any] | None:
        raw = p.dict("transfer_data")
        if raw is None:
            return None
        dest = raw.get("destination")
        if not isinstance(dest, str) or not dest.startswith("acct_"):
            raise invalid("Missing required param: transfer_data[destination].",
                          param="transfer_data[destination]", code="parameter_missing")
        out: dict[str, Any] = {"destination": dest}
        if "amount" in raw:
            try:
                out["amount"] = int(raw["amount"])
            except (TypeError, ValueError):
                raise invalid(f"Invalid integer: {raw['amount']}", param="transfer_data[amount]") from None
        return out

    def pi_retrieve(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        return self.render(ctx, self._pi(ctx, args[0]), p.expand())

    def pi_list(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        cid = p.str("customer") or None
        rows: Iterable[dict[str, Any]]
        if cid:
            ids = ctx.data.pis_by_customer.get(cid, [])
            rows = (ctx.data.payment_intents[i] for i in reversed(ids))
        else:
            rows = reversed(ctx.data.payment_intents.values())
        return self._page(ctx, p, rows, "/v1/payment_intents", "payment_intent")

    def pi_search(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        fields = {"amount": "int", "created": "int", "currency": "str", "customer": "str",
                  "status": "str", "payment_method": "str"}
        return self._search(ctx, p, ctx.data.payment_intents.values(), fields, "/v1/payment_intents/search")

    def _unexpected_pi(self, ctx: Ctx, pi: dict[str, Any], action: str, allowed: tuple[str, ...]) -> ApiError:
        done = {"confirm": "confirmed", "cancel": "canceled", "update": "updated",
                "authenticate": "authenticated"}[action]
        err = invalid(f"You cannot {action} this PaymentIntent because it has a status of {pi['status']}. "
                      f"Only a PaymentIntent with one of the following statuses may be {done}: "
                      f"{', '.join(allowed)}.", code="payment_intent_unexpected_state")
        err.error["payment_intent"] = pi
        return err

    def pi_update(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        pi = self._pi(ctx, args[0])
        if pi["status"] not in PI_CONFIRMABLE:
            raise self._unexpected_pi(ctx, pi, "update", PI_CONFIRMABLE)
        amount = p.int("amount") if p.has("amount") else pi["amount"]
        currency = self._currency(p, required=False) or pi["currency"]
        assert amount is not None
        self._check_amount(amount, currency)
        cid = pi["customer"]
        if p.has("customer"):
            cid = p.str("customer") or None
            self._customer_param(ctx, cid)
        pm_ref = self._pm_ref(ctx, p.str("payment_method"), cid)
        metadata = p.metadata()
        if p.str("statement_descriptor"):
            raise invalid("The `statement_descriptor` parameter is not supported for the `card` payment "
                          "method type. Use `statement_descriptor_suffix` instead.",
                          param="statement_descriptor")
        suffix_given = p.has("statement_descriptor_suffix")
        suffix = p.str("statement_descriptor_suffix", max_len=22)
        sfu_given = p.has("setup_future_usage")
        sfu = p.str("setup_future_usage", choices=("off_session", "on_session"))
        choice = self._payment_method_choice(p, pi)
        transfer = self._transfer_data(p) if p.has("transfer_data") else pi["transfer_data"]
        fee = pi["application_fee_amount"]
        if p.has("application_fee_amount"):
            fee = p.int("application_fee_amount")
        shipping = p.dict("shipping") if p.has("shipping") else pi["shipping"]
        for key in ("description", "receipt_email", "transfer_group"):
            p.str(key, max_len=1000)
        # Everything is valid: apply.
        pi.update(choice)
        if cid != pi["customer"]:
            if pi["customer"]:
                ctx.data.pis_by_customer[pi["customer"]].remove(pi["id"])
            if cid:
                ctx.data.pis_by_customer.setdefault(cid, []).append(pi["id"])
        pi.update(amount=amount, currency=currency, customer=cid, transfer_data=transfer,
                  application_fee_amount=fee, shipping=shipping, last_payment_error=None)
        pi["metadata"] = apply_metadata(pi["metadata"], metadata)
        self._apply_text(pi, p, "description", 1000)
        self._apply_text(pi, p, "receipt_email")
        self._apply_text(pi, p, "transfer_group")
        if suffix_given:
            pi["statement_descriptor_suffix"] = suffix or None
        if sfu_given:
            pi["setup_future_usage"] = sfu or None
        if p.has("payment_method"):
            if pm_ref is None:
                pi.update(payment_method=None, status="requires_payment_method", next_action=None)
            else:
                pm = self._materialize(ctx, pm_ref)
                pi.update(payment_method=pm["id"], status="requires_confirmation", next_action=None)
        return self.render(ctx, pi, p.expand())

    def pi_confirm(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        pi = self._pi(ctx, args[0])
        if pi["status"] not in PI_CONFIRMABLE:
            raise self._unexpected_pi(ctx, pi, "confirm", PI_CONFIRMABLE)
        pm_param = p.str("payment_method") or pi["payment_method"]
        if not pm_param:
            raise invalid("You cannot confirm this PaymentIntent because it's missing a payment method. "
                          "To confirm it, pass `payment_method`.", param="payment_method",
                          code="payment_intent_unexpected_state")
        pm_ref = self._pm_ref(ctx, pm_param, pi["customer"])
        assert pm_ref is not None
        sfu_given = p.has("setup_future_usage")
        sfu = p.str("setup_future_usage", choices=("off_session", "on_session"))
        choice = self._payment_method_choice(p, pi)
        how = self._confirm_args(p, choice)
        receipt = p.str("receipt_email")
        pm = self._materialize(ctx, pm_ref)
        if sfu_given:
            pi["setup_future_usage"] = sfu or None
        if receipt is not None:
            pi["receipt_email"] = receipt or None
        pi.update(choice)
        self._pi_confirm(ctx, pi, pm, how)
        return self.render(ctx, pi, p.expand())

    def pi_cancel(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        pi = self._pi(ctx, args[0])
        reason = p.str("cancellation_reason",
                       choices=("duplicate", "fraudulent", "requested_by_customer", "abandoned"))
        if pi["status"] not in PI_CANCELABLE:
            raise self._unexpected_pi(ctx, pi, "cancel", PI_CANCELABLE)
        pi.update(status="canceled", canceled_at=ctx.now, cancellation_reason=reason or None,
                  next_action=None)
        self.emit(ctx, "payment_intent.canceled", pi, None)
        return self.render(ctx, pi, p.expand())

    def _pi_confirm(self, ctx: Ctx, pi: dict[str, Any], pm: dict[str, Any], how: _Confirm) -> None:
        """Attempt the payment; raises a saved 402 when it fails."""
        spec = self._spec(ctx, pm)
        pi.update(payment_method=pm["id"], last_payment_error=None, next_action=None)
        set_up = pm["id"] in ctx.data.pm_setup
        if cards.needs_auth(spec, off_session=how.off_session, set_up=set_up):
            if how.off_session or how.error_on_action:
                # Off session nobody can authenticate: Stripe declines with authentication_required.
                raise self._pi_decline(ctx, pi, pm, cards.AUTH_REQUIRED)
            pi.update(status="requires_action",
                      next_action=self._next_action(ctx, pi["id"], how.return_url, how.use_stripe_sdk))
            self.emit(ctx, "payment_intent.requires_action", pi, None)
            return
        if spec.decline is not None:
            raise self._pi_decline(ctx, pi, pm, spec.decline)
        self._pi_succeed(ctx, pi, pm)

    def _new_charge(self, ctx: Ctx, pi: dict[str, Any], pm: dict[str, Any],
                    decline: Decline | None) -> dict[str, Any]:
        ok = decline is None
        card = pm["card"]
        outcome = (
            {"network_status": "approved_by_network", "reason": None, "risk_level": "normal",
             "risk_score": 20, "seller_message": "Payment complete.", "type": "authorized"}
            if ok else
            {"network_status": "declined_by_network", "reason": decline.decline_code, "risk_level": "normal",
             "risk_score": 20, "seller_message": "The bank did not return any further details with this "
                                                 "decline.", "type": "issuer_declined"}
        )
        ch = {
            "id": new_id("ch_"),
            "object": "charge",
            "amount": pi["amount"],
            "amount_captured": pi["amount"] if ok else 0,
            "amount_refunded": 0,
            "application": None,
            "application_fee": None,
            "application_fee_amount": pi["application_fee_amount"],
            "balance_transaction": new_id("txn_") if ok else None,
            "billing_details": pm["billing_details"],
            "calculated_statement_descriptor": "OFFSESSION EMULATOR",
            "captured": ok,
            "created": ctx.now,
            "currency": pi["currency"],
            "customer": pi["customer"],
            "description": pi["description"],
            "disputed": False,
            "failure_balance_transaction": None,
            "failure_code": None if ok else decline.code,
            "failure_message": None if ok else decline.message,
            "fraud_details": {},
            "livemode": False,
            "metadata": dict(pi["metadata"]),
            "on_behalf_of": pi["on_behalf_of"],
            "outcome": outcome,
            "paid": ok,
            "payment_intent": pi["id"],
            "payment_method": pm["id"],
            "payment_method_details": {
                "card": {
                    "amount_authorized": pi["amount"] if ok else None,
                    "brand": card["brand"],
                    "checks": card["checks"],
                    "country": card["country"],
                    "exp_month": card["exp_month"],
                    "exp_year": card["exp_year"],
                    "fingerprint": card["fingerprint"],
                    "funding": card["funding"],
                    "last4": card["last4"],
                    "network": card["brand"],
                    "three_d_secure": None,
                },
                "type": "card",
            },
            "receipt_email": pi["receipt_email"],
            "receipt_url": None,
            "refunded": False,
            "review": None,
            "statement_descriptor_suffix": pi["statement_descriptor_suffix"],
            "status": "succeeded" if ok else "failed",
            "transfer_data": pi["transfer_data"],
            "transfer_group": pi["transfer_group"],
        }
        ctx.data.charges[ch["id"]] = ch
        return ch

    def _pi_succeed(self, ctx: Ctx, pi: dict[str, Any], pm: dict[str, Any]) -> None:
        ch = self._new_charge(ctx, pi, pm, None)
        pi.update(status="succeeded", amount_received=pi["amount"], latest_charge=ch["id"], next_action=None,
                  last_payment_error=None)
        if pi["setup_future_usage"]:
            if pi["customer"] and not pm["customer"]:
                self._attach(ctx, pm, pi["customer"])
            if pi["setup_future_usage"] == "off_session":
                ctx.data.pm_setup.add(pm["id"])
        self.emit(ctx, "charge.succeeded", ch, None)
        self.emit(ctx, "payment_intent.succeeded", pi, None)

    @staticmethod
    def _card_error(decline: Decline, pm: dict[str, Any], charge: str | None) -> dict[str, Any]:
        error: dict[str, Any] = {}
        if decline.advice_code:
            error["advice_code"] = decline.advice_code
        if charge:
            error["charge"] = charge
        error.update(code=decline.code, decline_code=decline.decline_code, doc_url=doc_url(decline.code),
                     message=decline.message, payment_method=dict(pm), type="card_error")
        return error

    def _pi_decline(self, ctx: Ctx, pi: dict[str, Any], pm: dict[str, Any], decline: Decline) -> ApiError:
        ch = self._new_charge(ctx, pi, pm, decline)
        error = self._card_error(decline, pm, ch["id"])
        # A failed PaymentIntent goes back to requires_payment_method and lets go of its card;
        # the card stays visible in last_payment_error.payment_method.
        pi.update(status="requires_payment_method", payment_method=None, latest_charge=ch["id"],
                  last_payment_error=error, next_action=None)
        self.emit(ctx, "charge.failed", ch, None)
        self.emit(ctx, "payment_intent.payment_failed", pi, None)
        body = {**error, "payment_intent": pi, "request_log_url": self._request_log_url(ctx)}
        return ApiError(402, body, saved=True)

    def authenticate_pi(self, ctx: Ctx, pi: dict[str, Any], succeed: bool) -> dict[str, Any]:
        if pi["status"] != "requires_action":
            raise self._unexpected_pi(ctx, pi, "authenticate", ("requires_action",))
        pm = ctx.data.payment_methods[pi["payment_method"]]
        if not succeed:
            error = {"code": "payment_intent_authentication_failure",
                     "doc_url": doc_url("payment_intent_authentication_failure"),
                     "message": "The provided PaymentMethod has failed authentication. You can provide "
                                "payment_method_data or a new PaymentMethod to attempt to fulfill this "
                                "PaymentIntent again.",
                     "payment_method": dict(pm), "type": "invalid_request_error"}
            pi.update(status="requires_payment_method", payment_method=None, last_payment_error=error,
                      next_action=None)
            self.emit(ctx, "payment_intent.payment_failed", pi, None)
            return pi
        if pi["setup_future_usage"] == "off_session":
            ctx.data.pm_setup.add(pm["id"])
        spec = self._spec(ctx, pm)
        if spec.decline is not None:
            self._pi_decline(ctx, pi, pm, spec.decline)
        else:
            self._pi_succeed(ctx, pi, pm)
        return pi

    # ------------------------------------------------------------------ charges and refunds

    def charge_retrieve(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        return self.render(ctx, self._get(ctx, "charges", args[0], "charge"), p.expand())

    def charge_list(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        cid = p.str("customer") or None
        pid = p.str("payment_intent") or None
        rows: Iterator[dict[str, Any]] = reversed(ctx.data.charges.values())
        if cid:
            rows = (c for c in rows if c["customer"] == cid)
        if pid:
            rows = (c for c in rows if c["payment_intent"] == pid)
        return self._page(ctx, p, rows, "/v1/charges", "charge")

    def refund_create(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        pid = p.str("payment_intent") or None
        chid = p.str("charge") or None
        amount = p.int("amount")
        reason = p.str("reason", choices=("duplicate", "fraudulent", "requested_by_customer"))
        metadata = p.metadata() or {}
        if pid is None and chid is None:
            raise invalid("One of the following params should be provided for this request: "
                          "payment_intent or charge.", param="payment_intent", code="parameter_missing")
        if pid is not None:
            pi = self._get(ctx, "payment_intents", pid, "payment_intent", param="payment_intent")
            ch = ctx.data.charges.get(pi["latest_charge"] or "")
            if ch is None or ch["status"] != "succeeded":
                raise invalid(f"This PaymentIntent ({pid}) does not have a successful charge to refund.",
                              param="payment_intent")
            if chid is not None and chid != ch["id"]:
                raise invalid(f"Charge {chid} does not belong to PaymentIntent {pid}.", param="charge")
        else:
            assert chid is not None
            ch = self._get(ctx, "charges", chid, "charge", param="charge")
            if ch["status"] != "succeeded":
                raise invalid(f"Charge {chid} has not succeeded and cannot be refunded.", param="charge")
        remaining = ch["amount"] - ch["amount_refunded"]
        if remaining <= 0:
            raise invalid(f"Charge {ch['id']} has already been refunded.", code="charge_already_refunded")
        if amount is None:
            amount = remaining
        if amount <= 0:
            raise invalid("Invalid positive integer", param="amount")
        if amount > remaining:
            raise invalid(f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                          f"({remaining})", param="amount", code="amount_too_large")
        refund = {
            "id": new_id("re_"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": new_id("txn_"),
            "charge": ch["id"],
            "created": ctx.now,
            "currency": ch["currency"],
            "destination_details": {"card": {"reference_status": "pending",
                                             "reference_type": "acquirer_reference_number",
                                             "type": "refund"}, "type": "card"},
            "metadata": metadata,
            "payment_intent": ch["payment_intent"],
            "reason": reason or None,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        ctx.data.refunds[refund["id"]] = refund
        previous = {"amount_refunded": ch["amount_refunded"], "refunded": ch["refunded"]}
        ch["amount_refunded"] += amount
        ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
        self.emit(ctx, "refund.created", refund, None)
        self.emit(ctx, "charge.refunded", ch, previous)
        return self.render(ctx, refund, p.expand())

    def refund_retrieve(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        return self.render(ctx, self._get(ctx, "refunds", args[0], "refund"), p.expand())

    def refund_list(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        pid = p.str("payment_intent") or None
        chid = p.str("charge") or None
        rows: Iterator[dict[str, Any]] = reversed(ctx.data.refunds.values())
        if pid:
            rows = (r for r in rows if r["payment_intent"] == pid)
        if chid:
            rows = (r for r in rows if r["charge"] == chid)
        return self._page(ctx, p, rows, "/v1/refunds", "refund")

    # ------------------------------------------------------------------ events

    def event_retrieve(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        rec = ctx.data.events.get(args[0])
        if rec is None:
            raise no_such("event", args[0])
        return rec.render()

    def event_list(self, ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
        wanted = p.str("type") or None
        types = p.list("types")
        if wanted and types:
            raise invalid("You may only specify one of these parameters: type, types.", param="types")
        delivery = p.bool("delivery_success")
        match: Callable[[str], bool] | None = None
        if wanted and wanted.endswith(".*"):
            # "payment_intent.*" matches every payment_intent event.
            match = _prefix_matcher(wanted[:-1])
        elif wanted:
            match = wanted.__eq__
        elif types:
            match = set(types).__contains__
        recs = reversed(ctx.data.events.values())
        if match is not None:
            recs = (r for r in recs if match(r.type))
        if delivery is not None:
            recs = (r for r in recs if (r.pending_webhooks == 0) == delivery)
        # Filter on the cheap record fields, parse JSON only for the page being returned.
        light = ({"id": r.id, "created": r.created, "_rec": r} for r in recs)
        page = self._page(ctx, Params({k: v for k, v in p.data.items() if k != "expand"}),
                          light, "/v1/events", "event")
        page["data"] = [row["_rec"].render() for row in page["data"]]
        return page

    # ------------------------------------------------------------------ search

    def _search(self, ctx: Ctx, p: Params, values: Iterable[dict[str, Any]], fields: dict[str, str],
                url: str) -> dict[str, Any]:
        query = p.str("query", required=True) or ""
        predicate = parse_query(query, fields)
        limit = self._limit(p, default=10)
        page = p.str("page") or None
        offset = 0
        if page:
            if not page.startswith("page_") or not page[5:].isdigit():
                raise invalid(f"Invalid page: {page}", param="page")
            offset = int(page[5:])
        rows = [o for o in reversed(list(values)) if predicate(o)]
        chunk = rows[offset:offset + limit]
        more = len(rows) > offset + limit
        sub = [path[5:] for path in p.expand() if path.startswith("data.")]
        return {"object": "search_result", "data": [self.render(ctx, o, sub) for o in chunk],
                "has_more": more, "next_page": f"page_{offset + limit}" if more else None, "url": url}


def _require_return_url(choice: dict[str, Any], return_url: str | None, kind: str) -> None:
    """Dynamic payment methods that may redirect (allow_redirects other than never) need a return_url
    to confirm; a card-only choice (allowed_payment_method_types) does not."""
    apm = choice["automatic_payment_methods"]
    if apm is not None and apm.get("allow_redirects") != "never" and not return_url:
        raise invalid(_RETURN_URL_MESSAGE.format(kind=kind))


def _prefix_matcher(prefix: str) -> Callable[[str], bool]:
    return lambda value: value.startswith(prefix)


_CLAUSE = re.compile(
    r"""\s*(?P<neg>-)?(?P<field>metadata\[(?P<q>['"])(?P<key>.*?)(?P=q)\]|[a-z_]+)\s*"""
    r"""(?P<op>:|>=|<=|>|<)\s*(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<bare>[^\s'"]+))\s*"""
)
_JOIN = re.compile(r"(AND|OR)\s+")


def parse_query(query: str, fields: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    """Stripe's search syntax: clauses like metadata['k']:'v', status:'x', amount>100, joined by
    AND or OR (not both), a leading - negates a clause."""
    clauses: list[Callable[[dict[str, Any]], bool]] = []
    joins: set[str] = set()
    pos = 0
    while True:
        m = _CLAUSE.match(query, pos)
        if not m:
            raise invalid(f"Invalid search query at position {pos}: {query!r}", param="query")
        clauses.append(_clause(m, fields))
        pos = m.end()
        if pos >= len(query):
            break
        j = _JOIN.match(query, pos)
        if not j:
            raise invalid(f"Invalid search query at position {pos}: {query!r}", param="query")
        joins.add(j.group(1))
        pos = j.end()
    if len(joins) > 1:
        raise invalid("Search queries cannot mix AND and OR.", param="query")
    if joins == {"OR"}:
        return lambda o: any(c(o) for c in clauses)
    return lambda o: all(c(o) for c in clauses)


def _clause(m: re.Match[str], fields: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    value = next(v for v in (m.group("sq"), m.group("dq"), m.group("bare")) if v is not None)
    op = m.group("op")
    negate = m.group("neg") is not None
    test: Callable[[dict[str, Any]], bool]
    if m.group("key") is not None:
        if op != ":":
            raise invalid("Metadata can only be matched with ':'.", param="query")
        key = m.group("key")
        test = lambda o: o.get("metadata", {}).get(key) == value  # noqa: E731
    else:
        name = m.group("field")
        kind = fields.get(name)
        if kind is None:
            raise invalid(f"Field {name!r} is not supported in search queries. Supported: "
                          f"{', '.join(sorted(fields))}, metadata['key'].", param="query")
        if kind == "int":
            try:
                number = int(value)
            except ValueError:
                raise invalid(f"Field {name!r} needs a number, got {value!r}.", param="query") from None
            compare: dict[str, Callable[[int], bool]] = {
                ":": lambda x: x == number, ">": lambda x: x > number, ">=": lambda x: x >= number,
                "<": lambda x: x < number, "<=": lambda x: x <= number,
            }
            check = compare[op]
            test = lambda o: o.get(name) is not None and check(o[name])  # noqa: E731
        else:
            if op != ":":
                raise invalid(f"Field {name!r} can only be matched with ':'.", param="query")
            test = lambda o: o.get(name) == value  # noqa: E731
    if negate:
        return lambda o: not test(o)
    return test
