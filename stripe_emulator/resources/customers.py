"""Customers, their default payment method (invoice_settings) and their payment methods."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..store import new_id
from ..wire import Params, apply_metadata, invalid, no_such
from .base import Ctx, Route, get, list_page, render
from .payment_methods import attach, check_pm_type, materialize, payment_method_ref
from .search import search


def new_customer(ctx: Ctx, email: str | None) -> dict[str, Any]:
    """A customer made by Stripe itself (Checkout's customer_creation=always)."""
    cus = _new_customer(ctx)
    cus["email"] = email
    ctx.data.customers[cus["id"]] = cus
    ctx.emit("customer.created", cus, None)
    return cus


def _new_customer(ctx: Ctx) -> dict[str, Any]:
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


def _customer_fields(p: Params) -> dict[str, Any]:
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


def _invoice_settings(ctx: Ctx, p: Params, customer_id: str,
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


def customer_create(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    cus = _new_customer(ctx)
    changes = _customer_fields(p)
    metadata = p.metadata() or {}
    pm_param = p.str("payment_method") or None
    pm_ref = payment_method_ref(ctx, pm_param, None) if pm_param else None
    if isinstance(pm_ref, dict) and pm_ref["customer"]:
        raise invalid("The payment method you provided has already been attached to a customer.",
                      param="payment_method")
    settings = _invoice_settings(ctx, p, cus["id"], pending_pm=pm_param)
    cus.update(changes)
    cus["metadata"] = metadata
    pm = materialize(ctx, pm_ref) if pm_ref is not None else None
    if settings:
        if pm is not None and settings.get("default_payment_method") == pm_param:
            settings["default_payment_method"] = pm["id"]
        cus["invoice_settings"].update(settings)
    ctx.data.customers[cus["id"]] = cus
    ctx.emit("customer.created", cus, None)
    if pm is not None:
        attach(ctx, pm, cus["id"])
    return render(ctx, cus, p.expand())


def _customer(ctx: Ctx, cid: str) -> dict[str, Any]:
    return get(ctx, "customers", cid, "customer")


def customer_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    (cid,) = args
    if cid in ctx.data.deleted_customers:
        return {"id": cid, "object": "customer", "deleted": True}
    return render(ctx, _customer(ctx, cid), p.expand())


def customer_update(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    (cid,) = args
    cus = _customer(ctx, cid)
    changes = _customer_fields(p)
    metadata = p.metadata()
    settings = _invoice_settings(ctx, p, cid)
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
        ctx.emit("customer.updated", cus, previous)
    return render(ctx, cus, p.expand())


def customer_delete(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    (cid,) = args
    cus = _customer(ctx, cid)
    del ctx.data.customers[cid]
    ctx.data.deleted_customers.add(cid)
    for pm in ctx.data.payment_methods.values():
        if pm["customer"] == cid:
            pm["customer"] = None
    ctx.emit("customer.deleted", cus, None)
    return {"id": cid, "object": "customer", "deleted": True}


def customer_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    email = p.str("email")
    rows: Iterator[dict[str, Any]] = reversed(ctx.data.customers.values())
    if email:
        rows = (c for c in rows if c["email"] == email)
    return list_page(ctx, p, rows, "/v1/customers", "customer")


def customer_search(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    fields = {"email": "str", "name": "str", "phone": "str", "created": "int"}
    return search(ctx, p, ctx.data.customers.values(), fields, "/v1/customers/search")


def customer_pm_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    (cid,) = args
    _customer(ctx, cid)
    check_pm_type(p)
    rows = (pm for pm in reversed(ctx.data.payment_methods.values()) if pm["customer"] == cid)
    return list_page(ctx, p, rows, f"/v1/customers/{cid}/payment_methods", "PaymentMethod")


def customer_pm_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    cid, pm_id = args
    _customer(ctx, cid)
    pm = get(ctx, "payment_methods", pm_id, "PaymentMethod")
    if pm["customer"] != cid:
        raise no_such("PaymentMethod", pm_id)
    return render(ctx, pm, p.expand())


ROUTES: list[Route] = [
    ("POST", "/v1/customers", customer_create),
    ("GET", "/v1/customers", customer_list),
    ("GET", "/v1/customers/search", customer_search),
    ("GET", "/v1/customers/{id}", customer_retrieve),
    ("POST", "/v1/customers/{id}", customer_update),
    ("DELETE", "/v1/customers/{id}", customer_delete),
    ("GET", "/v1/customers/{id}/payment_methods", customer_pm_list),
    ("GET", "/v1/customers/{id}/payment_methods/{id}", customer_pm_retrieve),
]
