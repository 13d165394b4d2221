"""CSV exports of the invoice list (with its filters), of charges and of payments over a date range.

Streamed: rows are read with yield_per (a server-side cursor on PostgreSQL, psycopg's named cursor
through stream_results) as plain column tuples, never ORM objects, and written out in chunks of about
CHUNK_BYTES; nothing holds the whole table, so memory stays flat however many rows there are
(tests/shared/services/test_exports.py measures it at 100,000 rows).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from shared.domain.models import ChargeAttempt, Client, Invoice, Payment
from shared.domain.money import to_major_string
from shared.services.invoices import _status_expression, amount_paid_subquery, filter_invoices
from shared.services.listings import search_invoices
from shared.services.ports import SessionFactory

ROWS_PER_FETCH = 2000
CHUNK_BYTES = 64 * 1024
MAX_RANGE_DAYS = 366 * 5
# A cell starting with one of these is a formula to a spreadsheet (CSV injection): such text is
# prefixed with a quote, as OWASP advises, so a client's name can never run in the admin's spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class ExportError(ValueError):
    """A bad export request; the message is fit to show to a person."""


def _text(value: str | None) -> str:
    text = value or ""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def _major(amount: int, currency: str) -> Decimal:
    return Decimal(to_major_string(amount, currency))


def _time(value: datetime | None) -> str:
    if value is None:
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _streamed(session: Session, query: Select) -> Iterator[Any]:
    result = session.execute(query.execution_options(yield_per=ROWS_PER_FETCH, stream_results=True))
    yield from result


def csv_chunks(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The CSV text, header first, in chunks of about CHUNK_BYTES."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
        if buffer.tell() >= CHUNK_BYTES:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def parse_range(start: str | None, end: str | None, *, today: date | None = None) -> tuple[date, date]:
    """A date range from two ISO dates, both days included (default: the last 30 days)."""
    last = today or datetime.now(UTC).date()
    try:
        to_day = date.fromisoformat(end) if end else last
        from_day = date.fromisoformat(start) if start else to_day - timedelta(days=29)
    except ValueError as exc:
        raise ExportError("Dates must look like 2026-12-31.") from exc
    if from_day > to_day:
        raise ExportError("The range starts after it ends.")
    if (to_day - from_day).days > MAX_RANGE_DAYS:
        raise ExportError("Export at most five years at a time.")
    return from_day, to_day


def _bounds(from_day: date, to_day: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(from_day, time(0), tzinfo=UTC),
        datetime.combine(to_day + timedelta(days=1), time(0), tzinfo=UTC),
    )


INVOICE_HEADER = (
    "id", "number", "client_id", "client_name", "client_email", "currency", "total", "amount_paid",
    "amount_due", "total_minor", "amount_paid_minor", "amount_due_minor", "status", "due_date",
    "payment_method", "auto_charge", "created_at",
)  # fmt: skip


def invoice_rows(
    session: Session,
    *,
    status: str | None = None,
    due: str | None = None,
    auto_charge: bool | None = None,
    search: str | None = None,
    today: date | None = None,
) -> Iterator[tuple[Any, ...]]:
    """The invoice list's rows (the same filters as the admin list), by id."""
    paid = amount_paid_subquery()
    query = select(
        Invoice.id,
        Invoice.number,
        Invoice.client_id,
        Client.name,
        Client.email,
        Invoice.currency,
        Invoice.total,
        paid.label("paid"),
        _status_expression(paid).label("status"),
        Invoice.due_date,
        Invoice.payment_method,
        Invoice.auto_charge,
        Invoice.created_at,
    ).join(Client, Client.id == Invoice.client_id)
    query = filter_invoices(query, status=status, due=due, auto_charge=auto_charge, today=today)
    query = search_invoices(query, search).order_by(Invoice.id)
    for row in _streamed(session, query):
        paid_amount = int(row.paid or 0)
        due_amount = 0 if row.status == "void" else max(row.total - paid_amount, 0)
        yield (
            row.id,
            _text(row.number),
            row.client_id,
            _text(row.name),
            _text(row.email),
            row.currency,
            _major(row.total, row.currency),
            _major(paid_amount, row.currency),
            _major(due_amount, row.currency),
            row.total,
            paid_amount,
            due_amount,
            row.status,
            row.due_date.isoformat(),
            row.payment_method,
            "yes" if row.auto_charge else "no",
            _time(row.created_at),
        )


CHARGE_HEADER = (
    "id", "invoice_id", "invoice_number", "created_at", "updated_at", "status", "currency", "amount",
    "amount_minor", "source", "requested_by", "payment_intent_id", "failure_code", "decline_code",
    "failure_message",
)  # fmt: skip


def charge_rows(session: Session, from_day: date, to_day: date) -> Iterator[tuple[Any, ...]]:
    """Charges requested in the range (UTC days, both included), oldest first."""
    start, end = _bounds(from_day, to_day)
    query = (
        select(ChargeAttempt.__table__, Invoice.number)
        .join(Invoice, Invoice.id == ChargeAttempt.invoice_id)
        .where(ChargeAttempt.created_at >= start, ChargeAttempt.created_at < end)
        .order_by(ChargeAttempt.created_at, ChargeAttempt.id)
    )
    for row in _streamed(session, query):
        yield (
            row.id,
            row.invoice_id,
            _text(row.number),
            _time(row.created_at),
            _time(row.updated_at),
            row.status,
            row.currency,
            _major(row.amount, row.currency),
            row.amount,
            row.source,
            _text(row.requested_by),
            row.payment_intent_id or "",
            row.failure_code or "",
            row.decline_code or "",
            _text(row.failure_message),
        )


PAYMENT_HEADER = (
    "id", "invoice_id", "invoice_number", "received_at", "method", "currency", "amount", "amount_minor",
    "reference", "charge_id", "payment_intent_id", "refund_id", "recorded_by",
)  # fmt: skip


def payment_rows(session: Session, from_day: date, to_day: date) -> Iterator[tuple[Any, ...]]:
    """Ledger entries received in the range (UTC days, both included; refunds negative), oldest first."""
    start, end = _bounds(from_day, to_day)
    query = (
        select(Payment.__table__, Invoice.number, Invoice.currency)
        .join(Invoice, Invoice.id == Payment.invoice_id)
        .where(Payment.received_at >= start, Payment.received_at < end)
        .order_by(Payment.received_at, Payment.id)
    )
    for row in _streamed(session, query):
        yield (
            row.id,
            row.invoice_id,
            _text(row.number),
            _time(row.received_at),
            row.method,
            row.currency,
            _major(row.amount, row.currency),
            row.amount,
            _text(row.reference),
            row.charge_attempt_id or "",
            row.stripe_payment_intent_id or "",
            row.stripe_refund_id or "",
            _text(row.recorded_by),
        )


def stream_csv(
    sessions: SessionFactory,
    header: Sequence[str],
    rows: Callable[[Session], Iterable[Sequence[Any]]],
) -> Iterator[str]:
    """The CSV of `rows(session)` in chunks, in a read-only session of its own that lives as long as the
    response is being sent (the web request's session has ended by then)."""
    session = sessions()
    try:
        yield from csv_chunks(header, rows(session))
    finally:
        session.rollback()
        session.close()
