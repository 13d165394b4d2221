"""Client Zone isolation: client A signed in can neither see nor touch client B's invoices, charges or
cards. Every such URL answers 404 (B's things do not exist, as far as A can tell) and nothing changes,
neither in the database nor at Stripe."""

from __future__ import annotations

import re
from typing import Any

from tests.support.emulator import emulator_state
from tests.support.web_app import Env, World, csrf_of, sign_in_client


def _stripe_cards(base: str) -> dict[str, Any]:
    """Which customer each PaymentMethod is attached to, and each customer's default card."""
    state = emulator_state(base)
    return {
        "attached": {pm["id"]: pm.get("customer") for pm in state["payment_methods"]},
        "defaults": {
            c["id"]: (c.get("invoice_settings") or {}).get("default_payment_method")
            for c in state["customers"]
        },
    }


def test_client_a_can_neither_read_nor_act_on_client_bs_things(env: Env, world: World) -> None:
    a, b = world.a, world.b
    http = env.app.test_client()
    sign_in_client(http, env, a.email)
    token = csrf_of(http)
    before, stripe_before = env.snapshot(), _stripe_cards(env.emulator)

    reads = [
        f"/client/invoices/{b.invoice_id}",
        f"/client/invoices/{b.charged_invoice_id}",
        f"/client/charges/{b.charge_id}.json",
        f"/client/charges/{b.charge_id}/return",
    ]
    actions = [
        f"/client/invoices/{b.invoice_id}/pay",
        f"/client/invoices/{b.charged_invoice_id}/pay",
        f"/client/charges/{b.charge_id}/authenticate",
        f"/client/cards/{b.cards[1]}/default",
        f"/client/cards/{b.cards[0]}/delete",
        f"/client/cards/{b.cards[1]}/delete",
    ]
    for url in reads:
        for accept in ("text/html", "application/json"):
            answer = http.get(url, headers={"Accept": accept})
            assert answer.status_code == 404, (url, accept, answer.status_code)
            assert b"Bob" not in answer.data and b"BOB-" not in answer.data
    for url in actions:
        answer = http.post(url, data={"csrf_token": token})
        assert answer.status_code == 404, (url, answer.status_code)

    assert env.snapshot() == before
    assert _stripe_cards(env.emulator) == stripe_before

    # A's own lists show A's things only.
    listing = http.get("/client/invoices").get_data(as_text=True)
    assert "ALICE-1" in listing and "BOB-" not in listing
    cards_page = http.get("/client/cards").get_data(as_text=True)
    card_ids = {int(n) for n in re.findall(r"/client/cards/(\d+)/(?:default|delete)", cards_page)}
    assert card_ids == set(a.cards)

    # The control: the same URLs with A's own ids answer, so the 404s above were not a broken session.
    assert http.get(f"/client/invoices/{a.invoice_id}").status_code == 200
    assert http.get(f"/client/charges/{a.charge_id}.json").json["charge"]["id"] == a.charge_id
    assert http.post(f"/client/cards/{a.cards[1]}/default", data={"csrf_token": token}).status_code == 303
