"""Every charge is opened by the rules of charge_requests.new_attempt_values (eligibility, the amount from
the ledger, the key): request_charge for one (the admin page, the API and the Client Zone:
tests/web/test_charge_entry_points.py; the automatic retries), open_attempts for a page of the batch,
and no other product code creates a charge attempt."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import ChargeAttempt, DunningState, Invoice, Settings, utcnow
from shared.services import batch, charge_requests
from shared.services.settings import update_settings
from tests.support.factories import TODAY, make_client, make_invoice
from tests.support.unit_of_work import published, units

ROOT = Path(__file__).resolve().parents[3]
PRODUCT = ("shared", "web", "worker", "cli")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str, str]]:
    """(invoice id, source, requested by) of every charge opened through new_attempt_values, which still
    opens them."""
    calls: list[tuple[int, str, str]] = []
    new_attempt_values = charge_requests.new_attempt_values

    def spy(invoice: Invoice, settings: Settings, **kwargs: Any) -> Any:
        calls.append((invoice.id, kwargs["source"], kwargs["requested_by"]))
        return new_attempt_values(invoice, settings, **kwargs)

    monkeypatch.setattr(charge_requests, "new_attempt_values", spy)
    return calls


def test_the_batch_opens_its_charges_by_the_rules_of_every_charge(
    session_factory: sessionmaker[Session], opened: list[tuple[int, str, str]]
) -> None:
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        ids = [make_invoice(s, make_client(s, n), n) for n in (1, 2)]
        s.flush()
        invoice_ids = [i.id for i in ids]
    sent, publish = published()
    report = batch.run_batch(
        units(session_factory, publish), slot="schedule:t", trigger="schedule", today=TODAY
    )
    # Both charges in one message (shared.services.charge_batches).
    assert report.queued == 2 and [len(payload["attempt_ids"]) for _, payload in sent] == [2]
    assert opened == [(i, "schedule", f"batch:{report.batch_run_id}") for i in invoice_ids]


def test_the_retries_open_their_charges_by_the_rules_of_every_charge(
    session_factory: sessionmaker[Session], opened: list[tuple[int, str, str]]
) -> None:
    now = utcnow()
    with session_factory() as s, s.begin():
        update_settings(s, "test", stripe_connected=True)
        invoice = make_invoice(s, make_client(s, 1), 1)
        s.flush()
        s.add(
            DunningState(
                invoice_id=invoice.id,
                first_failure_at=now,
                failures=1,
                decline_class="soft",
                next_attempt_at=now,
            )
        )
        invoice_id = invoice.id
    sent, publish = published()
    assert batch.open_due_retries(session_factory, units(session_factory, publish), now=now) == 1
    assert opened == [(invoice_id, "schedule", "dunning")] and len(sent) == 1


def test_no_other_product_code_creates_a_charge_attempt() -> None:
    """A ChargeAttempt(...) anywhere else would be a charge opened around the rules and the outbox."""
    creators = sorted(
        str(path.relative_to(ROOT))
        for package in PRODUCT
        for path in (ROOT / package).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == ChargeAttempt.__name__
    )
    assert creators == ["shared/services/charge_requests.py"]
