"""The Client Zone's Add a card (web/client_zone.py) over the in-process emulator: a CSRF-protected POST
that sends the browser to Stripe's hosted Checkout page, the return route that stores the card, the
cancel route, and another client's session answering 404 with nothing stored."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import requests

from shared.config import load_config
from shared.services.notifications import deliver_charge_notification
from tests.support.web_app import Env, World, api, csrf_of, sign_in_client, text_of, use_link


def open_checkout(http: object, env: Env) -> str:
    answer = http.post("/client/cards", data={"csrf_token": csrf_of(http)})  # type: ignore[attr-defined]
    assert answer.status_code == 303, answer.status_code
    location = str(answer.headers["Location"])
    assert location.startswith(f"{env.emulator.rstrip('/')}/c/pay/cs_test_"), location
    return location


def save_on_hosted_page(checkout_page: str, number: str = "4242424242424242") -> str:
    """A person types the card on the emulator's page; returns where the page sends the browser."""
    answer = requests.post(
        checkout_page,
        data={"cardnumber": number, "exp-date": "12 / 34", "cvc": "123", "billing-name": "A"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303, answer.text
    return str(answer.headers["Location"])


def cards(http: object, client_id: int) -> list[tuple[str, bool]]:
    body = api(http, "GET", f"/api/clients/{client_id}").json  # type: ignore[arg-type]
    return [(card["last4"], card["is_default"]) for card in body["cards"]]


def local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def test_add_a_card_goes_to_checkout_and_the_return_stores_it(env: Env, world: World) -> None:
    http = env.app.test_client()
    sign_in_client(http, env, world.a.email)
    page = http.get("/client/cards").get_data(as_text=True)
    assert "for your invoices when they are due" in page and 'type="radio"' not in page
    # Without this browser's CSRF token the POST is refused and no session is made.
    assert http.post("/client/cards", data={}).status_code == 400
    success = save_on_hosted_page(open_checkout(http, env), "4000056655665556")
    assert urlsplit(success).path == "/client/cards/added"
    before = cards(http, world.a.client_id)

    back = http.get(local(success))
    assert back.status_code == 303 and back.headers["Location"].endswith("/client/cards")
    assert "Visa ending 5556 saved." in http.get("/client/cards").get_data(as_text=True)
    after = cards(http, world.a.client_id)
    assert after == [*before, ("5556", False)]
    # Coming back twice stores nothing more.
    assert http.get(local(success)).status_code == 303
    assert cards(http, world.a.client_id) == after
    # The Mastercard the API saved (with Stripe's fingerprint), saved again on Stripe's page, is kept once.
    again = save_on_hosted_page(open_checkout(http, env), "5555555555554444")
    assert http.get(local(again)).status_code == 303
    page = http.get("/client/cards").get_data(as_text=True)
    assert "Mastercard ending 4444 was saved already: it is kept once." in page
    assert cards(http, world.a.client_id) == after


def test_another_clients_return_address_stores_nothing(env: Env, world: World) -> None:
    alice, bob = env.app.test_client(), env.app.test_client()
    sign_in_client(alice, env, world.a.email)
    sign_in_client(bob, env, world.b.email)
    success = save_on_hosted_page(open_checkout(alice, env))
    before = env.snapshot()
    assert bob.get(local(success)).status_code == 404
    assert bob.get("/client/cards/added?session_id=not-a-session").status_code == 404
    assert env.snapshot() == before


def test_leaving_stripes_page_stores_nothing(env: Env, world: World) -> None:
    http = env.app.test_client()
    sign_in_client(http, env, world.a.email)
    open_checkout(http, env)
    before = env.snapshot()
    answer = http.get("/client/cards/not-added")
    assert answer.status_code == 303
    assert "No card was added." in http.get("/client/cards").get_data(as_text=True)
    assert env.snapshot() == before


def test_the_update_your_card_email_leads_to_checkout(env: Env, world: World) -> None:
    """The link of the email asking for a new card opens a session scoped to the card page, whose Add a
    card goes through Stripe Checkout and back."""
    before = env.email_files()
    assert deliver_charge_notification(
        env.runtime.sessions, load_config(), env.runtime.mailer, world.a.charge_id, "card_update_needed"
    )
    (message,) = env.new_emails(before)
    match = re.search(r"https?://[^/\s]+(/client/cards)\?token=(\S+)", text_of(message))
    assert match, text_of(message)
    http = env.app.test_client()
    assert http.get(f"/client/cards?token={match.group(2)}").status_code == 200
    answer = use_link(http, match.group(2))
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/client/cards")
    assert http.get("/client/invoices").status_code != 200  # scoped to the cards
    success = save_on_hosted_page(open_checkout(http, env), "4000056655665556")
    assert http.get(local(success)).status_code == 303
    assert ("5556", False) in cards(http, world.a.client_id)[2:]
