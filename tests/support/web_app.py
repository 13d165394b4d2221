"""The web app as the web suite (tests/web) drives it: its world of distinctive secrets, the Flask test
client's requests (API, forms with CSRF, sign-in as an admin or a client through the emailed link), and
the routes of the app to walk."""


from __future__ import annotations

import email
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.routing import Rule
from werkzeug.test import TestResponse

import web
from shared.bootstrap import Runtime, bootstrap
from shared.domain.models import Base, OutboxMessage
from shared.services.notifications import deliver_login_link
from shared.services.outbox import TASK_SEND_LOGIN_LINK
from web.services import RUNTIME_KEY

API_TOKEN = "os_sec-api-token-Zq81vN3x"
SECRET_KEY = "sec-flask-secret-Yh27Lw9c"
WEBHOOK_SECRET = "whsec_sec-hook-secret-Pe55Ua0t"
STRIPE_API_KEY = "sk_test_sec-stripe-key-Mb44Kr6d"
ADMIN_EMAIL = "ops@example.com"
ADMIN_PASSWORD = "sec-admin-password-Tf63Jo1s"
SECRETS = {
    "OFFSESSION_API_TOKEN": API_TOKEN,
    "SECRET_KEY": SECRET_KEY,
    "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "STRIPE_API_KEY": STRIPE_API_KEY,
    "admin password": ADMIN_PASSWORD,
}
CSRF_MESSAGE = "did not come from this site"


@dataclass
class Env:
    home: Path
    runtime: Runtime
    app: Flask
    emulator: str
    db_path: Path

    def rebuild(self) -> None:
        """The app again, as the processes would build it from the environment as it is now."""
        self.runtime.close()
        self.runtime = bootstrap()
        self.app = web.create_app(runtime=self.runtime)
        self.app.testing = True

    @property
    def outbox(self) -> Path:
        return self.home / "var" / "outbox"

    def session(self) -> Session:
        return self.runtime.sessions()

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table: a refused request must leave all of them as they were."""
        with self.session() as s:
            return {
                t.name: sorted((tuple(row) for row in s.execute(select(t))), key=repr)
                for t in Base.metadata.sorted_tables
            }

    def email_files(self) -> set[Path]:
        return set(self.outbox.glob("*.eml")) if self.outbox.exists() else set()

    def new_emails(self, before: set[Path]) -> list[email.message.Message]:
        return [email.message_from_bytes(p.read_bytes()) for p in sorted(self.email_files() - before)]


def bearer(token: str = API_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api(client: FlaskClient, method: str, path: str, body: Any = None, **kwargs: Any) -> TestResponse:
    headers = {**bearer(), **kwargs.pop("headers", {})}
    if body is not None:
        kwargs["json"] = body
    return client.open(path, method=method, headers=headers, **kwargs)


def csrf_of(client: FlaskClient) -> str:
    """The session's CSRF token (any page creates it)."""
    with client.session_transaction() as s:
        token = s.get("csrf_token")
    if not token:
        client.get("/client/login")
        with client.session_transaction() as s:
            token = s["csrf_token"]
    return str(token)


def sign_in_admin(
    client: FlaskClient, email_: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD, **kwargs: Any
) -> TestResponse:
    data = {"email": email_, "password": password, "csrf_token": csrf_of(client)}
    return client.post("/admin/login", data=data, **kwargs)


def send_queued_emails(app: Flask) -> int:
    """What the worker does with the sign-in emails the web queued (outbox): send each, once."""
    sent = 0
    runtime: Runtime = app.extensions[RUNTIME_KEY]
    with runtime.sessions() as s:
        payloads = [
            dict(m.payload)
            for m in s.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.task_name == TASK_SEND_LOGIN_LINK)
                .order_by(OutboxMessage.id)
            )
        ]
    for payload in payloads:
        sent += deliver_login_link(runtime.sessions, runtime.config, runtime.mailer, **payload)
    return sent


def request_link(client: FlaskClient, email_: str, **kwargs: Any) -> TestResponse:
    """Ask for a sign-in link, then let the worker's task send it."""
    answer = client.post("/client/login", data={"email": email_, "csrf_token": csrf_of(client)}, **kwargs)
    send_queued_emails(client.application)
    return answer


def text_of(message: email.message.Message) -> str:
    return str(
        next(
            part.get_payload(decode=True).decode()
            for part in message.walk()
            if part.get_content_type() == "text/plain"
        )
    )


def link_in(message: email.message.Message) -> str:
    body = text_of(message)
    match = re.search(r"https?://\S+/client/login/(\S+)", body)
    assert match, body
    return match.group(1)


def use_link(client: FlaskClient, token: str, **kwargs: Any) -> TestResponse:
    """The button of an emailed link's page: POST the token with this browser's CSRF token."""
    return client.post("/client/link", data={"token": token, "csrf_token": csrf_of(client)}, **kwargs)


def sign_in_client(client: FlaskClient, e: Env, address: str) -> None:
    """The real way in: ask for the link, read it from the .eml under var/outbox, open it, press Sign in."""
    before = e.email_files()
    assert request_link(client, address).status_code == 200
    (message,) = e.new_emails(before)
    assert message["To"] == address
    token = link_in(message)
    assert client.get(f"/client/login/{token}").status_code == 200
    answer = use_link(client, token)
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/client/invoices")


# ---- the world: an admin, clients A and B with cards, invoices and a charge each -----------------------


@dataclass
class Party:
    client_id: int
    email: str
    cards: list[int]
    invoice_id: int  # chargeable
    charged_invoice_id: int  # with a queued charge
    charge_id: str


def party(client: FlaskClient, tag: str, name: str) -> Party:
    address = f"{tag}@example.com"
    made = api(client, "POST", "/api/clients", {"name": name, "email": address})
    assert made.status_code == 201, made.json
    client_id = made.json["id"]
    cards = []
    for pm in ("pm_card_visa", "pm_card_mastercard"):
        card = api(client, "POST", f"/api/clients/{client_id}/cards", {"payment_method": pm})
        assert card.status_code == 201, card.json
        cards.append(card.json["id"])
    invoices = []
    for n in (1, 2):
        inv = api(
            client,
            "POST",
            "/api/invoices",
            {
                "client_id": client_id,
                "number": f"{tag.upper()}-{n}",
                "currency": "usd",
                "total": 5000,
                "due_date": date.today().isoformat(),
                "description": f"Work for {name}",
            },
        )
        assert inv.status_code == 201, inv.json
        invoices.append(inv.json["id"])
    charge = api(client, "POST", f"/api/invoices/{invoices[1]}/charges")
    assert charge.status_code == 202, charge.json
    return Party(client_id, address, cards, invoices[0], invoices[1], charge.json["id"])


@dataclass
class World:
    a: Party
    b: Party


def url_for_rule(rule: Rule, party: Party) -> str:
    """The rule's URL with real ids of `party`: a refusal must not be a 404 in disguise."""
    values: dict[str, Any] = {}
    for arg in rule.arguments:
        if arg == "invoice_id":
            values[arg] = party.invoice_id
        elif arg == "charge_id":
            values[arg] = party.charge_id
        elif arg == "card_id":
            values[arg] = party.cards[1]
        elif arg == "client_id":
            values[arg] = party.client_id
        elif arg == "run_id":
            values[arg] = 1
        elif arg == "refund_id":
            values[arg] = "00000000-0000-4000-8000-000000000000"
        elif arg == "token":
            values[arg] = "not-a-real-token"
        else:  # a new route: say so instead of testing it with a made-up value
            raise AssertionError(f"tests/web: give {rule.rule} a value for <{arg}>")
    _, path = rule.build(values, append_unknown=False)  # type: ignore[misc]
    return str(path)


def rules(app: Flask, prefix: str) -> list[Rule]:
    return sorted((r for r in app.url_map.iter_rules() if r.rule.startswith(prefix)), key=lambda r: r.rule)


def methods(rule: Rule) -> list[str]:
    return sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
