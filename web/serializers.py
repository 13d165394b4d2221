"""JSON shapes of the API (web/openapi.py describes them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.domain.eligibility import charge_blockers, connection_blocker
from shared.domain.ledger import balance
from shared.domain.models import Card, ChargeAttempt, Client, Dispute, Invoice, Payment, Settings
from shared.domain.money import format_money
from shared.domain.refunds import OPEN_DISPUTE_STATUSES
from shared.domain.states import AttemptStatus
from shared.services.clients import SavedCard
from shared.services.disputes import reason_words
from shared.services.settings import is_verified


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def settings_json(settings: Settings, *, stripe_mode: str) -> dict[str, Any]:
    verified = settings.stripe_verified_account_id is not None and settings.stripe_livemode is not None
    problem = connection_blocker(settings)
    return {
        "stripe_connected": settings.stripe_connected,
        "stripe_account_id": settings.stripe_account_id,
        "online_card_payments_enabled": settings.online_card_payments_enabled,
        "stripe_mode": stripe_mode,
        # What GET /v1/account answered at the last Connect (null before any).
        "stripe_account": {
            "id": settings.stripe_verified_account_id,
            "name": settings.stripe_account_name,
            "mode": "live" if settings.stripe_livemode else "test",
            "charges_enabled": bool(settings.stripe_charges_enabled),
            "connection_method": settings.stripe_connection_method,
            "verified_at": _time(settings.stripe_verified_at),
        }
        if verified
        else None,
        "stripe_verified": is_verified(settings),
        "webhook_endpoint_id": settings.webhook_endpoint_id,
        # Why card charges are blocked at the connection's level (null when they are not).
        "stripe_problem": problem.as_dict() if problem is not None else None,
        "updated_at": _time(settings.updated_at),
    }


def card_json(card: Card | SavedCard) -> dict[str, Any]:
    if isinstance(card, Card):
        card = SavedCard.of(card)
    return {
        "id": card.id,
        "client_id": card.client_id,
        "payment_method": card.payment_method_id,
        "brand": card.brand,
        "last4": card.last4,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
        "is_default": card.is_default,
        "stripe_account_id": card.stripe_account_id,
        "mode": None if card.livemode is None else ("live" if card.livemode else "test"),
    }


def client_json(client: Client) -> dict[str, Any]:
    return {
        "id": client.id,
        "name": client.name,
        "email": client.email,
        "stripe_customer_id": client.stripe_customer_id,
        "cards": [card_json(c) for c in client.cards],
    }


def payment_json(payment: Payment, currency: str) -> dict[str, Any]:
    return {
        "id": payment.id,
        "amount": payment.amount,
        "currency": currency,
        "amount_display": format_money(payment.amount, currency),
        "method": payment.method,
        "received_at": _time(payment.received_at),
        "reference": payment.reference,
        "charge_id": payment.charge_attempt_id,
        "payment_intent_id": payment.stripe_payment_intent_id,
        "refund_id": payment.stripe_refund_id,
    }


def charge_json(attempt: ChargeAttempt) -> dict[str, Any]:
    status = AttemptStatus(attempt.status)
    return {
        "id": attempt.id,
        "invoice_id": attempt.invoice_id,
        "status": status.value,
        "status_label": status.label,
        "amount": attempt.amount,
        "currency": attempt.currency,
        "amount_display": format_money(attempt.amount, attempt.currency),
        "payment_intent_id": attempt.payment_intent_id,
        "failure_code": attempt.failure_code,
        "decline_code": attempt.decline_code,
        "failure_message": attempt.failure_message,
        "source": attempt.source,
        "requested_by": attempt.requested_by,
        "next_retry_at": _time(attempt.next_retry_at),
        "created_at": _time(attempt.created_at),
        "updated_at": _time(attempt.updated_at),
    }


def client_charge_json(attempt: ChargeAttempt) -> dict[str, Any]:
    """A charge as the Client Zone shows it: not who at the business asked for it (an admin's email)."""
    body = charge_json(attempt)
    del body["requested_by"]
    return body


def invoice_json(invoice: Invoice, settings: Settings, *, detail: bool = True) -> dict[str, Any]:
    b = balance(invoice)
    blockers = charge_blockers(invoice, settings)
    body: dict[str, Any] = {
        "id": invoice.id,
        "number": invoice.number,
        "client_id": invoice.client_id,
        "client_name": invoice.client.name,
        "currency": invoice.currency,
        "total": invoice.total,
        "amount_paid": b.amount_paid,
        "amount_due": b.amount_due,
        "status": b.status.value,
        "display": {
            "total": format_money(invoice.total, invoice.currency),
            "amount_paid": format_money(b.amount_paid, invoice.currency),
            "amount_due": format_money(b.amount_due, invoice.currency),
            "status": b.status.label,
        },
        "due_date": invoice.due_date.isoformat(),
        "payment_method": invoice.payment_method,
        "auto_charge": invoice.auto_charge,
        "void": invoice.is_void,
        "description": invoice.description,
        "charge": {"eligible": not blockers, "blockers": [bl.as_dict() for bl in blockers]},
    }
    if detail:
        body["payments"] = [payment_json(p, invoice.currency) for p in invoice.payments]
        body["charges"] = [charge_json(a) for a in invoice.charge_attempts]
    return body


def dispute_json(dispute: Dispute) -> dict[str, Any]:
    return {
        "id": dispute.stripe_dispute_id,
        "invoice_id": dispute.invoice_id,
        "invoice_number": dispute.invoice.number,
        "charge_id": dispute.charge_attempt_id,
        "amount_display": format_money(dispute.amount, dispute.currency),
        "reason": reason_words(dispute.reason),
        "status": dispute.status,
        "status_label": dispute.status.replace("_", " ").capitalize(),
        "open": dispute.status in OPEN_DISPUTE_STATUSES,
        "evidence_due_by": dispute.evidence_due_by,
        "withdrawn": dispute.withdrawal_payment_id is not None,
        "reinstated": dispute.reinstatement_payment_id is not None,
    }
