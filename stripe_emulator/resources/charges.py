"""Charges: the record of each payment attempt a PaymentIntent makes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..cards import Decline
from ..store import new_id
from ..wire import Params
from .base import Ctx, Route, get, list_page, render


def new_charge(ctx: Ctx, pi: dict[str, Any], pm: dict[str, Any],
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


def charge_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    return render(ctx, get(ctx, "charges", args[0], "charge"), p.expand())


def charge_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    cid = p.str("customer") or None
    pid = p.str("payment_intent") or None
    rows: Iterator[dict[str, Any]] = reversed(ctx.data.charges.values())
    if cid:
        rows = (c for c in rows if c["customer"] == cid)
    if pid:
        rows = (c for c in rows if c["payment_intent"] == pid)
    return list_page(ctx, p, rows, "/v1/charges", "charge")


ROUTES: list[Route] = [
    ("GET", "/v1/charges", charge_list),
    ("GET", "/v1/charges/{id}", charge_retrieve),
]
