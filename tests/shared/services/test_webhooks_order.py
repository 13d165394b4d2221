"""Webhooks delivered three times each, in shuffled order, reach the same final states as one ordered
delivery — starting from attempts whose worker died before recording anything, so the events alone
must carry the truth. The emulator is real (over HTTP); the processing runs in this process."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.database import make_engine
from shared.adapters.migrate import upgrade
from shared.adapters.stripe_gateway import StripeGateway
from shared.domain.models import ChargeAttempt, Client, Invoice, Payment, utcnow
from shared.services import clients, invoices
from shared.services.charge_requests import request_charge
from shared.services.charging import charge_request_for, claim_attempt
from shared.services.settings import update_settings
from shared.services.webhooks import process_event, store_event
from tests.support.emulator import admin, emulator_state, running_emulator
from tests.support.unit_of_work import InSession

pytestmark = pytest.mark.integration
SCENARIOS = ("visa", "declined", "needs_auth", "auth_completed", "auth_failed", "refunded")


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with running_emulator() as base:
        yield base


def _attempt_without_recording(
    factory: sessionmaker[Session], gateway: StripeGateway, token: str, n: int
) -> tuple[int, str, str | None]:
    """Open and claim an attempt and charge Stripe, as a worker that then dies would."""
    with factory() as session, session.begin():
        update_settings(session, "test", stripe_connected=True)
    client_id = clients.create_client(
        factory, gateway, name=f"Client {n}", email=f"c{n}@example.com", actor="test"
    )
    clients.add_card(factory, gateway, client_id, token, actor="test")
    with factory() as session, session.begin():
        invoice = invoices.create_invoice(
            session,
            session.get_one(Client, client_id),
            number=f"ORD-{n}",
            currency="usd",
            total=10_000,
            due_date=date(2026, 11, 1),
            actor="test",
        )
        attempt = request_charge(InSession(session), invoice, source="admin", requested_by="test")
        attempt_id, invoice_id = attempt.id, invoice.id
    with factory() as session, session.begin():
        claimed = claim_attempt(session, attempt_id, now=utcnow(), lease_seconds=600)
        assert not isinstance(claimed, type(None))
        attempt, invoice = claimed  # type: ignore[misc]
        request = charge_request_for(attempt, invoice)
    outcome = gateway.create_offsession_payment_intent(request)  # and the worker dies here
    return invoice_id, attempt_id, outcome.payment_intent_id


def _finish_on_stripe(base: str, gateway: StripeGateway, scenario: str, pi_id: str | None) -> None:
    assert pi_id is not None
    if scenario in ("auth_completed", "auth_failed"):
        pi = gateway.retrieve_payment_intent(pi_id)
        pm = pi.payment_method or next(
            p["id"] for p in emulator_state(base)["payment_methods"] if p.get("customer") == pi.customer
        )
        gateway.confirm_on_session(pi_id, pm, "http://127.0.0.1/return")
        outcome = "succeed" if scenario == "auth_completed" else "fail"
        status, body = admin(
            base, "POST", f"/_emulator/payment_intents/{pi_id}/authenticate", {"outcome": outcome}
        )
        assert status == 200, body
    if scenario == "refunded":
        gateway.refund(pi_id, amount=2_500, idempotency_key=f"refund-{pi_id}")


def _outcome(factory: sessionmaker[Session]) -> dict[str, tuple[str, int]]:
    with factory() as session:
        result = {}
        for invoice in session.scalars(select(Invoice).order_by(Invoice.id)):
            attempt = session.scalars(
                select(ChargeAttempt).where(ChargeAttempt.invoice_id == invoice.id)
            ).one()
            paid = sum(session.scalars(select(Payment.amount).where(Payment.invoice_id == invoice.id)))
            result[invoice.number] = (attempt.status, paid)
        return result


def _deliver(factory: sessionmaker[Session], gateway: StripeGateway, events: list[dict[str, Any]]) -> None:
    for event in events:
        with factory() as session, session.begin():
            stored = store_event(session, event)
        process_event(factory, gateway, stored.id)


def _copy_database(url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if url.startswith("sqlite"):
        copy = tmp_path / "copy.db"
        shutil.copy(url.removeprefix("sqlite:///"), copy)
        return f"sqlite:///{copy}"
    server = request.getfixturevalue("postgres_server")
    name = url.rsplit("/", 1)[1]
    import psycopg

    with psycopg.connect(
        f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}_copy" TEMPLATE "{name}"')
    return server.url(f"{name}_copy")


def test_shuffled_triplicate_delivery_equals_one_ordered_delivery(
    emulator: str, database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    admin(emulator, "POST", "/_emulator/reset")
    gateway = StripeGateway("sk_test_emulator", emulator, "whsec_emulator", max_network_retries=0)
    tokens = {
        "visa": "pm_card_visa",
        "declined": "pm_card_chargeDeclined",
        "needs_auth": "pm_card_authenticationRequired",
        "auth_completed": "pm_card_authenticationRequired",
        "auth_failed": "pm_card_authenticationRequired",
        "refunded": "pm_card_visa",
    }
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    for n, scenario in enumerate(SCENARIOS):
        _, _, pi_id = _attempt_without_recording(factory, gateway, tokens[scenario], n)
        _finish_on_stripe(emulator, gateway, scenario, pi_id)
    engine.dispose()
    # Only the events about charges: customers and cards carry nothing to apply.
    events = [
        e
        for e in sorted(emulator_state(emulator)["events"], key=lambda e: (e["created"], e["id"]))
        if e["type"].startswith(("payment_intent.", "charge.refunded", "refund."))
    ]
    assert {e["type"] for e in events} >= {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "charge.refunded",
    }

    ordered_factory = sessionmaker(bind=make_engine(database_url), expire_on_commit=False)
    shuffled_factory = sessionmaker(
        bind=make_engine(_copy_database(database_url, tmp_path, request)), expire_on_commit=False
    )
    before = _outcome(ordered_factory)
    assert {status for status, _ in before.values()} == {"processing"}

    _deliver(ordered_factory, gateway, events)
    triplicate = events * 3
    random.Random(20261126).shuffle(triplicate)
    _deliver(shuffled_factory, gateway, triplicate)

    ordered, shuffled = _outcome(ordered_factory), _outcome(shuffled_factory)
    assert shuffled == ordered
    assert ordered == {
        "ORD-0": ("succeeded", 10_000),
        "ORD-1": ("failed", 0),
        "ORD-2": ("requires_action", 0),
        "ORD-3": ("succeeded", 10_000),
        "ORD-4": ("failed", 0),
        "ORD-5": ("succeeded", 7_500),
    }
    for factory_ in (ordered_factory, shuffled_factory):
        factory_.kw["bind"].dispose()
