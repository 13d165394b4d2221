"""PaymentIntents: the charge itself, off session or on, its declines, 3-D Secure, search and lists."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import cards
from ..cards import Decline
from ..store import new_id
from ..wire import ApiError, Params, apply_metadata, doc_url, invalid
from .base import (
    Ctx,
    Route,
    apply_text,
    check_amount,
    currency_param,
    customer_param,
    get,
    list_page,
    render,
    request_log_url,
)
from .charges import new_charge
from .disputes import open_dispute
from .intents import card_error, next_action, payment_method_choice, require_return_url
from .payment_methods import attach, card_spec, materialize, payment_method_ref
from .search import search

PI_CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
PI_CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation",
                 "requires_action", "processing")


@dataclass(frozen=True)
class _Confirm:
    off_session: bool = False
    error_on_action: bool = False
    return_url: str | None = None
    use_stripe_sdk: bool = False


def _pi(ctx: Ctx, pi_id: str) -> dict[str, Any]:
    return get(ctx, "payment_intents", pi_id, "payment_intent")


def _confirm_args(p: Params, choice: dict[str, Any]) -> _Confirm:
    """How to confirm, from the request; checks the return_url that redirecting methods need."""
    args = _Confirm(off_session=bool(_off_session(p)),
                    error_on_action=p.bool("error_on_requires_action") or False,
                    return_url=p.str("return_url") or None,
                    use_stripe_sdk=p.bool("use_stripe_sdk") or False)
    require_return_url(choice, args.return_url, "Payment Intent")
    return args


def _off_session(p: Params) -> bool | None:
    value = p.str("off_session")
    if value is None or value == "":
        return None
    if value in ("true", "one_off", "recurring"):
        return True
    if value == "false":
        return False
    raise invalid(f"Invalid off_session: {value}", param="off_session")


def pi_create(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    amount = p.int("amount", required=True)
    currency = currency_param(p)
    assert amount is not None and currency is not None
    check_amount(amount, currency)
    cid = p.str("customer") or None
    customer_param(ctx, cid)
    confirm = p.bool("confirm") or False
    if _off_session(p) is not None and not confirm:
        raise invalid("You can only pass in `off_session` when `confirm` is set to `true`.",
                      param="off_session")
    pm_ref = payment_method_ref(ctx, p.str("payment_method"), cid)
    metadata = p.metadata() or {}
    choice = payment_method_choice(p)
    if p.str("statement_descriptor"):
        raise invalid("The `statement_descriptor` parameter is not supported for the `card` payment "
                      "method type. Use `statement_descriptor_suffix` instead.",
                      param="statement_descriptor")
    suffix = p.str("statement_descriptor_suffix", max_len=22)
    sfu = p.str("setup_future_usage", choices=("off_session", "on_session"))
    capture = p.str("capture_method", choices=("automatic", "automatic_async"))
    confirmation = p.str("confirmation_method", choices=("automatic", "manual"))
    fee = p.int("application_fee_amount")
    transfer = _transfer_data(p)
    how = _Confirm()
    if confirm:
        if pm_ref is None:
            raise invalid("You cannot confirm this PaymentIntent because it's missing a payment method. "
                          "To confirm it, pass `payment_method`.", param="payment_method",
                          code="payment_intent_unexpected_state")
        how = _confirm_args(p, choice)
    pm = materialize(ctx, pm_ref) if pm_ref is not None else None
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
    ctx.emit("payment_intent.created", pi, None)
    if confirm and pm is not None:
        _pi_confirm(ctx, pi, pm, how)
    return render(ctx, pi, p.expand())


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


def pi_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    return render(ctx, _pi(ctx, args[0]), p.expand())


def pi_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    cid = p.str("customer") or None
    rows: Iterable[dict[str, Any]]
    if cid:
        ids = ctx.data.pis_by_customer.get(cid, [])
        rows = (ctx.data.payment_intents[i] for i in reversed(ids))
    else:
        rows = reversed(ctx.data.payment_intents.values())
    return list_page(ctx, p, rows, "/v1/payment_intents", "payment_intent")


def pi_search(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    fields = {"amount": "int", "created": "int", "currency": "str", "customer": "str",
              "status": "str", "payment_method": "str"}
    return search(ctx, p, ctx.data.payment_intents.values(), fields, "/v1/payment_intents/search")


def _unexpected_pi(ctx: Ctx, pi: dict[str, Any], action: str, allowed: tuple[str, ...]) -> ApiError:
    done = {"confirm": "confirmed", "cancel": "canceled", "update": "updated",
            "authenticate": "authenticated"}[action]
    err = invalid(f"You cannot {action} this PaymentIntent because it has a status of {pi['status']}. "
                  f"Only a PaymentIntent with one of the following statuses may be {done}: "
                  f"{', '.join(allowed)}.", code="payment_intent_unexpected_state")
    err.error["payment_intent"] = pi
    return err


def pi_update(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    pi = _pi(ctx, args[0])
    if pi["status"] not in PI_CONFIRMABLE:
        raise _unexpected_pi(ctx, pi, "update", PI_CONFIRMABLE)
    amount = p.int("amount") if p.has("amount") else pi["amount"]
    currency = currency_param(p, required=False) or pi["currency"]
    assert amount is not None
    check_amount(amount, currency)
    cid = pi["customer"]
    if p.has("customer"):
        cid = p.str("customer") or None
        customer_param(ctx, cid)
    pm_ref = payment_method_ref(ctx, p.str("payment_method"), cid)
    metadata = p.metadata()
    if p.str("statement_descriptor"):
        raise invalid("The `statement_descriptor` parameter is not supported for the `card` payment "
                      "method type. Use `statement_descriptor_suffix` instead.",
                      param="statement_descriptor")
    suffix_given = p.has("statement_descriptor_suffix")
    suffix = p.str("statement_descriptor_suffix", max_len=22)
    sfu_given = p.has("setup_future_usage")
    sfu = p.str("setup_future_usage", choices=("off_session", "on_session"))
    choice = payment_method_choice(p, pi)
    transfer = _transfer_data(p) if p.has("transfer_data") else pi["transfer_data"]
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
    apply_text(pi, p, "description", 1000)
    apply_text(pi, p, "receipt_email")
    apply_text(pi, p, "transfer_group")
    if suffix_given:
        pi["statement_descriptor_suffix"] = suffix or None
    if sfu_given:
        pi["setup_future_usage"] = sfu or None
    if p.has("payment_method"):
        if pm_ref is None:
            pi.update(payment_method=None, status="requires_payment_method", next_action=None)
        else:
            pm = materialize(ctx, pm_ref)
            pi.update(payment_method=pm["id"], status="requires_confirmation", next_action=None)
    return render(ctx, pi, p.expand())


def pi_confirm(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    pi = _pi(ctx, args[0])
    if pi["status"] not in PI_CONFIRMABLE:
        raise _unexpected_pi(ctx, pi, "confirm", PI_CONFIRMABLE)
    pm_param = p.str("payment_method") or pi["payment_method"]
    if not pm_param:
        raise invalid("You cannot confirm this PaymentIntent because it's missing a payment method. "
                      "To confirm it, pass `payment_method`.", param="payment_method",
                      code="payment_intent_unexpected_state")
    pm_ref = payment_method_ref(ctx, pm_param, pi["customer"])
    assert pm_ref is not None
    sfu_given = p.has("setup_future_usage")
    sfu = p.str("setup_future_usage", choices=("off_session", "on_session"))
    choice = payment_method_choice(p, pi)
    how = _confirm_args(p, choice)
    receipt = p.str("receipt_email")
    pm = materialize(ctx, pm_ref)
    if sfu_given:
        pi["setup_future_usage"] = sfu or None
    if receipt is not None:
        pi["receipt_email"] = receipt or None
    pi.update(choice)
    _pi_confirm(ctx, pi, pm, how)
    return render(ctx, pi, p.expand())


def pi_cancel(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    pi = _pi(ctx, args[0])
    reason = p.str("cancellation_reason",
                   choices=("duplicate", "fraudulent", "requested_by_customer", "abandoned"))
    if pi["status"] not in PI_CANCELABLE:
        raise _unexpected_pi(ctx, pi, "cancel", PI_CANCELABLE)
    pi.update(status="canceled", canceled_at=ctx.now, cancellation_reason=reason or None,
              next_action=None)
    ctx.emit("payment_intent.canceled", pi, None)
    return render(ctx, pi, p.expand())


def _pi_confirm(ctx: Ctx, pi: dict[str, Any], pm: dict[str, Any], how: _Confirm) -> None:
    """Attempt the payment; raises a saved 402 when it fails."""
    spec = card_spec(ctx, pm)
    pi.update(payment_method=pm["id"], last_payment_error=None, next_action=None)
    set_up = pm["id"] in ctx.data.pm_setup
    if cards.needs_auth(spec, off_session=how.off_session, set_up=set_up):
        if how.off_session or how.error_on_action:
            # Off session nobody can authenticate: Stripe declines with authentication_required.
            raise _pi_decline(ctx, pi, pm, cards.AUTH_REQUIRED)
        pi.update(status="requires_action",
                  next_action=next_action(ctx, pi["id"], how.return_url, how.use_stripe_sdk))
        ctx.emit("payment_intent.requires_action", pi, None)
        return
    if spec.decline is not None:
        raise _pi_decline(ctx, pi, pm, spec.decline)
    _pi_succeed(ctx, pi, pm)


def _pi_succeed(ctx: Ctx, pi: dict[str, Any], pm: dict[str, Any]) -> None:
    ch = new_charge(ctx, pi, pm, None)
    pi.update(status="succeeded", amount_received=pi["amount"], latest_charge=ch["id"], next_action=None,
              last_payment_error=None)
    if pi["setup_future_usage"]:
        if pi["customer"] and not pm["customer"]:
            attach(ctx, pm, pi["customer"])
        if pi["setup_future_usage"] == "off_session":
            ctx.data.pm_setup.add(pm["id"])
    ctx.emit("charge.succeeded", ch, None)
    ctx.emit("payment_intent.succeeded", pi, None)
    spec = card_spec(ctx, pm)
    if spec.dispute is not None:
        # The dispute test cards: the cardholder disputes the payment as soon as it succeeds.
        open_dispute(ctx, ch, spec.dispute, spec.inquiry)


def _pi_decline(ctx: Ctx, pi: dict[str, Any], pm: dict[str, Any], decline: Decline) -> ApiError:
    ch = new_charge(ctx, pi, pm, decline)
    error = card_error(decline, pm, ch["id"])
    # A failed PaymentIntent goes back to requires_payment_method and lets go of its card;
    # the card stays visible in last_payment_error.payment_method.
    pi.update(status="requires_payment_method", payment_method=None, latest_charge=ch["id"],
              last_payment_error=error, next_action=None)
    ctx.emit("charge.failed", ch, None)
    ctx.emit("payment_intent.payment_failed", pi, None)
    body = {**error, "payment_intent": pi, "request_log_url": request_log_url(ctx)}
    return ApiError(402, body, saved=True)


def authenticate_pi(ctx: Ctx, pi: dict[str, Any], succeed: bool) -> dict[str, Any]:
    if pi["status"] != "requires_action":
        raise _unexpected_pi(ctx, pi, "authenticate", ("requires_action",))
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
        ctx.emit("payment_intent.payment_failed", pi, None)
        return pi
    if pi["setup_future_usage"] == "off_session":
        ctx.data.pm_setup.add(pm["id"])
    spec = card_spec(ctx, pm)
    if spec.decline is not None:
        _pi_decline(ctx, pi, pm, spec.decline)
    else:
        _pi_succeed(ctx, pi, pm)
    return pi


ROUTES: list[Route] = [
    ("POST", "/v1/payment_intents", pi_create),
    ("GET", "/v1/payment_intents", pi_list),
    ("GET", "/v1/payment_intents/search", pi_search),
    ("GET", "/v1/payment_intents/{id}", pi_retrieve),
    ("POST", "/v1/payment_intents/{id}", pi_update),
    ("POST", "/v1/payment_intents/{id}/confirm", pi_confirm),
    ("POST", "/v1/payment_intents/{id}/cancel", pi_cancel),
]
