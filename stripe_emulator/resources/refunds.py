"""Refunds of a succeeded charge, whole or in parts up to the amount charged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..store import new_id
from ..wire import Params, invalid
from .base import Ctx, Route, get, list_page, render


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
    ctx.emit("refund.created", refund, None)
    ctx.emit("charge.refunded", ch, previous)
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
]
