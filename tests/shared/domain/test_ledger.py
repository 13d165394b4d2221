from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from shared.domain.ledger import InvoiceStatus, LedgerError, balance
from shared.domain.models import Invoice, Payment
from shared.services import payments
from tests.support import factories


def record_payment(session: Session, invoice: Invoice, **kwargs: Any) -> Payment:
    return payments.record_payment(session, invoice, recorded_by="admin:test", **kwargs)


def test_partial_payments_by_several_methods_on_different_days(sqlite_session: Session) -> None:
    invoice = factories.invoice(total=10_000)
    factories.persist(sqlite_session, invoice)
    record_payment(
        sqlite_session,
        invoice,
        amount=2_500,
        method="cash",
        received_at=datetime(2026, 11, 1, tzinfo=UTC),
        reference="Receipt 1",
    )
    assert balance(invoice).status is InvoiceStatus.PARTIALLY_PAID
    record_payment(
        sqlite_session,
        invoice,
        amount=5_000,
        method="bank_transfer",
        received_at=datetime(2026, 11, 5, tzinfo=UTC),
    )
    record_payment(
        sqlite_session, invoice, amount=2_500, method="cheque", received_at=datetime(2026, 11, 9, tzinfo=UTC)
    )
    b = balance(invoice)
    assert (b.amount_paid, b.amount_due, b.status) == (10_000, 0, InvoiceStatus.PAID)
    assert [p.method for p in invoice.payments] == ["cash", "bank_transfer", "cheque"]


def test_overpayment_is_refused_with_the_amount_still_due(sqlite_session: Session) -> None:
    invoice = factories.invoice(total=10_000, paid=(4_000,))
    factories.persist(sqlite_session, invoice)
    with pytest.raises(LedgerError, match=r"\$60\.01 is more than the \$60\.00 still due"):
        record_payment(sqlite_session, invoice, amount=6_001, method="cash")
    assert balance(invoice).amount_paid == 4_000


def test_in_flight_card_charge_counts_as_taken(sqlite_session: Session) -> None:
    invoice = factories.invoice(total=10_000)
    attempt = factories.attempt(invoice, "processing", amount=10_000)
    factories.persist(sqlite_session, invoice, attempt)
    with pytest.raises(LedgerError, match="being charged to the card"):
        record_payment(sqlite_session, invoice, amount=10_000, method="cash")


def test_refund_is_a_negative_entry_and_reopens_the_invoice(sqlite_session: Session) -> None:
    invoice = factories.invoice(total=10_000, paid=(10_000,))
    factories.persist(sqlite_session, invoice)
    record_payment(sqlite_session, invoice, amount=-3_000, method="cash", reference="Refund")
    b = balance(invoice)
    assert (b.amount_paid, b.amount_due, b.status) == (7_000, 3_000, InvoiceStatus.PARTIALLY_PAID)
    with pytest.raises(LedgerError, match="more than the"):
        record_payment(sqlite_session, invoice, amount=-7_001, method="cash")


@pytest.mark.parametrize(
    ("amount", "method", "message"),
    [(0, "cash", "non-zero"), (100, "bitcoin", "Unknown payment method"), (True, "cash", "non-zero")],
)
def test_bad_payments_are_refused(sqlite_session: Session, amount: int, method: str, message: str) -> None:
    invoice = factories.invoice()
    factories.persist(sqlite_session, invoice)
    with pytest.raises(LedgerError, match=message):
        record_payment(sqlite_session, invoice, amount=amount, method=method)


def test_void_invoice_takes_no_payment_and_owes_nothing(sqlite_session: Session) -> None:
    invoice = factories.invoice(void=True)
    factories.persist(sqlite_session, invoice)
    with pytest.raises(LedgerError, match="void"):
        record_payment(sqlite_session, invoice, amount=100, method="cash")
    assert balance(invoice).status is InvoiceStatus.VOID
    assert balance(invoice).amount_due == 0


def test_status_is_derived() -> None:
    assert balance(factories.invoice(total=100)).status is InvoiceStatus.OPEN
    assert balance(factories.invoice(total=100, paid=(1,))).status is InvoiceStatus.PARTIALLY_PAID
    assert balance(factories.invoice(total=100, paid=(60, 40))).status is InvoiceStatus.PAID


@given(total=st.integers(1, 10**8), splits=st.lists(st.integers(1, 10**6), max_size=20))
def test_ledger_sums(total: int, splits: list[int]) -> None:
    """Whatever the split, paid is the sum of the entries and paid + due covers the total."""
    invoice = factories.invoice(total=total, paid=tuple(splits))
    b = balance(invoice)
    assert b.amount_paid == sum(splits)
    assert b.amount_due == max(total - sum(splits), 0)
    assert (b.status is InvoiceStatus.PAID) == (sum(splits) >= total)


def test_a_paid_invoice_refuses_even_one_more_minor_unit(sqlite_session: Session) -> None:
    invoice = factories.invoice(total=1_000, paid=(1_000,))
    factories.persist(sqlite_session, invoice)
    with pytest.raises(LedgerError, match="more than the"):
        record_payment(sqlite_session, invoice, amount=1, method="cash")


def test_a_refund_may_take_back_exactly_what_was_paid_and_no_more(sqlite_session: Session) -> None:
    invoice = factories.invoice(total=1_000, paid=(600,))
    factories.persist(sqlite_session, invoice)
    with pytest.raises(LedgerError, match="more than the"):
        record_payment(sqlite_session, invoice, amount=-601, method="cash")
    record_payment(sqlite_session, invoice, amount=-600, method="cash")
    assert balance(invoice).amount_paid == 0


def test_each_refusal_says_what_a_person_can_do_about_it(sqlite_session: Session) -> None:
    """The refusals are shown as they are (form errors, the API's message): the methods one may use,
    what is still due (never below nothing, and the card charge holding the rest only when there is
    one), what was paid when a refund asks for more."""
    invoice = factories.invoice(total=10_000, paid=(3_000,))
    factories.persist(sqlite_session, invoice)
    refusals = []
    for amount, method in ((100, "bitcoin"), (0, "cash"), (7_001, "cash"), (-3_001, "cash")):
        with pytest.raises(LedgerError) as refused:
            record_payment(sqlite_session, invoice, amount=amount, method=method)
        refusals.append(str(refused.value))
    assert refusals == [
        "Unknown payment method 'bitcoin'; use one of card, cash, bank_transfer, cheque, other.",
        "A payment needs a non-zero whole amount in minor units.",
        f"$70.01 is more than the $70.00 still due on invoice {invoice.number}.",
        f"A refund of $30.01 is more than the $30.00 paid on invoice {invoice.number}.",
    ]
    charging = factories.attempt(invoice, "processing", amount=7_000)
    factories.persist(sqlite_session, charging)
    with pytest.raises(LedgerError) as refused:
        record_payment(sqlite_session, invoice, amount=1, method="cash")
    assert str(refused.value) == (
        f"$0.01 is more than the $0.00 still due on invoice {invoice.number} "
        "($70.00 is being charged to the card right now)."
    )
