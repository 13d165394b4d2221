"""PaymentMethods: a test token becomes a pm_... with the token's behaviour; attach, detach, update."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .. import cards
from ..cards import CardSpec
from ..store import new_id
from ..wire import Params, apply_metadata, invalid
from .base import Ctx, Route, customer_param, get, list_page, render


def payment_method_ref(ctx: Ctx, pm_param: str | None,
                       customer_id: str | None) -> str | dict[str, Any] | None:
    """Validate a payment_method parameter: a test token (str) or an existing pm (dict)."""
    if not pm_param:
        return None
    if cards.is_test_token(pm_param):
        return pm_param
    pm = get(ctx, "payment_methods", pm_param, "PaymentMethod", param="payment_method")
    owner = pm["customer"]
    if owner and customer_id is None:
        raise invalid(f"The provided PaymentMethod {pm_param} is attached to Customer {owner}. "
                      f"To use it, also pass the Customer's id in the `customer` parameter.",
                      param="customer")
    if owner and owner != customer_id:
        raise invalid(f"The provided PaymentMethod {pm_param} belongs to Customer {owner}, not to "
                      f"{customer_id}.", param="payment_method")
    return pm


def materialize(ctx: Ctx, ref: str | dict[str, Any], expiry: tuple[int, int] | None = None,
                name: str | None = None) -> dict[str, Any]:
    """A test token becomes a fresh pm_..., as on Stripe; an existing pm is returned as is. A card typed
    on the hosted Checkout page brings its own ``expiry`` (month, year) and cardholder ``name``."""
    if isinstance(ref, dict):
        return ref
    spec = cards.spec_for(ref)
    month, year = expiry or (12, time.gmtime(ctx.now).tm_year + 2)
    display = {"amex": "american_express", "diners": "diners_club"}.get(spec.brand, spec.brand)
    pm = {
        "id": new_id("pm_"),
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": {"city": None, "country": None, "line1": None, "line2": None,
                        "postal_code": None, "state": None},
            "email": None, "name": name, "phone": None, "tax_id": None,
        },
        "card": {
            "brand": spec.brand,
            "checks": {"address_line1_check": None, "address_postal_code_check": None,
                       "cvc_check": "unchecked"},
            "country": spec.country,
            "display_brand": display,
            "exp_month": month,
            "exp_year": year,
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


def card_spec(ctx: Ctx, pm: dict[str, Any]) -> CardSpec:
    return cards.spec_for(ctx.data.pm_token.get(pm["id"], "pm_card_visa"))


def attach(ctx: Ctx, pm: dict[str, Any], customer_id: str) -> None:
    pm["customer"] = customer_id
    ctx.emit("payment_method.attached", pm, None)


def check_pm_type(p: Params) -> None:
    pm_type = p.str("type")
    if pm_type not in (None, "", "card"):
        raise invalid(f"The emulator only has card payment methods, not {pm_type!r}.", param="type")


def pm_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    cid = p.str("customer") or None
    if cid:
        customer_param(ctx, cid)
    check_pm_type(p)
    rows: Iterator[dict[str, Any]] = reversed(ctx.data.payment_methods.values())
    if cid:
        rows = (pm for pm in rows if pm["customer"] == cid)
    return list_page(ctx, p, rows, "/v1/payment_methods", "PaymentMethod")


def pm_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    (pm_id,) = args
    return render(ctx, get(ctx, "payment_methods", pm_id, "PaymentMethod"), p.expand())


def pm_update(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    (pm_id,) = args
    pm = get(ctx, "payment_methods", pm_id, "PaymentMethod")
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
        ctx.emit("payment_method.updated", pm, previous)
    return render(ctx, pm, p.expand())


def pm_attach(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    (pm_id,) = args
    cid = p.str("customer", required=True) or ""
    customer_param(ctx, cid)
    if cards.is_test_token(pm_id):
        pm = materialize(ctx, pm_id)
    else:
        pm = get(ctx, "payment_methods", pm_id, "PaymentMethod")
        if pm["customer"] == cid:
            return render(ctx, pm, p.expand())
        if pm["customer"]:
            raise invalid("The payment method you provided has already been attached to a customer.",
                          param="customer")
    attach(ctx, pm, cid)
    return render(ctx, pm, p.expand())


def pm_detach(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    (pm_id,) = args
    pm = get(ctx, "payment_methods", pm_id, "PaymentMethod")
    cid = pm["customer"]
    if not cid:
        raise invalid("The payment method you provided is not attached to a customer so detachment "
                      "is impossible.", param="payment_method")
    pm["customer"] = None
    cus = ctx.data.customers.get(cid)
    if cus is not None and cus["invoice_settings"]["default_payment_method"] == pm_id:
        # Detaching the default card leaves the customer without a default, as on Stripe.
        cus["invoice_settings"] = {**cus["invoice_settings"], "default_payment_method": None}
        ctx.emit("customer.updated", cus, {"invoice_settings": {"default_payment_method": pm_id}})
    ctx.emit("payment_method.detached", pm, {"customer": cid})
    return render(ctx, pm, p.expand())


ROUTES: list[Route] = [
    ("GET", "/v1/payment_methods", pm_list),
    ("GET", "/v1/payment_methods/{id}", pm_retrieve),
    ("POST", "/v1/payment_methods/{id}", pm_update),
    ("POST", "/v1/payment_methods/{id}/attach", pm_attach),
    ("POST", "/v1/payment_methods/{id}/detach", pm_detach),
]
