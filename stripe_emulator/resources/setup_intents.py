"""SetupIntents: saving a card for later, with the card's check and its 3-D Secure step at setup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import cards
from ..cards import Decline
from ..store import new_id
from ..wire import ApiError, Params, apply_metadata, doc_url, invalid
from .base import Ctx, Route, apply_text, customer_param, get, list_page, render, request_log_url
from .intents import card_error, next_action, payment_method_choice, require_return_url
from .payment_methods import attach, card_spec, materialize, payment_method_ref

SI_CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")


def si_create(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    cid = p.str("customer") or None
    customer_param(ctx, cid)
    pm_ref = payment_method_ref(ctx, p.str("payment_method"), cid)
    usage = p.str("usage", choices=("off_session", "on_session")) or "off_session"
    confirm = p.bool("confirm") or False
    metadata = p.metadata() or {}
    description = p.str("description", max_len=1000)
    choice = payment_method_choice(p)
    if confirm and pm_ref is None:
        raise invalid("You cannot confirm this SetupIntent because it's missing a payment method. "
                      "Pass `payment_method`.", param="payment_method", code="parameter_missing")
    return_url = p.str("return_url") or None
    if confirm:
        require_return_url(choice, return_url, "Setup Intent")
    pm = materialize(ctx, pm_ref) if pm_ref is not None else None
    si = new_setup_intent(ctx, cid, usage, metadata, description or None, p.str("on_behalf_of") or None,
                          choice, pm)
    if confirm and pm is not None:
        confirm_setup(ctx, si, pm, return_url, p.bool("use_stripe_sdk") or False)
    return render(ctx, si, p.expand())


def new_setup_intent(ctx: Ctx, cid: str | None, usage: str, metadata: dict[str, str],
                     description: str | None, on_behalf_of: str | None, choice: dict[str, Any],
                     pm: dict[str, Any] | None) -> dict[str, Any]:
    """A SetupIntent for ``cid`` (created by the API, or by a Checkout Session in setup mode)."""
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
        "description": description,
        "excluded_payment_method_types": choice["excluded_payment_method_types"],
        "flow_directions": None,
        "last_setup_error": None,
        "latest_attempt": None,
        "livemode": False,
        "mandate": None,
        "metadata": metadata,
        "next_action": None,
        "on_behalf_of": on_behalf_of,
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
    ctx.emit("setup_intent.created", si, None)
    return si


def checkout_session_of(ctx: Ctx, si: dict[str, Any]) -> str | None:
    """The Checkout Session that created ``si``, if one did."""
    return next((cs["id"] for cs in ctx.data.checkout_sessions.values() if cs["setup_intent"] == si["id"]),
                None)


def _refuse_if_checkout(ctx: Ctx, si: dict[str, Any], action: str) -> None:
    # "You can't confirm or cancel the SetupIntent for a Checkout Session. To cancel, expire the
    # Checkout Session instead." (the Checkout Session object's setup_intent, Stripe's API reference)
    session = checkout_session_of(ctx, si)
    if session is not None:
        raise invalid(f"You cannot {action} this SetupIntent because it belongs to the Checkout Session "
                      f"{session}. To cancel it, expire the Checkout Session instead.",
                      code="setup_intent_unexpected_state")


def _si(ctx: Ctx, sid: str) -> dict[str, Any]:
    return get(ctx, "setup_intents", sid, "setupintent")


def si_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    return render(ctx, _si(ctx, args[0]), p.expand())


def si_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    cid = p.str("customer") or None
    pm_id = p.str("payment_method") or None
    rows: Iterator[dict[str, Any]] = reversed(ctx.data.setup_intents.values())
    if cid:
        rows = (s for s in rows if s["customer"] == cid)
    if pm_id:
        rows = (s for s in rows if s["payment_method"] == pm_id)
    return list_page(ctx, p, rows, "/v1/setup_intents", "setupintent")


def si_update(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    si = _si(ctx, args[0])
    _refuse_if_checkout(ctx, si, "update")
    if si["status"] not in SI_CONFIRMABLE:
        raise _unexpected_si(ctx, si, "update")
    cid = si["customer"]
    if p.has("customer"):
        cid = p.str("customer") or None
        customer_param(ctx, cid)
    pm_ref = payment_method_ref(ctx, p.str("payment_method"), cid)
    metadata = p.metadata()
    choice = payment_method_choice(p, si)
    si.update(choice)
    si["customer"] = cid
    apply_text(si, p, "description", 1000)
    si["metadata"] = apply_metadata(si["metadata"], metadata)
    if pm_ref is not None:
        si["payment_method"] = materialize(ctx, pm_ref)["id"]
        si["status"] = "requires_confirmation"
        si["next_action"] = None
    return render(ctx, si, p.expand())


def si_confirm(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    si = _si(ctx, args[0])
    _refuse_if_checkout(ctx, si, "confirm")
    if si["status"] not in SI_CONFIRMABLE:
        raise _unexpected_si(ctx, si, "confirm")
    pm_param = p.str("payment_method") or si["payment_method"]
    if not pm_param:
        raise invalid("You cannot confirm this SetupIntent because it's missing a payment method. "
                      "Pass `payment_method`.", param="payment_method", code="parameter_missing")
    pm_ref = payment_method_ref(ctx, pm_param, si["customer"])
    assert pm_ref is not None
    return_url, sdk = p.str("return_url") or None, p.bool("use_stripe_sdk") or False
    choice = payment_method_choice(p, si)
    require_return_url(choice, return_url, "Setup Intent")
    pm = materialize(ctx, pm_ref)
    si.update(choice)
    confirm_setup(ctx, si, pm, return_url, sdk)
    return render(ctx, si, p.expand())


def si_cancel(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    si = _si(ctx, args[0])
    reason = p.str("cancellation_reason", choices=("abandoned", "requested_by_customer", "duplicate"))
    _refuse_if_checkout(ctx, si, "cancel")
    if si["status"] in ("succeeded", "canceled"):
        raise _unexpected_si(ctx, si, "cancel")
    si.update(status="canceled", cancellation_reason=reason or None, next_action=None)
    ctx.emit("setup_intent.canceled", si, None)
    return render(ctx, si, p.expand())


def _unexpected_si(ctx: Ctx, si: dict[str, Any], action: str) -> ApiError:
    err = invalid(f"You cannot {action} this SetupIntent because it has a status of {si['status']}.",
                  code="setup_intent_unexpected_state")
    err.error["setup_intent"] = si
    return err


def confirm_setup(ctx: Ctx, si: dict[str, Any], pm: dict[str, Any], return_url: str | None,
                use_stripe_sdk: bool) -> None:
    """Run the card check; raises a saved 402 when the card is declined."""
    spec = card_spec(ctx, pm)
    si.update(payment_method=pm["id"], latest_attempt=new_id("setatt_"), last_setup_error=None,
              next_action=None)
    if cards.setup_needs_auth(spec):
        si.update(status="requires_action",
                  next_action=next_action(ctx, si["id"], return_url, use_stripe_sdk))
        ctx.emit("setup_intent.requires_action", si, None)
        return
    decline = cards.setup_decline(spec)
    if decline is not None:
        raise _si_decline(ctx, si, pm, decline)
    _si_succeed(ctx, si, pm)


def _si_succeed(ctx: Ctx, si: dict[str, Any], pm: dict[str, Any]) -> None:
    si.update(status="succeeded", next_action=None, last_setup_error=None)
    if si["customer"] and not pm["customer"]:
        attach(ctx, pm, si["customer"])
    if si["usage"] == "off_session":
        ctx.data.pm_setup.add(pm["id"])
    ctx.emit("setup_intent.succeeded", si, None)


def _si_decline(ctx: Ctx, si: dict[str, Any], pm: dict[str, Any], decline: Decline) -> ApiError:
    error = card_error(decline, pm, charge=None)
    si.update(status="requires_payment_method", payment_method=None, last_setup_error=error,
              next_action=None)
    ctx.emit("setup_intent.setup_failed", si, None)
    body = {**error, "setup_intent": si, "request_log_url": request_log_url(ctx)}
    return ApiError(402, body, saved=True)


def authenticate_si(ctx: Ctx, si: dict[str, Any], succeed: bool) -> dict[str, Any]:
    if si["status"] != "requires_action":
        raise _unexpected_si(ctx, si, "authenticate")
    pm = ctx.data.payment_methods[si["payment_method"]]
    if not succeed:
        error = {"code": "setup_intent_authentication_failure",
                 "doc_url": doc_url("setup_intent_authentication_failure"),
                 "message": "The latest attempt to set up the payment method has failed because "
                            "authentication failed.",
                 "payment_method": dict(pm), "type": "invalid_request_error"}
        si.update(status="requires_payment_method", payment_method=None, last_setup_error=error,
                  next_action=None)
        ctx.emit("setup_intent.setup_failed", si, None)
        return si
    decline = cards.setup_decline(card_spec(ctx, pm))
    if decline is not None:
        _si_decline(ctx, si, pm, decline)
    else:
        _si_succeed(ctx, si, pm)
    return si


ROUTES: list[Route] = [
    ("POST", "/v1/setup_intents", si_create),
    ("GET", "/v1/setup_intents", si_list),
    ("GET", "/v1/setup_intents/{id}", si_retrieve),
    ("POST", "/v1/setup_intents/{id}", si_update),
    ("POST", "/v1/setup_intents/{id}/confirm", si_confirm),
    ("POST", "/v1/setup_intents/{id}/cancel", si_cancel),
]
