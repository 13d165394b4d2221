"""Issue 6 through the real processes: a 1,000-invoice batch on two worker processes, and the one
email a charge needing authentication sends, with a link that works."""

from __future__ import annotations

import email
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from shared.domain.models import Client, Invoice
from tests.support.services import PostgresServer, RedisServer
from tests.support.stack import LinkBrowser, Stack, broker_url
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CARD_OUTCOMES = {
    "pm_card_visa": "succeeded",
    "pm_card_mastercard": "succeeded",
    "pm_card_chargeDeclined": "failed",
    "pm_card_chargeDeclinedInsufficientFunds": "failed",
    "pm_card_chargeDeclinedExpiredCard": "failed",
    "pm_card_authenticationRequired": "requires_action",
    "pm_card_chargeCustomerFail": "failed",
}


@pytest.fixture(scope="module")
def batch_stack(redis_server: RedisServer, postgres_server: PostgresServer) -> Iterator[Stack]:
    st = Stack(
        postgres_server.create_database("batch"),
        broker_url(redis_server),
        workers=2,
        concurrency=4,
        extra_env={"STRIPE_RATE_LIMIT": "400"},
    )
    try:
        yield st
    finally:
        st.stop()


def test_thousand_due_invoices_charged_at_most_once_each(batch_stack: Stack) -> None:
    st = batch_stack
    clients = {token: st.client_with_card(token)["id"] for token in CARD_OUTCOMES}
    engine = create_engine(st.database_url)
    with Session(engine) as s, s.begin():
        tokens = list(CARD_OUTCOMES)
        for n in range(1000):
            token = tokens[n % len(tokens)]
            s.add(
                Invoice(
                    number=f"BATCH-{n:04d}",
                    client=s.get(Client, clients[token]),
                    currency="usd",
                    total=1_000 + n,
                    due_date=date.today(),
                    payment_method="online_card",
                    auto_charge=True,
                )
            )
    dry = st.cli("charge-due", "--dry-run")
    assert "would charge 1000 invoices" in dry.stdout and "dry run: nothing was charged" in dry.stdout
    assert "BATCH-0000" in dry.stdout
    started = time.monotonic()
    run = st.cli("charge-due", "--no-wait")
    assert "1000 due, 1000 queued, 0 skipped" in run.stdout

    def still_open() -> int:
        with engine.connect() as c:
            return int(
                c.execute(
                    text(
                        "select count(*) from charge_attempt where batch_run_id is not null and "
                        "status in ('queued', 'processing', 'unknown')"
                    )
                ).scalar_one()
            )

    wait_until(lambda: still_open() == 0, timeout=300, what="every batch charge settled", every=1)
    elapsed = time.monotonic() - started

    with engine.connect() as c:
        rows = c.execute(
            text(
                "select i.number, cl.name, a.status, a.payment_intent_id, r.selected, r.queued, r.skipped "
                "from charge_attempt a join invoice i on i.id = a.invoice_id "
                "join client cl on cl.id = i.client_id "
                "join batch_run r on r.id = a.batch_run_id"
            )
        ).all()
        paid = c.execute(
            text(
                "select count(*) from payment where invoice_id in "
                "(select id from invoice where number like 'BATCH-%')"
            )
        ).scalar_one()
    engine.dispose()
    assert len(rows) == 1000 and len({r.number for r in rows}) == 1000  # one attempt each
    assert {(r.selected, r.queued, r.skipped) for r in rows} == {(1000, 1000, 0)}
    for r in rows:
        token = r.name.removeprefix("Client ")
        assert r.status == CARD_OUTCOMES[token], (r.number, token, r.status)
    outcomes = Counter(r.status for r in rows)
    assert sum(outcomes.values()) == 1000
    assert paid == outcomes["succeeded"]
    pis = [
        pi
        for pi in st.emulator_state()["payment_intents"]
        if str(pi.get("metadata", {}).get("invoice_number", "")).startswith("BATCH-")
    ]
    per_invoice = Counter(pi["metadata"]["invoice_number"] for pi in pis)
    assert max(per_invoice.values()) == 1 and len(per_invoice) == 1000
    assert sum(1 for pi in pis if pi["status"] == "succeeded") == outcomes["succeeded"]
    # Ten charges to a message (shared.services.charge_batches): a hundred messages, not a thousand.
    logs = st.log("worker0") + st.log("worker1")
    assert logs.count("Task offsession.charge_attempts[") >= 100 and "in this message" in logs
    print(f"\n1000-invoice batch settled in {elapsed:.1f}s on 2 workers: {dict(outcomes)}")


def test_authentication_needed_sends_one_email_whose_link_works(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    db = tmp_path_factory.mktemp("db") / "auth.db"
    st = Stack(f"sqlite:///{db}", broker_url(redis_server), workers=1, beat=True)
    try:
        client = st.client_with_card("pm_card_authenticationRequired")
        invoice = st.invoice(client["id"], total=4_200)
        status, charge = st.charge(invoice["id"])
        assert status == 202
        assert st.wait_charge(charge["id"])["status"] == "requires_action"
        st.cli("reconcile")  # the janitor passing by must not send it again
        outbox = st.dir / "var" / "outbox"

        def mails_to_client() -> list[email.message.Message]:
            found = [email.message_from_bytes(p.read_bytes()) for p in outbox.glob("*.eml")]
            return [m for m in found if m["To"] == client["email"]]

        wait_until(lambda: outbox.exists() and mails_to_client(), timeout=30, what="the authentication email")
        # Two relay runs later (the second began after the email was written): still one.
        relays = st.log_count("Task offsession.relay_outbox[")
        wait_until(
            lambda: st.log_count("Task offsession.relay_outbox[") >= relays + 4,
            timeout=30,
            what="two more relay runs (each logs received, then succeeded)",
        )
        mails = mails_to_client()
        mails = [m for m in mails if m["To"] == client["email"]]
        assert len(mails) == 1, [m["Subject"] for m in mails]
        assert mails[0]["Subject"] == f"Please confirm your payment of $42.00 for invoice {invoice['number']}"
        body = next(
            p.get_payload(decode=True).decode()
            for p in mails[0].walk()
            if p.get_content_type() == "text/plain"
        )
        link = next(word for word in body.split() if "/client/authenticate?token=" in word)

        browser = LinkBrowser()
        status, url, html = browser.use_link(link)
        assert status == 200 and url.endswith(f"/client/invoices/{invoice['id']}")
        assert "Complete authentication with your bank" in html
        tampered = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
        assert LinkBrowser().get(tampered)[0] == 400
        assert LinkBrowser().get(link)[0] == 400  # used once: dead
    finally:
        st.stop()
