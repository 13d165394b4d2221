"""Changing an invoice after it was made: each change audited with who made it, and refused (nothing
written) where the invoice's state forbids it."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.domain.eligibility import BlockerCode, charge_blockers
from shared.domain.models import AuditEvent
from shared.services.invoice_changes import InvoiceChangeRefused, InvoiceChanges, RefusalCode, change_invoice
from shared.services.invoices import InvoiceError
from tests.support import factories


def audit_of(session: Session, invoice_id: int) -> list[tuple[str, str, dict]]:
    rows = session.scalars(
        select(AuditEvent).where(AuditEvent.invoice_id == invoice_id).order_by(AuditEvent.id)
    )
    return [(e.actor, e.action, e.detail) for e in rows]


def test_bank_transfer_to_online_card_clears_the_blocker_and_is_audited(session: Session) -> None:
    invoice = factories.invoice(payment_method="bank_transfer")
    factories.persist(session, invoice)
    codes = [b.code for b in charge_blockers(invoice, factories.settings())]
    assert codes == [BlockerCode.PAYMENT_METHOD_NOT_ONLINE_CARD]

    changed = change_invoice(
        session,
        invoice,
        InvoiceChanges(payment_method="online_card", auto_charge=True, due_date=date(2027, 1, 15)),
        actor="admin:ops@example.com",
    )

    assert changed == ["payment_method", "auto_charge", "due_date"]
    assert charge_blockers(invoice, factories.settings()) == []
    assert audit_of(session, invoice.id) == [
        (
            "admin:ops@example.com",
            "invoice.payment_method_changed",
            {"from": "bank_transfer", "to": "online_card"},
        ),
        ("admin:ops@example.com", "invoice.auto_charge_changed", {"from": False, "to": True}),
        ("admin:ops@example.com", "invoice.due_date_changed", {"from": "2026-11-01", "to": "2027-01-15"}),
    ]


def test_unchanged_values_write_nothing(session: Session) -> None:
    invoice = factories.invoice(auto_charge=True)
    factories.persist(session, invoice)
    assert (
        change_invoice(
            session, invoice, InvoiceChanges(payment_method="online_card", auto_charge=True), actor="a"
        )
        == []
    )
    assert audit_of(session, invoice.id) == []


@pytest.mark.parametrize("status", ["queued", "processing", "requires_action", "unknown"])
@pytest.mark.parametrize(
    "changes",
    [InvoiceChanges(payment_method="cash"), InvoiceChanges(total=5_000), InvoiceChanges(void=True)],
    ids=["payment_method", "total", "void"],
)
def test_a_charge_in_flight_refuses_what_would_change_it(
    session: Session, status: str, changes: InvoiceChanges
) -> None:
    invoice = factories.invoice()
    factories.persist(session, invoice, factories.attempt(invoice, status))
    with pytest.raises(InvoiceChangeRefused) as refused:
        change_invoice(session, invoice, changes, actor="a")
    assert refused.value.code is RefusalCode.CHARGE_IN_PROGRESS
    assert "in progress" in refused.value.message
    assert (invoice.payment_method, invoice.total, invoice.is_void) == ("online_card", 10_000, False)
    assert audit_of(session, invoice.id) == []


def test_a_charge_in_flight_still_lets_auto_charge_and_due_date_change(session: Session) -> None:
    invoice = factories.invoice()
    factories.persist(session, invoice, factories.attempt(invoice, "processing"))
    assert change_invoice(
        session, invoice, InvoiceChanges(auto_charge=True, due_date=date(2027, 2, 1)), actor="a"
    ) == [
        "auto_charge",
        "due_date",
    ]


def test_void_only_with_nothing_paid_and_a_void_invoice_stays_void(session: Session) -> None:
    paid = factories.invoice(paid=(2_500,))
    unpaid = factories.invoice()
    factories.persist(session, paid, unpaid)
    with pytest.raises(InvoiceChangeRefused) as refused:
        change_invoice(session, paid, InvoiceChanges(void=True), actor="a")
    assert refused.value.code is RefusalCode.INVOICE_HAS_PAYMENTS
    assert not paid.is_void

    assert change_invoice(session, unpaid, InvoiceChanges(void=True), actor="admin:x") == ["void"]
    assert unpaid.is_void
    assert audit_of(session, unpaid.id) == [("admin:x", "invoice.voided", {})]
    for changes in (InvoiceChanges(void=False), InvoiceChanges(payment_method="cash")):
        with pytest.raises(InvoiceChangeRefused) as refused:
            change_invoice(session, unpaid, changes, actor="a")
        assert refused.value.code is RefusalCode.INVOICE_VOID


def test_the_total_changes_only_while_nothing_is_paid(session: Session) -> None:
    paid = factories.invoice(paid=(100,))
    unpaid = factories.invoice()
    factories.persist(session, paid, unpaid)
    with pytest.raises(InvoiceChangeRefused) as refused:
        change_invoice(session, paid, InvoiceChanges(total=20_000), actor="a")
    assert refused.value.code is RefusalCode.INVOICE_HAS_PAYMENTS
    assert change_invoice(session, unpaid, InvoiceChanges(total=20_000), actor="a") == ["total"]
    assert unpaid.total == 20_000


@pytest.mark.parametrize(
    "changes",
    [InvoiceChanges(payment_method="bitcoin"), InvoiceChanges(total=0), InvoiceChanges(total=10**12)],
)
def test_bad_values_are_refused_before_anything_is_written(session: Session, changes: InvoiceChanges) -> None:
    invoice = factories.invoice()
    factories.persist(session, invoice)
    with pytest.raises(InvoiceError):
        change_invoice(session, invoice, changes, actor="a")
    assert audit_of(session, invoice.id) == []
