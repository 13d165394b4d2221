"""Charges, Batch runs and Reconciliation a page at a time, with their rows counted in SQL."""

from __future__ import annotations

import re
from datetime import date, timedelta

from shared.domain.models import BatchRun, ReconciliationRun
from tests.support import factories
from tests.support.web_app import Env, World, sign_in_admin


def test_charges_batches_and_reconciliation_pages(env: Env, world: World) -> None:
    with env.session() as s:
        for n in range(60):
            invoice = factories.invoice(owner=factories.client(name=f"Paged {n}"))
            s.add_all([invoice, factories.attempt(invoice, "failed")])
        s.add_all(BatchRun(slot=f"slot-{n}", trigger="schedule", due_on=date(2026, 11, 1)) for n in range(25))
        s.add_all(
            ReconciliationRun(day=date(2026, 1, 1) + timedelta(days=n), trigger="schedule") for n in range(30)
        )
        s.commit()
    http = env.app.test_client()
    sign_in_admin(http)

    failed = http.get("/admin/charges?status=failed").get_data(as_text=True)
    assert "Page 1 of 2 · 60 charges" in failed
    assert len(re.findall(r'href="/admin/invoices/\d+"', failed)) == 50
    second = http.get("/admin/charges?status=failed&page=2").get_data(as_text=True)
    assert "Page 2 of 2 · 60 charges" in second
    assert 'rel="prev"' in second and "status=failed" in second

    assert "Page 1 of 2 · 25 batch runs" in http.get("/admin/batches").get_data(as_text=True)
    assert "Page 2 of 2 · 30 runs" in http.get("/admin/reconciliation?page=2").get_data(as_text=True)
    assert http.get("/admin/charges?page=x").status_code == 200  # a bad page number is page 1
