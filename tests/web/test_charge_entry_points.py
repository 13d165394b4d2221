"""The admin page, the API and the Client Zone open a charge through the one use case,
shared.services.charge_requests.request_charge (the batch and the retries:
tests/shared/services/test_charge_requests.py)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.domain.models import Invoice
from shared.services import charge_requests
from shared.services.ports import UnitOfWork
from tests.support.web_app import Env, World, api, csrf_of, sign_in_admin, sign_in_client


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(invoice id, source) of every charge request_charge opens, which it still opens."""
    calls: list[tuple[int, str]] = []
    request_charge = charge_requests.request_charge

    def spy(uow: UnitOfWork, invoice: Invoice, **kwargs: Any) -> Any:
        calls.append((invoice.id, kwargs["source"]))
        return request_charge(uow, invoice, **kwargs)

    monkeypatch.setattr(charge_requests, "request_charge", spy)
    return calls


def test_the_api_opens_a_charge_through_request_charge(
    env: Env, world: World, opened: list[tuple[int, str]]
) -> None:
    answer = api(env.app.test_client(), "POST", f"/api/invoices/{world.a.invoice_id}/charges")
    assert answer.status_code == 202, answer.json
    assert opened == [(world.a.invoice_id, "admin")]


def test_the_admin_page_opens_a_charge_through_request_charge(
    env: Env, world: World, opened: list[tuple[int, str]]
) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    answer = admin.post(
        f"/admin/invoices/{world.a.invoice_id}/charge",
        headers={"Accept": "application/json", "X-CSRF-Token": csrf_of(admin)},
    )
    assert answer.status_code == 202, answer.json
    assert opened == [(world.a.invoice_id, "admin")]


def test_the_client_zone_opens_a_charge_through_request_charge(
    env: Env, world: World, opened: list[tuple[int, str]]
) -> None:
    client = env.app.test_client()
    sign_in_client(client, env, world.a.email)
    answer = client.post(f"/client/invoices/{world.a.invoice_id}/pay", data={"csrf_token": csrf_of(client)})
    assert answer.status_code == 303
    assert opened == [(world.a.invoice_id, "client")]
