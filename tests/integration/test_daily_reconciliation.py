"""Issue 9: the daily reconciliation finds an orphan PaymentIntent created directly in the emulator and
records it exactly once, through real processes (the `stack` fixture: gunicorn, Celery workers, the
emulator), with `offsession reconcile --day` run as a user runs it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.support.emulator import sdk_client
from tests.support.stack import BIN, ROOT, Stack

pytestmark = pytest.mark.integration


def db_rows(stack: Stack, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()


def test_an_orphan_made_directly_at_stripe_is_recorded_once_and_our_charge_matches(stack: Stack) -> None:
    # A charge through Offsession: API, outbox, Celery worker, Stripe.
    client = stack.client_with_card("pm_card_visa")
    invoice = stack.invoice(client["id"], total=12_345)
    status, charge = stack.charge(invoice["id"])
    assert status == 202, charge
    ours = stack.wait_charge(charge["id"])
    assert ours["status"] == "succeeded"
    # A charge straight at Stripe with the SDK, on the same customer: Offsession never hears of it.
    customer = db_rows(stack, "select stripe_customer_id from client where id = :id", id=client["id"])[0][0]
    stripe = sdk_client(stack.emu)
    card = stripe.v1.payment_methods.attach("pm_card_visa", {"customer": customer})
    orphan = stripe.v1.payment_intents.create(
        {
            "amount": 777,
            "currency": "usd",
            "customer": customer,
            "payment_method": card.id,
            "allowed_payment_method_types": ["card"],
            "confirm": True,
            "off_session": True,
        }
    )
    assert orphan.status == "succeeded" and orphan.amount_received == 777
    day = datetime.fromtimestamp(orphan.created, UTC).date().isoformat()

    first = stack.cli("reconcile", "--day", day)
    second = stack.cli("reconcile", "--day", day)

    for result in (first, second):
        assert f"reconciliation of {day} (UTC)" in result.stdout
        assert result.stdout.count(orphan.id) == 1, result.stdout
        assert ours["payment_intent_id"] not in result.stdout  # matched: nothing to report
    assert "new findings: 1" in first.stdout and "new findings: 0" in second.stdout
    findings = db_rows(
        stack,
        "select payment_intent_id, kind, amount, currency, client_id, stripe_customer_id "
        "from reconciliation_finding",
    )
    assert [tuple(f) for f in findings] == [(orphan.id, "orphan", 777, "usd", client["id"], customer)]
    (run,) = db_rows(
        stack, "select runs, listed, matched, repaired, orphans, missing, error from reconciliation_run"
    )
    assert tuple(run) == (2, 2, 1, 0, 1, 0, None)
    audits = db_rows(stack, "select count(*) from audit_event where action = 'reconciliation.orphan'")
    assert audits[0][0] == 1
    # Reconciling never charged anything: still one PaymentIntent for the invoice.
    assert len(stack.payment_intents_for(invoice["id"])) == 1


def test_a_bad_day_is_one_clear_line_and_exit_2(stack: Stack) -> None:
    for bad in ("2026-02-30", "tomorrow", "2999-01-01"):
        result = subprocess.run(
            [str(BIN / "offsession"), "reconcile", "--day", bad],
            cwd=ROOT,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (bad, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("offsession: "), result.stderr
        assert ("not a day" in lines[0]) or ("has not happened yet" in lines[0])
