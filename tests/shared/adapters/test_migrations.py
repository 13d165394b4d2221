"""Models and migrations agree, on SQLite and on PostgreSQL, and the database enforces the rules."""

from __future__ import annotations

import threading
import time
from datetime import date

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.database import make_engine
from shared.adapters.migrate import downgrade, upgrade
from shared.domain.models import Base, Card, ChargeAttempt, Client, Invoice, Payment, Settings
from shared.domain.states import AttemptStatus


def test_migrations_leave_nothing_for_autogenerate(migrated_engine: Engine) -> None:
    with migrated_engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []


def test_fresh_database_has_one_unconnected_settings_row(session: Session) -> None:
    rows = session.scalars(select(Settings)).all()
    assert [(s.id, s.stripe_connected, s.online_card_payments_enabled) for s in rows] == [(1, False, True)]


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    engine = make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        assert "charge_attempt" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def _invoice(session: Session) -> Invoice:
    client = Client(name="Ada", email="ada@example.com", stripe_customer_id="cus_1")
    invoice = Invoice(number="INV-1", client=client, currency="usd", total=10_000, due_date=date(2026, 11, 1))
    session.add(invoice)
    session.commit()
    return invoice


def _attempt(invoice_id: int, key: str, status: str = "queued") -> ChargeAttempt:
    return ChargeAttempt(
        invoice_id=invoice_id,
        amount=10_000,
        currency="usd",
        source="admin",
        status=status,
        idempotency_key=key,
    )


def test_one_in_flight_attempt_per_invoice(session: Session) -> None:
    invoice = _invoice(session)
    session.add(_attempt(invoice.id, "k1"))
    session.commit()
    session.add(_attempt(invoice.id, "k2"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    # Final attempts do not count: after a failure a new attempt may open.
    first = session.scalar(select(ChargeAttempt))
    assert first is not None
    first.status = AttemptStatus.FAILED.value
    session.commit()
    session.add(_attempt(invoice.id, "k3"))
    session.commit()
    assert session.scalar(select(ChargeAttempt).where(ChargeAttempt.idempotency_key == "k3")) is not None


@pytest.mark.parametrize("status", ["processing", "requires_action", "unknown"])
def test_every_non_terminal_status_holds_the_slot(session: Session, status: str) -> None:
    invoice = _invoice(session)
    session.add(_attempt(invoice.id, "a", status))
    session.commit()
    session.add(_attempt(invoice.id, "b"))
    with pytest.raises(IntegrityError):
        session.commit()


def test_two_concurrent_transactions_cannot_both_open_an_attempt(
    session_factory: sessionmaker[Session], migrated_engine: Engine
) -> None:
    """Two real connections race; the database itself refuses the second in-flight attempt."""
    with session_factory() as setup:
        invoice_id = _invoice(setup).id
    first_inserted = threading.Event()
    outcomes: dict[str, str] = {}

    def first() -> None:
        with session_factory() as s:
            s.add(_attempt(invoice_id, "first"))
            s.flush()  # the row is written, the transaction still open
            first_inserted.set()
            time.sleep(0.5)  # hold it while the second transaction tries
            s.commit()
            outcomes["first"] = "committed"

    def second() -> None:
        first_inserted.wait(10)
        with session_factory() as s:
            s.add(_attempt(invoice_id, "second"))
            try:
                s.commit()
                outcomes["second"] = "committed"
            except IntegrityError:
                s.rollback()
                outcomes["second"] = "refused"

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outcomes == {"first": "committed", "second": "refused"}
    with migrated_engine.connect() as conn:
        assert conn.execute(text("select count(*) from charge_attempt")).scalar_one() == 1


def test_one_default_card_per_client(session: Session) -> None:
    client = Client(name="Ada", email="ada@example.com")
    client.cards = [
        Card(
            stripe_payment_method_id="pm_1",
            brand="visa",
            last4="4242",
            exp_month=1,
            exp_year=2030,
            is_default=True,
        ),
        Card(
            stripe_payment_method_id="pm_2",
            brand="visa",
            last4="4242",
            exp_month=1,
            exp_year=2030,
            is_default=True,
        ),
    ]
    session.add(client)
    with pytest.raises(IntegrityError):
        session.commit()


def test_a_payment_intent_enters_the_ledger_once(session: Session) -> None:
    from shared.domain.models import utcnow

    invoice = _invoice(session)
    for _ in range(2):
        session.add(
            Payment(
                invoice_id=invoice.id,
                amount=100,
                method="card",
                received_at=utcnow(),
                stripe_payment_intent_id="pi_1",
            )
        )
    with pytest.raises(IntegrityError):
        session.commit()


@pytest.mark.parametrize(
    ("column", "value"),
    [("total", 0), ("currency", "USD"), ("payment_method", "crypto")],
)
def test_invoice_checks(session: Session, column: str, value: object) -> None:
    client = Client(name="Ada", email="ada@example.com")
    invoice = Invoice(number="X", client=client, currency="usd", total=100, due_date=date(2026, 1, 1))
    setattr(invoice, column, value)
    session.add(invoice)
    with pytest.raises(IntegrityError):
        session.commit()
