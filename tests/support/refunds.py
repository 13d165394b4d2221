"""What the refund tests share: a paid invoice, a refund asked by an admin, the ledger, delivering Stripe's
events as the worker would."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.ledger import balance
from shared.domain.models import AuditEvent, Client, Invoice, Payment, Refund
from shared.services import clients, invoices
from shared.services.charge_requests import request_charge
from shared.services.charging import run_attempt
from shared.services.refunds import request_refund
from shared.services.settings import update_settings
from shared.services.webhooks import process_event, store_event
from tests.support.fake_stripe import FakeStripe
from tests.support.unit_of_work import InSession

TOTAL = 10_000


def paid_invoice(
    factory: sessionmaker[Session],
    stripe: FakeStripe,
    n: int = 1,
    *,
    auto_charge: bool = False,
    account: str | None = None,
) -> tuple[int, str]:
    """An invoice paid in full by card (on the platform, or on the connected `account`): (invoice id,
    charge attempt id)."""
    with factory() as session, session.begin():
        update_settings(session, "test", stripe_connected=True, stripe_account_id=account or "")
    client_id = clients.create_client(
        factory, stripe, name=f"Client {n}", email=f"c{n}@example.com", actor="t"
    )
    clients.add_card(factory, stripe, client_id, "pm_card_visa", actor="t")
    with factory() as session, session.begin():
        invoice = invoices.create_invoice(
            session,
            session.get_one(Client, client_id),
            number=f"INV-{n}",
            currency="usd",
            total=TOTAL,
            due_date=date(2026, 11, 1),
            auto_charge=auto_charge,
            actor="t",
        )
        attempt_id = request_charge(InSession(session), invoice, source="admin", requested_by="t").id
        invoice_id = invoice.id
    run_attempt(factory, stripe, attempt_id, lease_seconds=60, max_transient_retries=3)
    return invoice_id, attempt_id


def admin_refund(factory: sessionmaker[Session], attempt_id: str, **kw: Any) -> str:
    with factory() as session, session.begin():
        return request_refund(InSession(session), attempt_id, requested_by="admin@example.com", **kw).id


def amount_due(factory: sessionmaker[Session], invoice_id: int) -> int:
    with factory() as session:
        return balance(session.get_one(Invoice, invoice_id)).amount_due


def ledger(factory: sessionmaker[Session], invoice_id: int) -> list[int]:
    with factory() as session:
        return list(
            session.scalars(
                select(Payment.amount).where(Payment.invoice_id == invoice_id).order_by(Payment.id)
            )
        )


def refund_row(factory: sessionmaker[Session], refund_id: str) -> Refund:
    with factory() as session:
        refund = session.get_one(Refund, refund_id)
        session.expunge(refund)
        return refund


def deliver_events(factory: sessionmaker[Session], stripe: FakeStripe, *, twice: bool = False) -> list[str]:
    outcomes = []
    for event in stripe.server.take_events() * (2 if twice else 1):
        with factory() as session, session.begin():
            row = store_event(session, event)
        outcomes.append(process_event(factory, stripe, row.id))
    return outcomes


def payment_intent_of(factory: sessionmaker[Session], attempt_id: str) -> str:
    with factory() as session:
        return (
            session.scalars(
                select(Payment.stripe_payment_intent_id).where(Payment.charge_attempt_id == attempt_id)
            ).one()
            or ""
        )


def refund_audit(
    factory: sessionmaker[Session], refund_id: str, action: str
) -> list[tuple[str, int | None, str | None, dict[str, Any]]]:
    """(actor, invoice id, charge attempt id, detail) of the refund's audit entries of `action`: what the
    invoice's and the charge's history show."""
    with factory() as session:
        return [
            (e.actor, e.invoice_id, e.charge_attempt_id, e.detail)
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
            if e.detail.get("refund_id") == refund_id
        ]


def refund_creates(stripe: FakeStripe) -> int:
    return len([r for r in stripe.server.requests if r.method == "post" and r.path == "/v1/refunds"])


def deliver(factory: sessionmaker[Session], stripe: FakeStripe, event: dict[str, Any]) -> str:
    with factory() as session, session.begin():
        row = store_event(session, event)
    return process_event(factory, stripe, row.id)


def flagged_attempts(factory: sessionmaker[Session]) -> list[str | None]:
    with factory() as session:
        return list(
            session.scalars(
                select(AuditEvent.charge_attempt_id)
                .where(AuditEvent.action == "webhook.flagged")
                .order_by(AuditEvent.id)
            )
        )
