"""The security review's smaller findings, each with the test that would have caught it."""

from __future__ import annotations

import email
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text

from cli import main as offsession
from shared.domain.emails import Notification, compose_message, receipt_email
from shared.domain.models import Client, Invoice
from tests.support.emulator import emulator_state
from tests.support.web_app import (
    ADMIN_EMAIL,
    Env,
    World,
    api,
    csrf_of,
    sign_in_admin,
    sign_in_client,
)

# Latin-1, so that it travels in an HTTP header; not ASCII, which hmac.compare_digest wants of a str.
NOT_ASCII = "s\u00e9same-\u00fc\u00df"


# ---- tokens that are not ASCII -------------------------------------------------------------------------


def test_a_bearer_token_that_is_not_ascii_is_a_401(env: Env, world: World) -> None:
    http = env.app.test_client()
    for path in ("/api/settings", f"/api/invoices/{world.a.invoice_id}", "/metrics"):
        answer = http.get(path, headers={"Authorization": f"Bearer {NOT_ASCII}"})
        assert answer.status_code == 401, (path, answer.status_code)
        assert answer.is_json and answer.json["error"] == "unauthorized"


def test_a_csrf_token_that_is_not_ascii_is_a_400(env: Env, world: World) -> None:
    http = env.app.test_client()
    csrf_of(http)
    assert (
        http.post("/client/login", data={"email": world.a.email, "csrf_token": NOT_ASCII}).status_code == 400
    )
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    answer = admin.post(
        f"/admin/invoices/{world.a.invoice_id}/charge",
        headers={"Accept": "application/json", "X-CSRF-Token": NOT_ASCII},
    )
    assert answer.status_code == 400


# ---- an amount of thousands of digits ------------------------------------------------------------------


@pytest.mark.parametrize("digits", [41, 4_000, 5_000])
def test_a_form_amount_of_thousands_of_digits_is_a_400(env: Env, world: World, digits: int) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    before = env.snapshot()["payment"]
    answer = admin.post(
        f"/admin/invoices/{world.a.invoice_id}/payments",
        data={"csrf_token": csrf_of(admin), "amount": "9" * digits, "method": "cash"},
    )
    assert answer.status_code == 400
    page = answer.get_data(as_text=True)
    assert "Payment not recorded" in page and "too many digits" in page and "9" * 41 not in page
    assert env.snapshot()["payment"] == before
    charge = admin.post(
        f"/admin/invoices/{world.a.invoice_id}/charge",
        data={"amount": "9" * digits},
        headers={"Accept": "application/json", "X-CSRF-Token": csrf_of(admin)},
    )
    assert charge.status_code == 422 and "too many digits" in charge.json["message"]


# ---- line breaks in an invoice number ------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", ["INV-7\r\nBcc: all@example.com", "INV-7\nX", "INV\t7", "INV-7\u2028x", "IN\x00V"]
)
def test_an_invoice_number_with_a_line_break_is_refused_when_created(
    env: Env, world: World, number: str
) -> None:
    body = {
        "client_id": world.a.client_id,
        "number": number,
        "currency": "usd",
        "total": 1000,
        "due_date": date.today().isoformat(),
    }
    answer = api(env.app.test_client(), "POST", "/api/invoices", body)
    assert answer.status_code == 422 and answer.json["error"] == "invalid", answer.json
    with env.session() as s:
        assert s.scalar(select(func.count()).select_from(Invoice).where(Invoice.number.like("IN%7%"))) == 0


def test_an_email_about_an_older_invoice_with_a_line_break_still_goes_out() -> None:
    content = receipt_email(
        client_name="Ada",
        invoice_number="OLD-1\r\nBcc: all@example.com",
        amount=1000,
        currency="usd",
        card_brand="visa",
        card_last4="4242",
        paid_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    message = compose_message(
        Notification("receipt", "a1", "ada@example.com", content), sender="b@example.com"
    )
    assert message["Subject"] == "Receipt: $10.00 paid for invoice OLD-1 Bcc: all@example.com"
    assert email.message_from_bytes(message.as_bytes())["Bcc"] is None  # no header was injected


# ---- unique client emails ------------------------------------------------------------------------------


def test_a_second_client_with_the_same_email_is_refused(env: Env, world: World) -> None:
    customers = len(emulator_state(env.emulator)["customers"])
    http = env.app.test_client()
    for address in (world.a.email, f"  {world.a.email.upper()} "):
        answer = api(http, "POST", "/api/clients", {"name": "Alice Again", "email": address})
        assert answer.status_code == 409, answer.json
        assert answer.json["error"] == "client_exists" and str(world.a.client_id) in answer.json["message"]
    with env.session() as s:
        assert s.scalar(select(func.count()).select_from(Client).where(Client.email == world.a.email)) == 1
    assert len(emulator_state(env.emulator)["customers"]) == customers  # refused before Stripe


def test_the_upgrade_names_clients_sharing_an_email_and_the_command_that_parts_them(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator upgrading a database where two clients share an address (the sign-in link could
    only ever reach the first): the upgrade stops, changes nothing, and says which and how to fix it."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    runner = CliRunner()
    assert runner.invoke(offsession, ["db", "upgrade", "--revision", "0009"]).exit_code == 0
    engine = create_engine(url)
    with engine.begin() as connection:
        for client_id, address in ((1, "Ann@Example.com"), (2, "ann@example.com "), (3, "bob@example.com")):
            connection.execute(
                text(
                    "INSERT INTO client (id, name, email, created_at) VALUES (:id, 'n', :email, '2026-01-01')"
                ),
                {"id": client_id, "email": address},
            )

    refused = runner.invoke(offsession, ["db", "upgrade"])
    assert refused.exit_code == 2
    assert "ann@example.com (clients 1, 2)" in refused.output
    assert (
        "offsession set-client-email CLIENT_ID NEW_EMAIL" in refused.output
        and "Nothing was changed" in refused.output
    )
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0009"

    taken = runner.invoke(offsession, ["set-client-email", "2", "BOB@example.com"])
    assert taken.exit_code == 2 and "Client 3 already has" in taken.output
    parted = runner.invoke(offsession, ["set-client-email", "2", "ann.other@example.com"])
    assert parted.exit_code == 0, parted.output
    assert runner.invoke(offsession, ["db", "upgrade"]).exit_code == 0
    with engine.connect() as connection:
        emails = connection.execute(text("SELECT id, email FROM client ORDER BY id")).all()
    assert [tuple(row) for row in emails] == [
        (1, "ann@example.com"),
        (2, "ann.other@example.com"),
        (3, "bob@example.com"),
    ]
    engine.dispose()


# ---- the Client Zone's charge JSON ---------------------------------------------------------------------


def test_the_client_zone_does_not_show_which_admin_asked_for_a_charge(env: Env, world: World) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    queued = admin.post(
        f"/admin/invoices/{world.a.invoice_id}/charge",
        headers={"Accept": "application/json", "X-CSRF-Token": csrf_of(admin)},
    )
    assert queued.status_code == 202 and queued.json["requested_by"] == f"admin:{ADMIN_EMAIL}"
    client = env.app.test_client()
    sign_in_client(client, env, world.a.email)
    answer = client.get(f"/client/charges/{queued.json['id']}.json")
    assert answer.status_code == 200 and answer.json["charge"]["id"] == queued.json["id"]
    assert ADMIN_EMAIL not in answer.get_data(as_text=True) and "admin:" not in answer.get_data(as_text=True)


# ---- CSP form-action -----------------------------------------------------------------------------------


def test_forms_may_lead_only_here_and_to_the_stripe_pages_the_flows_need(env: Env, world: World) -> None:
    header = env.app.test_client().get("/client/login").headers["Content-Security-Policy"]
    (form_action,) = [part.split()[1:] for part in header.split(";") if part.split()[:1] == ["form-action"]]
    emulator = env.emulator.rstrip("/")
    assert form_action == [
        "'self'",
        "https://hooks.stripe.com",
        "https://checkout.stripe.com",
        "https://connect.stripe.com",
        emulator,  # STRIPE_API_BASE: the emulator serves the bank's page here
    ]


def test_against_stripe_itself_no_other_origin_may_take_a_form(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import web

    monkeypatch.setenv("STRIPE_API_BASE", "https://api.stripe.com")
    header = web.create_app().test_client().get("/client/login").headers["Content-Security-Policy"]
    assert (
        "form-action 'self' https://hooks.stripe.com https://checkout.stripe.com https://connect.stripe.com;"
        in header
    )
    assert not re.search(r"\shttps?:(\s|;|$)", header)  # no scheme-wide source


# ---- seed-demo and a live key --------------------------------------------------------------------------


def test_seed_demo_refuses_a_live_key(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_live_" + "x" * 24)
    monkeypatch.delenv("STRIPE_API_BASE")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_from-the-live-dashboard-Rt5")
    # Otherwise a configuration a live key may run with: the refusal is seed-demo's own.
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://pay.example.com")
    monkeypatch.setenv("SECRET_KEY", "s" * 48)
    monkeypatch.setenv("OFFSESSION_API_TOKEN", "t" * 48)
    before = env.snapshot()
    result = CliRunner().invoke(offsession, ["seed-demo"])
    assert result.exit_code == 2, result.output
    assert "live key" in result.output and "test mode only" in result.output
    assert env.snapshot() == before  # not a client, not an admin, not a setting
