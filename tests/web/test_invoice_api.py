"""PATCH /api/invoices/<id> and the list endpoints GET /api/invoices, GET /api/clients, through the app."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from tests.support.web_app import Env, api
from tests.support.web_app import World as Parties

_numbers = itertools.count(1)
World = SimpleNamespace


@pytest.fixture
def api_world(env: Env, world: Parties) -> SimpleNamespace:
    return SimpleNamespace(client=env.app.test_client(), a=world.a)


def new_invoice(api_world: World, **fields: object) -> dict:
    body = {
        "client_id": api_world.a.client_id,
        "number": f"PATCH-{next(_numbers)}",
        "currency": "usd",
        "total": 12_000,
        "due_date": "2026-12-31",
        **fields,
    }
    answer = api(api_world.client, "POST", "/api/invoices", body)
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def test_patch_bank_transfer_to_online_card_makes_the_invoice_chargeable(api_world: World) -> None:
    invoice = new_invoice(api_world, payment_method="bank_transfer")
    assert [b["code"] for b in invoice["charge"]["blockers"]] == ["payment_method_not_online_card"]

    answer = api(
        api_world.client,
        "PATCH",
        f"/api/invoices/{invoice['id']}",
        {"payment_method": "online_card", "auto_charge": True, "due_date": "2027-01-31"},
    )

    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["payment_method"], body["auto_charge"], body["due_date"]) == (
        "online_card",
        True,
        "2027-01-31",
    )
    assert body["charge"] == {"eligible": True, "blockers": []}
    assert api(api_world.client, "POST", f"/api/invoices/{invoice['id']}/charges").status_code == 202


def test_patch_answers_409_with_the_reason_while_a_charge_is_in_flight(api_world: World) -> None:
    invoice = new_invoice(api_world)
    assert api(api_world.client, "POST", f"/api/invoices/{invoice['id']}/charges").status_code == 202
    answer = api(api_world.client, "PATCH", f"/api/invoices/{invoice['id']}", {"payment_method": "cash"})
    assert answer.status_code == 409
    assert answer.get_json()["error"] == "charge_in_progress"
    assert "in progress" in answer.get_json()["message"]
    after = api(api_world.client, "GET", f"/api/invoices/{invoice['id']}").get_json()
    assert after["payment_method"] == "online_card"


def test_patch_void_and_total_follow_the_ledger(api_world: World) -> None:
    invoice = new_invoice(api_world, payment_method="bank_transfer")
    path = f"/api/invoices/{invoice['id']}"
    assert api(api_world.client, "PATCH", path, {"total": 15_000}).get_json()["total"] == 15_000
    paid = api(api_world.client, "POST", f"{path}/payments", {"amount": 1_000, "method": "cash"})
    assert paid.status_code == 201
    for change in ({"total": 20_000}, {"void": True}):
        refused = api(api_world.client, "PATCH", path, change)
        assert (refused.status_code, refused.get_json()["error"]) == (409, "invoice_has_payments")
    unpaid = new_invoice(api_world, payment_method="cash")
    voided = api(api_world.client, "PATCH", f"/api/invoices/{unpaid['id']}", {"void": True}).get_json()
    assert (voided["void"], voided["status"]) == (True, "void")
    again = api(api_world.client, "PATCH", f"/api/invoices/{unpaid['id']}", {"void": False})
    assert (again.status_code, again.get_json()["error"]) == (409, "invoice_void")


def test_patch_refuses_bad_values_with_422(api_world: World) -> None:
    invoice = new_invoice(api_world)
    path = f"/api/invoices/{invoice['id']}"
    for body in (
        {"payment_method": "bitcoin"},
        {"due_date": "tomorrow"},
        {"auto_charge": "yes"},
        {"total": -1},
    ):
        answer = api(api_world.client, "PATCH", path, body)
        assert answer.status_code == 422, body
    assert api(api_world.client, "PATCH", "/api/invoices/999999", {"auto_charge": True}).status_code == 404


def test_list_endpoints_page_with_starting_after_and_filter(api_world: World) -> None:
    made = [new_invoice(api_world, auto_charge=n % 2 == 0)["id"] for n in range(5)]
    seen: list[int] = []
    before = api(
        api_world.client, "GET", f"/api/invoices?client_id={api_world.a.client_id}&limit=100"
    ).get_json()
    query = f"/api/invoices?client_id={api_world.a.client_id}&limit=2"
    url = query
    while True:
        body = api(api_world.client, "GET", url).get_json()
        seen += [row["id"] for row in body["data"]]
        assert all("payments" not in row for row in body["data"])
        new_invoice(api_world)  # inserted between pages: not in this walk
        if not body["has_more"]:
            break
        url = f"{query}&starting_after={body['data'][-1]['id']}"
    assert seen == [row["id"] for row in before["data"]]  # the rows there when the walk began, once each
    assert set(made) <= set(seen)
    auto_on = api(
        api_world.client, "GET", f"/api/invoices?client_id={api_world.a.client_id}&auto_charge=true"
    ).get_json()
    assert {row["id"] for row in auto_on["data"]} == {made[0], made[2], made[4]}

    clients = api(api_world.client, "GET", "/api/clients?q=alice").get_json()
    assert [c["id"] for c in clients["data"]] == [api_world.a.client_id]
    assert clients["has_more"] is False
    for bad in ("limit=0", "limit=101", "starting_after=x", "status=lost", "auto_charge=maybe"):
        assert api(api_world.client, "GET", f"/api/invoices?{bad}").status_code == 422, bad
