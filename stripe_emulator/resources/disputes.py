"""Disputes (docs.stripe.com/api/disputes/object), as Stripe's test cards produce them
(docs.stripe.com/testing#disputes).

A successful charge of pm_card_createDispute (4000000000000259, fraudulent) or
pm_card_createDisputeProductNotReceived (…2685) is disputed at once: charge.dispute.created, then
charge.dispute.funds_withdrawn with the amount taken back. pm_card_createDisputeInquiry (…1976) opens an
inquiry (warning_needs_response; no funds move). Evidence as Stripe's test mode reads it: submitting
``uncategorized_text`` = "winning_evidence" puts the dispute under review and it is then won
(charge.dispute.closed, charge.dispute.funds_reinstated); "losing_evidence" loses it; other evidence stays
under review until a test decides (POST /_emulator/disputes/{id}/settle). The decision is a plan the
scheduler runs after ``settle_delay_ms``. Closing a dispute accepts it as lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..store import new_id
from ..wire import Params, apply_metadata, invalid
from .base import Ctx, Route, get, list_page, render

_EVIDENCE_FIELDS = (
    "access_activity_log", "billing_address", "cancellation_policy", "cancellation_policy_disclosure",
    "cancellation_rebuttal", "customer_communication", "customer_email_address", "customer_name",
    "customer_purchase_ip", "customer_signature", "duplicate_charge_documentation",
    "duplicate_charge_explanation", "duplicate_charge_id", "product_description", "receipt", "refund_policy",
    "refund_policy_disclosure", "refund_refusal_explanation", "service_date", "service_documentation",
    "shipping_address", "shipping_carrier", "shipping_date", "shipping_documentation",
    "shipping_tracking_number", "uncategorized_file", "uncategorized_text",
)
# Visa's reason codes for the test cards' reasons.
_NETWORK_REASON = {"fraudulent": "10.4", "product_not_received": "13.1", "general": "13.7"}
# Stripe's fee for a dispute, in the smallest unit of USD.
DISPUTE_FEE = 1500
# How long the business has to answer, in Stripe's test mode as in most card networks' rules.
RESPONSE_WINDOW_S = 7 * 24 * 3600
OPEN = ("needs_response", "warning_needs_response")
UNDER_REVIEW = ("under_review", "warning_under_review")


def _balance_transaction(ctx: Ctx, dispute: dict[str, Any], sign: int, what: str) -> dict[str, Any]:
    fee = DISPUTE_FEE if sign < 0 else -DISPUTE_FEE
    amount = sign * dispute["amount"]
    return {
        "id": new_id("txn_"), "object": "balance_transaction", "amount": amount, "available_on": ctx.now,
        "created": ctx.now, "currency": dispute["currency"],
        "description": f"{what} for {dispute['charge']}", "exchange_rate": None,
        "fee": fee, "fee_details": [{"amount": fee, "application": None, "currency": dispute["currency"],
                                     "description": "Dispute fee", "type": "stripe_fee"}],
        "net": amount - fee, "reporting_category": "dispute" if sign < 0 else "dispute_reversal",
        "source": dispute["id"], "status": "available", "type": "adjustment",
    }


def open_dispute(ctx: Ctx, ch: dict[str, Any], reason: str, inquiry: bool) -> dict[str, Any]:
    """The cardholder disputes ``ch`` (called right after the charge succeeds)."""
    card = ch["payment_method_details"]["card"]
    dispute: dict[str, Any] = {
        "id": new_id("du_"),
        "object": "dispute",
        "amount": ch["amount"],
        "balance_transactions": [],
        "charge": ch["id"],
        "created": ctx.now,
        "currency": ch["currency"],
        "enhanced_eligibility_types": [],
        "evidence": {**dict.fromkeys(_EVIDENCE_FIELDS), "enhanced_evidence": {}},
        "evidence_details": {"due_by": ctx.now + RESPONSE_WINDOW_S, "enhanced_eligibility": {},
                             "has_evidence": False, "past_due": False, "submission_count": 0,
                             "submission_method": None},
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "network_reason_code": _NETWORK_REASON.get(reason),
        "payment_intent": ch["payment_intent"],
        "payment_method_details": {"card": {"brand": card["brand"],
                                            "case_type": "inquiry" if inquiry else "chargeback",
                                            "network_reason_code": _NETWORK_REASON.get(reason)},
                                   "type": "card"},
        "reason": reason,
        "status": "warning_needs_response" if inquiry else "needs_response",
    }
    ctx.data.disputes[dispute["id"]] = dispute
    ch["disputed"] = True
    ctx.emit("charge.dispute.created", dispute)
    if not inquiry:
        withdrawal = _balance_transaction(ctx, dispute, -1, "Chargeback withdrawal")
        dispute["balance_transactions"].append(withdrawal)
        ctx.emit("charge.dispute.funds_withdrawn", dispute)
    return dispute


def dispute_retrieve(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    return render(ctx, get(ctx, "disputes", args[0], "dispute"), p.expand())


def dispute_list(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    chid = p.str("charge") or None
    pid = p.str("payment_intent") or None
    rows: Iterator[dict[str, Any]] = reversed(ctx.data.disputes.values())
    if chid:
        rows = (d for d in rows if d["charge"] == chid)
    if pid:
        rows = (d for d in rows if d["payment_intent"] == pid)
    return list_page(ctx, p, rows, "/v1/disputes", "dispute")


def _unexpected(dispute: dict[str, Any], action: str) -> Exception:
    return invalid(f"You cannot {action} dispute {dispute['id']} because it has a status of "
                   f"{dispute['status']}.")


def dispute_update(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    dispute = get(ctx, "disputes", args[0], "dispute")
    evidence = p.dict("evidence")
    metadata = p.metadata()
    # submit (default true) sends the evidence given, or staged before, to the bank.
    submitting = (p.bool("submit") is not False) and (evidence is not None or p.has("submit"))
    if (evidence is not None or submitting) and dispute["status"] not in OPEN:
        raise _unexpected(dispute, "update the evidence of")
    previous: dict[str, Any] = {}
    if metadata is not None:
        merged = apply_metadata(dispute["metadata"], metadata)
        if merged != dispute["metadata"]:
            previous["metadata"] = dispute["metadata"]
            dispute["metadata"] = merged
    if evidence:
        previous["evidence"] = dict(dispute["evidence"])
        for key, value in evidence.items():
            if key in _EVIDENCE_FIELDS:
                dispute["evidence"][key] = value or None
        dispute["evidence_details"]["has_evidence"] = True
    if submitting:
        previous["status"] = dispute["status"]
        inquiry = dispute["status"] == "warning_needs_response"
        dispute["status"] = "warning_under_review" if inquiry else "under_review"
        dispute["evidence_details"]["submission_count"] += 1
        dispute["evidence_details"]["submission_method"] = "manual"
        text = dispute["evidence"]["uncategorized_text"] or ""
        outcome = "won" if "winning_evidence" in text else "lost" if "losing_evidence" in text else None
        if outcome is not None:
            ctx.services.plan(ctx, dispute["id"], {"status": outcome})
    if previous:
        ctx.emit("charge.dispute.updated", dispute, previous)
    return render(ctx, dispute, p.expand())


def dispute_close(ctx: Ctx, p: Params, args: tuple[str, ...]) -> dict[str, Any]:
    """Accepting the dispute: it is lost (an inquiry just closes)."""
    dispute = get(ctx, "disputes", args[0], "dispute")
    if dispute["status"] not in OPEN:
        raise _unexpected(dispute, "close")
    ctx.data.plans.pop(dispute["id"], None)
    _close(ctx, dispute, "lost")
    return render(ctx, dispute, p.expand())


def decide(ctx: Ctx, dispute: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """The bank's decision on a dispute under review (or, from a test, on an open one)."""
    status = plan.get("status")
    if status not in ("won", "lost"):
        raise invalid("status must be 'won' or 'lost'", param="status")
    if dispute["status"] not in OPEN + UNDER_REVIEW:
        raise _unexpected(dispute, "decide")
    _close(ctx, dispute, status)
    return dispute


def _close(ctx: Ctx, dispute: dict[str, Any], status: str) -> None:
    inquiry = dispute["payment_method_details"]["card"]["case_type"] == "inquiry"
    previous = {"status": dispute["status"]}
    dispute["status"] = "warning_closed" if inquiry else status
    dispute["is_charge_refundable"] = dispute["status"] in ("won", "warning_closed")
    ctx.emit("charge.dispute.closed", dispute, previous)
    if dispute["status"] == "won":
        dispute["balance_transactions"].append(
            _balance_transaction(ctx, dispute, 1, "Chargeback reversal"))
        ctx.emit("charge.dispute.funds_reinstated", dispute)


ROUTES: list[Route] = [
    ("GET", "/v1/disputes", dispute_list),
    ("GET", "/v1/disputes/{id}", dispute_retrieve),
    ("POST", "/v1/disputes/{id}", dispute_update),
    ("POST", "/v1/disputes/{id}/close", dispute_close),
]
