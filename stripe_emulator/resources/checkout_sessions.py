"""Checkout Sessions in setup mode (docs.stripe.com/api/checkout/sessions,
docs.stripe.com/payments/checkout/save-and-reuse): saving a card for later through Stripe's hosted page.

Creating one creates its SetupIntent (usage off_session) and gives the ``url`` of the hosted page
(checkout_page.py) where a person enters a card. Completing the page confirms that SetupIntent, with the
bank's page in between when the card asks for authentication; the card is then attached to the
session's customer and the session is ``complete`` (checkout.session.completed). An open session expires
at ``expires_at`` or when expired through the API (checkout.session.expired; its SetupIntent is
canceled). The emulator serves ``mode=setup`` with ``ui_mode=hosted_page`` only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ..store import new_id
from ..wire import Params, invalid
from .base import CURRENCIES, Ctx, Route, customer_param, get, list_page, render
from .customers import new_customer
from .payment_methods import attach
from .setup_intents import new_setup_intent

# expires_at: "anywhere from 30 minutes to 24 hours after Checkout Session creation" (the SDK's
# SessionCreateParams), 24 hours by default.
MIN_LIFETIME_S = 30 * 60
MAX_LIFETIME_S = 24 * 3600


def _url(p: Params, key: str) -> str | None:
    url = p.str(key) or None
    if url is not None:
        parts = urlsplit(url.replace("{CHECKOUT_SESSION_ID}", "x"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise invalid("Not a valid URL", param=key)
    return url


def _choice(p: Params) -> dict[str, Any]:
    """Which payment method types the session offers; the emulator has cards only."""
    allowed = p.list("allowed_payment_method_types")
    if allowed is not None:
        if "card" not in allowed:
            raise invalid("None of the allowed_payment_method_types can be used here: the emulator models "
                          "card payment methods only.", param="allowed_payment_method_types")
        return {"allowed_payment_method_types": allowed, "automatic_payment_methods": None,
                "excluded_payment_method_types": None, "payment_method_types": ["card"]}
    excluded = p.list("excluded_payment_method_types")
    if excluded and "card" in excluded:
        raise invalid("Excluding card leaves no payment method type: the emulator models card payment "
                      "methods only.", param="excluded_payment_method_types")
    return {"allowed_payment_method_types": None,
            "automatic_payment_methods": {"allow_redirects": "always", "enabled": True},
            "excluded_payment_method_types": excluded or None, "payment_method_types": ["card"]}


def session_create(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    mode = p.str("mode")
    if not mode:
        raise invalid("Missing required param: mode.", param="mode", code="parameter_missing")
    if mode != "setup":
        raise invalid(f"The emulator serves Checkout Sessions in setup mode only, not mode={mode}.",
                      param="mode")
    ui_mode = p.str("ui_mode") or "hosted_page"
    if ui_mode != "hosted_page":
        raise invalid(f"The emulator serves the hosted Checkout page only (ui_mode=hosted_page), not "
                      f"ui_mode={ui_mode}.", param="ui_mode")
    if p.has("line_items"):
        raise invalid("You can not pass `line_items` in `setup` mode.", param="line_items")
    cid = p.str("customer") or None
    customer_param(ctx, cid)
    email = p.str("customer_email") or None
    if cid and email:
        raise invalid("You may only specify one of these parameters: customer, customer_email.",
                      param="customer_email")
    choice = _choice(p)
    currency = p.str("currency") or None
    if currency is None and choice["allowed_payment_method_types"] is None:
        # "Checkout uses Dynamic payment methods by default, which requires you to pass the currency
        # parameter when using setup mode." (docs.stripe.com/payments/checkout/save-and-reuse)
        raise invalid("Missing required param: currency.", param="currency", code="parameter_missing")
    if currency is not None and currency not in CURRENCIES:
        raise invalid(f"Invalid currency: {currency}.", param="currency")
    success_url, cancel_url = _url(p, "success_url"), _url(p, "cancel_url")
    expires_at = p.int("expires_at")
    if expires_at is None:
        expires_at = ctx.now + MAX_LIFETIME_S
    elif expires_at < ctx.now + MIN_LIFETIME_S:
        raise invalid("The `expires_at` timestamp must be at least 30 minutes from Checkout Session "
                      "creation.", param="expires_at")
    elif expires_at > ctx.now + MAX_LIFETIME_S:
        raise invalid("The `expires_at` timestamp must be less than 24 hours from Checkout Session "
                      "creation.", param="expires_at")
    reference = p.str("client_reference_id", max_len=200)
    metadata = p.metadata() or {}
    setup = p.dict("setup_intent_data") or {}
    si_metadata = Params(setup).metadata() or {}
    creation = p.str("customer_creation") or None
    session_id = new_id("cs_test_", 58)
    si = new_setup_intent(ctx, cid, "off_session", si_metadata, setup.get("description") or None,
                          setup.get("on_behalf_of") or None, choice, None)
    session = {
        "id": session_id,
        "object": "checkout.session",
        "adaptive_pricing": None,
        "after_expiration": None,
        "allow_promotion_codes": None,
        "allowed_payment_method_types": choice["allowed_payment_method_types"],
        "amount_subtotal": None,
        "amount_total": None,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_address_collection": p.str("billing_address_collection") or None,
        "branding_settings": None,
        "cancel_url": cancel_url,
        "client_reference_id": reference or None,
        "client_secret": None,
        "collected_information": None,
        "consent": None,
        "consent_collection": None,
        "created": ctx.now,
        "currency": currency,
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {"after_submit": None, "shipping_address": None, "submit": None,
                        "terms_of_service_acceptance": None},
        "customer": cid,
        "customer_account": None,
        "customer_creation": creation,
        "customer_details": None,
        "customer_email": email,
        "discounts": [],
        "excluded_payment_method_types": choice["excluded_payment_method_types"],
        "expires_at": expires_at,
        "integration_identifier": p.str("integration_identifier") or None,
        "invoice": None,
        "invoice_creation": None,
        "livemode": False,
        "locale": p.str("locale") or None,
        "managed_payments": None,
        "metadata": metadata,
        "mode": "setup",
        "name_collection": None,
        "optional_items": None,
        "origin_context": p.str("origin_context") or None,
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": "always",
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "payment_status": "no_payment_required",
        "permissions": None,
        "phone_number_collection": {"enabled": False},
        "presentment_details": None,
        "recovered_from": None,
        "redirect_on_completion": None,
        "return_url": None,
        "saved_payment_method_options": None,
        "setup_intent": si["id"],
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": "open",
        "submit_type": None,
        "subscription": None,
        "success_url": success_url,
        "tax_id_collection": {"enabled": False, "required": "never"},
        "total_details": None,
        "ui_mode": "hosted_page",
        "url": f"{ctx.base_url}/c/pay/{session_id}",
        "wallet_options": None,
    }
    ctx.data.checkout_sessions[session_id] = session
    ctx.services.plan(ctx, session_id, {"expire": True}, at=float(expires_at))
    return render(ctx, session, p.expand())


def current(ctx: Ctx, session: dict[str, Any]) -> dict[str, Any]:
    """The session as it is now: an open one past its expires_at expires when next looked at."""
    if session["status"] == "open" and session["expires_at"] <= ctx.now:
        ctx.data.plans.pop(session["id"], None)
        expire_session(ctx, session)
    return session


def session_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    session = get(ctx, "checkout_sessions", args[0], "checkout.session")
    return render(ctx, current(ctx, session), p.expand())


def session_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    cid = p.str("customer") or None
    status = p.str("status") or None
    for session in list(ctx.data.checkout_sessions.values()):
        current(ctx, session)
    rows: Iterator[dict[str, Any]] = reversed(ctx.data.checkout_sessions.values())
    if cid:
        rows = (s for s in rows if s["customer"] == cid)
    if status:
        rows = (s for s in rows if s["status"] == status)
    if p.str("payment_intent") or p.str("subscription") or p.str("payment_link"):
        rows = iter(())  # setup-mode sessions have none of these
    return list_page(ctx, p, rows, "/v1/checkout/sessions", "checkout.session")


def session_expire(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    session = current(ctx, get(ctx, "checkout_sessions", args[0], "checkout.session"))
    if session["status"] != "open":
        raise invalid(f"Only Checkout Sessions with a status of open can be expired; {session['id']} is "
                      f"{session['status']}.", code="checkout_session_unexpected_state")
    ctx.data.plans.pop(session["id"], None)
    expire_session(ctx, session)
    return render(ctx, session, p.expand())


def expire_session(ctx: Ctx, session: dict[str, Any]) -> dict[str, Any]:
    """An open session ends unused: it expires and its SetupIntent is canceled."""
    if session["status"] != "open":
        return session
    session.update(status="expired", url=None)
    si = ctx.data.setup_intents.get(session["setup_intent"] or "")
    if si is not None and si["status"] not in ("succeeded", "canceled"):
        si.update(status="canceled", cancellation_reason="abandoned", next_action=None)
        ctx.emit("setup_intent.canceled", si)
    ctx.emit("checkout.session.expired", session)
    return session


def complete_session(ctx: Ctx, session: dict[str, Any], pm: dict[str, Any], name: str | None) -> None:
    """The hosted page's SetupIntent succeeded: the card is the customer's, the session complete."""
    if session["customer"] is None and session["customer_creation"] == "always":
        customer = new_customer(ctx, session["customer_email"])
        session["customer"] = customer["id"]
        attach(ctx, pm, customer["id"])
    cus = ctx.data.customers.get(session["customer"] or "")
    email = session["customer_email"] or (cus["email"] if cus else None)
    session.update(status="complete", url=None, customer_details={
        "address": None, "business_name": None, "email": email, "individual_name": None,
        "name": name, "phone": None, "tax_exempt": "none", "tax_ids": [],
    })
    ctx.data.plans.pop(session["id"], None)
    ctx.emit("checkout.session.completed", session)


ROUTES: list[Route] = [
    ("POST", "/v1/checkout/sessions", session_create),
    ("GET", "/v1/checkout/sessions", session_list),
    ("GET", "/v1/checkout/sessions/{id}", session_retrieve),
    ("POST", "/v1/checkout/sessions/{id}/expire", session_expire),
]
