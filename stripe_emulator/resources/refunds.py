"""Refunds of a succeeded charge, whole or in parts up to the amount charged, through Stripe's states
(docs.stripe.com/api/refunds/object, docs.stripe.com/refunds).

A card refund succeeds at once, as in Stripe's test mode, unless the charge's card says otherwise
(pm_card_pendingRefund: pending, then succeeded; pm_card_refundFail: succeeded, then failed) or the
``refund_failure_rate`` fault picks it (pending, then failed). The later step is a plan the scheduler
runs after ``settle_delay_ms``, or a test runs at once (POST /_emulator/refunds/{id}/settle). A pending
refund counts in the charge's amount_refunded; a failed one is given back. Only a refund in
``requires_action`` can be canceled, and card refunds never are (docs.stripe.com/api/refunds/cancel).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from ..store import new_id
from ..wire import Params, invalid
from .base import Ctx, Route, get, list_page, render
from .payment_methods import card_spec

# Why a card refund fails (Refund.failure_reason): a closed card is the common case.
CARD_REFUND_FAILURE = "expired_or_canceled_card"
_DISPUTE_SETTLED = ("won", "warning_closed")


def refund_create(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    pid = p.str("payment_intent") or None
    chid = p.str("charge") or None
    amount = p.int("amount")
    reason = p.str("reason", choices=("duplicate", "fraudulent", "requested_by_customer"))
    metadata = p.metadata() or {}
    if pid is None and chid is None:
        raise invalid("One of the following params should be provided for this request: "
                      "payment_intent or charge.", param="payment_intent", code="parameter_missing")
    if pid is not None:
        pi = get(ctx, "payment_intents", pid, "payment_intent", param="payment_intent")
        ch = ctx.data.charges.get(pi["latest_charge"] or "")
        if ch is None or ch["status"] != "succeeded":
            raise invalid(f"This PaymentIntent ({pid}) does not have a successful charge to refund.",
                          param="payment_intent")
        if chid is not None and chid != ch["id"]:
            raise invalid(f"Charge {chid} does not belong to PaymentIntent {pid}.", param="charge")
    else:
        assert chid is not None
        ch = get(ctx, "charges", chid, "charge", param="charge")
        if ch["status"] != "succeeded":
            raise invalid(f"Charge {chid} has not succeeded and cannot be refunded.", param="charge")
    open_dispute = next((d for d in ctx.data.disputes.values()
                         if d["charge"] == ch["id"] and d["status"] not in _DISPUTE_SETTLED), None)
    if open_dispute is not None:
        raise invalid(f"Charge {ch['id']} has been charged back; cannot issue a refund.",
                      code="charge_disputed")
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
    pm = ctx.data.payment_methods.get(ch["payment_method"] or "")
    behaviour = card_spec(ctx, pm).refund if pm is not None else None
    rate = ctx.services.faults.refund_failure_rate
    if rate and random.random() < rate:
        status, later = "pending", "failed"
    elif behaviour == "pending":
        status, later = "pending", "succeeded"
    elif behaviour == "fail":
        status, later = "succeeded", "failed"
    else:
        status, later = "succeeded", None
    refund = {
        "id": new_id("re_"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": new_id("txn_"),
        "charge": ch["id"],
        "created": ctx.now,
        "currency": ch["currency"],
        "customer": ch["customer"],
        "description": None,
        "destination_details": {"card": {"reference": None, "reference_status": "pending",
                                         "reference_type": "acquirer_reference_number",
                                         "type": "refund"}, "type": "card"},
        "failure_balance_transaction": None,
        "failure_reason": None,
        "instructions_email": None,
        "metadata": metadata,
        "next_action": None,
        "payment_intent": ch["payment_intent"],
        "payment_method": ch["payment_method"],
        "pending_reason": "processing" if status == "pending" else None,
        "presentment_details": None,
        "reason": reason or None,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }
    ctx.data.refunds[refund["id"]] = refund
    previous = {"amount_refunded": ch["amount_refunded"], "refunded": ch["refunded"]}
    ch["amount_refunded"] += amount
    ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
    ctx.emit("refund.created", refund, None)
    ctx.emit("charge.refunded", ch, previous)
    if later is not None:
        ctx.services.plan(ctx, refund["id"], {"status": later})
    return render(ctx, refund, p.expand())


def settle(ctx: Ctx, refund: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """The refund's later step: pending -> succeeded or failed, or succeeded -> failed (refundFail).
    ``plan["status"]`` says which; a test may pass ``failure_reason``."""
    status = plan.get("status")
    if status not in ("succeeded", "failed"):
        raise invalid("status must be 'succeeded' or 'failed'", param="status")
    allowed = ("pending",) if status == "succeeded" else ("pending", "succeeded")
    if refund["status"] not in allowed:
        raise invalid(f"Refund {refund['id']} has a status of {refund['status']}: it cannot become "
                      f"{status}.", param="status")
    previous: dict[str, Any] = {"status": refund["status"], "pending_reason": refund["pending_reason"]}
    refund.update(status=status, pending_reason=None)
    if status == "succeeded":
        refund["destination_details"]["card"].update(reference=new_id("", 23).upper(),
                                                     reference_status="available")
        ctx.emit("refund.updated", refund, previous)
        ctx.emit("charge.refund.updated", refund, previous)
        return refund
    previous.update(failure_reason=None, failure_balance_transaction=None)
    refund.update(failure_reason=plan.get("failure_reason") or CARD_REFUND_FAILURE,
                  failure_balance_transaction=new_id("txn_"))
    refund["destination_details"]["card"]["reference_status"] = "unavailable"
    ch = ctx.data.charges[refund["charge"]]
    ch["amount_refunded"] -= refund["amount"]
    ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
    ctx.emit("refund.updated", refund, previous)
    ctx.emit("refund.failed", refund, None)
    ctx.emit("charge.refund.updated", refund, previous)
    return refund


def refund_cancel(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    refund = get(ctx, "refunds", args[0], "refund")
    if refund["status"] != "requires_action":
        raise invalid(f"Refund {refund['id']} has a status of {refund['status']}. Only a refund with a "
                      "status of requires_action can be canceled.")
    ctx.data.plans.pop(refund["id"], None)
    previous = {"status": refund["status"]}
    refund.update(status="canceled", failure_reason="merchant_request",
                  failure_balance_transaction=new_id("txn_"), next_action=None)
    ch = ctx.data.charges[refund["charge"]]
    ch["amount_refunded"] -= refund["amount"]
    ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
    ctx.emit("refund.updated", refund, previous)
    return render(ctx, refund, p.expand())


def refund_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    return render(ctx, get(ctx, "refunds", args[0], "refund"), p.expand())


def refund_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    pid = p.str("payment_intent") or None
    chid = p.str("charge") or None
    rows: Iterator[dict[str, Any]] = reversed(ctx.data.refunds.values())
    if pid:
        rows = (r for r in rows if r["payment_intent"] == pid)
    if chid:
        rows = (r for r in rows if r["charge"] == chid)
    return list_page(ctx, p, rows, "/v1/refunds", "refund")


ROUTES: list[Route] = [
    ("POST", "/v1/refunds", refund_create),
    ("GET", "/v1/refunds", refund_list),
    ("GET", "/v1/refunds/{id}", refund_retrieve),
    ("POST", "/v1/refunds/{id}/cancel", refund_cancel),
]
