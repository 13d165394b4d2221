"""The admin's CSV downloads through the app: streamed, filtered like the list, ranges checked."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from tests.support.web_app import Env, World, api, sign_in_admin


def rows_of(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


def test_invoice_csv_follows_the_list_filters_and_streams(env: Env, world: World) -> None:
    http = env.app.test_client()
    sign_in_admin(http)
    listing = http.get("/admin/invoices?q=alice").get_data(as_text=True)
    assert 'href="/admin/exports/invoices.csv?q=alice"' in listing
    answer = http.get("/admin/exports/invoices.csv?q=alice")
    assert answer.status_code == 200
    assert answer.is_streamed
    assert answer.mimetype == "text/csv"
    assert answer.headers["Content-Disposition"].startswith('attachment; filename="invoices-')
    rows = rows_of(answer.get_data())
    assert sorted(r["number"] for r in rows) == ["ALICE-1", "ALICE-2"]
    assert {r["amount_due"] for r in rows} == {"50.00"}


def test_charges_and_payments_csv_for_a_date_range(env: Env, world: World) -> None:
    http = env.app.test_client()
    sign_in_admin(http)
    today = datetime.now(UTC).date().isoformat()
    charges = rows_of(http.get(f"/admin/exports/charges.csv?from={today}&to={today}").get_data())
    assert {r["id"] for r in charges} == {world.a.charge_id, world.b.charge_id}
    assert {r["status"] for r in charges} == {"queued"}
    recorded = api(
        http,
        "POST",
        f"/api/invoices/{world.a.invoice_id}/payments",
        {"amount": 1_250, "method": "cash", "reference": "=SUM(A1)"},
    )
    assert recorded.status_code == 201
    payments = rows_of(http.get(f"/admin/exports/payments.csv?from={today}&to={today}").get_data())
    assert [(r["invoice_number"], r["amount"], r["method"], r["reference"]) for r in payments] == [
        ("ALICE-1", "12.50", "cash", "'=SUM(A1)")
    ]
    refused = http.get("/admin/exports/charges.csv?from=2026-12-07&to=2026-12-06")
    assert refused.status_code == 303
    page = http.get(refused.headers["Location"]).get_data(as_text=True)
    assert "Nothing exported: The range starts after it ends." in page
