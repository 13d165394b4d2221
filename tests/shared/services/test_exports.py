"""CSV exports: what they contain, and that 100,000 invoices stream with bounded memory (on PostgreSQL,
where the rows come through a server-side cursor)."""

from __future__ import annotations

import csv
import io
import tracemalloc
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import Client, Invoice, Payment
from shared.services import exports
from shared.services.exports import (
    CHARGE_HEADER,
    INVOICE_HEADER,
    PAYMENT_HEADER,
    ExportError,
    charge_rows,
    invoice_rows,
    parse_range,
    payment_rows,
    stream_csv,
)
from tests.support import factories

ROWS = 100_000
# The CSV of ROWS invoices is about 14 MB, and the rows as Python tuples would take over 100 MB; a stream
# holds one chunk of text and one fetch of rows (exports.ROWS_PER_FETCH) at a time: about 4 MB measured.
PEAK_BYTES_ALLOWED = 8 * 1024 * 1024


def parsed(chunks: list[str]) -> list[list[str]]:
    return list(csv.reader(io.StringIO("".join(chunks))))


def test_invoice_export_follows_the_filters_and_defuses_formulas(session: Session) -> None:
    owner = factories.client(name='=HYPERLINK("http://evil")')
    paid = factories.invoice(owner=owner, total=10_000, paid=(2_500,))
    other = factories.invoice(owner=factories.client(name="Plain Name"), total=500, currency="jpy")
    factories.persist(session, paid, other)

    rows = parsed(list(exports.csv_chunks(INVOICE_HEADER, invoice_rows(session, status="partially_paid"))))
    assert rows[0] == list(INVOICE_HEADER)
    [row] = [dict(zip(INVOICE_HEADER, r, strict=True)) for r in rows[1:]]
    assert row["number"] == paid.number
    assert row["client_name"] == '\'=HYPERLINK("http://evil")'  # text, not a formula
    assert (row["total"], row["amount_paid"], row["amount_due"]) == ("100.00", "25.00", "75.00")
    assert (row["amount_due_minor"], row["status"], row["auto_charge"]) == ("7500", "partially_paid", "no")

    searched = parsed(list(exports.csv_chunks(INVOICE_HEADER, invoice_rows(session, search="plain"))))
    assert [r[1] for r in searched[1:]] == [other.number]
    assert searched[1][6] == "500"  # yen have no minor unit


def test_charge_and_payment_exports_cover_the_range_both_days_included(session: Session) -> None:
    invoice = factories.invoice(total=9_000)
    inside = factories.attempt(invoice, "failed")
    inside.created_at = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    inside.decline_code = "insufficient_funds"
    outside = factories.attempt(invoice, "succeeded")
    outside.created_at = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    refund = Payment(
        invoice=invoice,
        amount=-1_000,
        method="cash",
        reference="-back",
        received_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    factories.persist(session, invoice, inside, outside, refund)

    charges = parsed(
        list(exports.csv_chunks(CHARGE_HEADER, charge_rows(session, date(2026, 11, 1), date(2026, 11, 30))))
    )
    assert [r[0] for r in charges[1:]] == [inside.id]
    assert dict(zip(CHARGE_HEADER, charges[1], strict=True))["decline_code"] == "insufficient_funds"
    payments = parsed(
        list(exports.csv_chunks(PAYMENT_HEADER, payment_rows(session, date(2026, 11, 1), date(2026, 11, 1))))
    )
    row = dict(zip(PAYMENT_HEADER, payments[1], strict=True))
    assert (row["amount"], row["amount_minor"], row["reference"]) == ("-10.00", "-1000", "'-back")


def test_date_ranges_are_checked() -> None:
    assert parse_range(None, None, today=date(2026, 12, 6)) == (date(2026, 11, 7), date(2026, 12, 6))
    for start, end in (("2026-12-07", "2026-12-06"), ("yesterday", None), ("2000-01-01", "2026-01-01")):
        with pytest.raises(ExportError):
            parse_range(start, end)


# PostgreSQL only: exports.py reads every database through the same yield_per query (no branch by dialect),
# so a SQLite run would check the same code again at twice the cost (tracemalloc slows it eightfold); on
# PostgreSQL that query also goes through psycopg's server-side cursor.
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
@pytest.mark.timeout(600)  # ~30 s alone; tracemalloc makes it the slowest in-process test under load
def test_a_hundred_thousand_invoices_stream_with_bounded_memory(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s:
        client_id = s.execute(
            insert(Client).values(name="Bulk Client", email="bulk@example.com").returning(Client.id)
        ).scalar_one()
        for first in range(0, ROWS, 10_000):
            s.execute(
                insert(Invoice),
                [
                    {
                        "number": f"BULK-{n:06d}",
                        "client_id": client_id,
                        "currency": "usd",
                        "total": 1_000 + n,
                        "due_date": date(2026, 11, 1),
                        "payment_method": "online_card",
                        "auto_charge": False,
                        "is_void": False,
                        "description": "",
                        "created_at": datetime(2026, 11, 1, tzinfo=UTC),
                    }
                    for n in range(first, first + 10_000)
                ],
            )
        s.commit()

    lines = 0
    size = 0
    tracemalloc.start()
    try:
        for chunk in stream_csv(session_factory, INVOICE_HEADER, lambda s: invoice_rows(s)):
            lines += chunk.count("\r\n")
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == ROWS + 1  # the header and every invoice once
    assert size > PEAK_BYTES_ALLOWED  # the CSV is larger than all that was ever held at once
    print(f"export of {ROWS} invoices: {size / 1e6:.1f} MB of CSV, peak traced memory {peak / 1e6:.2f} MB")
    assert peak < PEAK_BYTES_ALLOWED, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB CSV"
