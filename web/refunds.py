"""Refunds and disputes on the web: the invoice page's Refund form and refund list, the Charges page's
open disputes, and the JSON API's POST /api/charges/<id>/refunds and GET /api/refunds/<id>.

Apart from web/admin.py and web/api.py so those stay small; the pages include this module's panels
(templates/admin/_refunds.html, _disputes.html) through the template globals registered here.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, abort, flash, g, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from shared.domain.models import ChargeAttempt, Dispute, Invoice, Refund
from shared.domain.money import MoneyError, format_money, parse_amount, to_major_string
from shared.domain.refunds import REFUND_REASONS, RefundRefused
from shared.services.refunds import (
    AUTO_CHARGE_OFF_AFTER_REFUND,
    RefundNotFound,
    charge_refunds,
    request_refund,
)
from web.api import field, json_body
from web.auth import require_api_token
from web.errors import ApiError
from web.pages import login_required_admin, protect_with_csrf
from web.serializers import dispute_json
from web.services import session_scope, unit_of_work

admin_bp = Blueprint("admin_refunds", __name__, url_prefix="/admin")
protect_with_csrf(admin_bp)
api_bp = Blueprint("api_refunds", __name__, url_prefix="/api")

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STATUS_WORDS = {
    "pending": "Pending",
    "requires_action": "Waiting for the client",
    "succeeded": "Refunded",
    "failed": "Failed",
    "canceled": "Canceled",
}
REASON_WORDS = {
    "requested_by_customer": "Requested by the client",
    "duplicate": "Duplicate payment",
    "fraudulent": "Fraudulent payment",
}


def refund_json(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "charge_id": refund.charge_attempt_id,
        "invoice_id": refund.invoice_id,
        "status": refund.status,
        "status_label": STATUS_WORDS.get(refund.status, refund.status),
        "amount": refund.amount,
        "currency": refund.currency,
        "amount_display": format_money(refund.amount, refund.currency),
        "reason": refund.reason,
        "source": refund.source,
        "requested_by": refund.requested_by,
        "stripe_refund_id": refund.stripe_refund_id,
        "failure_reason": refund.failure_reason,
        "created_at": refund.created_at.isoformat().replace("+00:00", "Z"),
        "updated_at": refund.updated_at.isoformat().replace("+00:00", "Z"),
    }


# ---- the panels the pages include ------------------------------------------------------------------


@admin_bp.app_template_global("refund_panel")
def refund_panel(invoice: Invoice) -> dict[str, Any]:
    """The invoice page's refunds and disputes, read in the page's own transaction (the invoice's
    session): what it shows agrees with the page's ledger figures."""
    db = object_session(invoice)
    if db is not None:
        return _refund_panel(db, invoice.id)
    with session_scope() as own:
        return _refund_panel(own, invoice.id)


def _refund_panel(db: Session, invoice_id: int) -> dict[str, Any]:
    """What the invoice page's refunds section shows: each card charge that can be refunded (what
    remains), the invoice's refunds, and its disputes."""
    charges = []
    for attempt in db.scalars(
        select(ChargeAttempt).where(ChargeAttempt.invoice_id == invoice_id).order_by(ChargeAttempt.created_at)
    ):
        figures = charge_refunds(db, attempt)
        if figures is not None:
            charges.append(
                {
                    "id": attempt.id,
                    "paid": figures.paid,
                    "remaining": figures.remaining,
                    "remaining_display": format_money(figures.remaining, attempt.currency),
                    "remaining_input": to_major_string(figures.remaining, attempt.currency),
                    "disputed": figures.open_dispute is not None,
                    "payment_intent_id": attempt.payment_intent_id,
                }
            )
    refunds = [
        {**refund_json(r), "requested_at": r.created_at}
        for r in db.scalars(
            select(Refund).where(Refund.invoice_id == invoice_id).order_by(Refund.created_at.desc())
        )
    ]
    disputes = [
        dispute_json(d)
        for d in db.scalars(
            select(Dispute).where(Dispute.invoice_id == invoice_id).order_by(Dispute.id.desc())
        )
    ]
    return {"charges": charges, "refunds": refunds, "disputes": disputes, "reasons": REASON_WORDS}


# ---- the admin's Refund form -----------------------------------------------------------------------


@admin_bp.post("/charges/<charge_id>/refunds")
@login_required_admin
def refund(charge_id: str) -> ResponseReturnValue:
    if not UUID.fullmatch(charge_id):
        abort(404)
    with session_scope() as db:
        attempt = db.get(ChargeAttempt, charge_id)
        if attempt is None:
            abort(404)
        invoice_id, currency = attempt.invoice_id, attempt.currency
    back = url_for("admin.invoice", invoice_id=invoice_id, _anchor="refunds")
    raw_amount = (request.form.get("amount") or "").strip()
    reason = request.form.get("reason") or None
    try:
        amount = parse_amount(raw_amount, currency) if raw_amount else None
        with unit_of_work() as uow:
            was_on = uow.session.get_one(Invoice, invoice_id).auto_charge
            made = request_refund(uow, charge_id, requested_by=g.actor, amount=amount, reason=reason)
            words = format_money(made.amount, made.currency)
            stopped = was_on and not made.invoice.auto_charge
    except MoneyError as exc:
        flash(f"Refund not made: {exc}", "error")
        return redirect(back), 303
    except RefundRefused as exc:
        flash(f"Refund not made: {exc.message}", "error")
        return redirect(back), 303
    flash(f"Refund of {words} requested: it shows as pending until Stripe confirms it.", "success")
    if stopped:
        flash(AUTO_CHARGE_OFF_AFTER_REFUND, "info")
    return redirect(back), 303


@admin_bp.get("/refunds/<refund_id>.json")
@login_required_admin
def refund_status(refund_id: str) -> ResponseReturnValue:
    with session_scope() as db:
        found = db.get(Refund, refund_id) if UUID.fullmatch(refund_id) else None
        if found is None:
            abort(404)
        return jsonify(refund_json(found))


# ---- the JSON API ----------------------------------------------------------------------------------


@api_bp.post("/charges/<charge_id>/refunds")
@require_api_token
def create_refund(charge_id: str) -> ResponseReturnValue:
    if not UUID.fullmatch(charge_id):
        raise ApiError(404, "not_found", "No such charge.")
    body = json_body(optional=True)
    amount = field(body, "amount", int, required=False)
    reason = field(body, "reason", str, required=False)
    if reason is not None and reason not in REFUND_REASONS:
        raise ApiError(422, "invalid", f"reason must be one of {', '.join(REFUND_REASONS)}.", field="reason")
    if amount is not None and amount <= 0:
        raise ApiError(422, "invalid", "amount must be positive.", field="amount")
    try:
        with unit_of_work() as uow:
            made = request_refund(
                uow, charge_id, requested_by=str(g.get("actor", "api")), amount=amount, reason=reason
            )
            answer = refund_json(made)
    except RefundNotFound as exc:
        raise ApiError(404, "not_found", "No such charge.") from exc
    except RefundRefused as exc:
        raise ApiError(422 if exc.code.startswith("invalid") else 409, exc.code, exc.message) from exc
    return jsonify(answer), 202


@api_bp.get("/refunds/<refund_id>")
@require_api_token
def get_refund(refund_id: str) -> ResponseReturnValue:
    with session_scope() as db:
        found = db.get(Refund, refund_id) if UUID.fullmatch(refund_id) else None
        if found is None:
            raise ApiError(404, "not_found", "No such refund.")
        return jsonify(refund_json(found))
