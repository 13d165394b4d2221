"""Small builders for domain objects, in memory or in a session."""

from __future__ import annotations

import itertools
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from shared.domain.models import Card, ChargeAttempt, Client, Invoice, Payment, Settings, utcnow

_numbers = itertools.count(1)
# The day the invoices made by make_invoice() are due by default.
TODAY = date(2026, 11, 26)


def settings(connected: bool = True, enabled: bool = True) -> Settings:
    return Settings(id=1, stripe_connected=connected, online_card_payments_enabled=enabled)


def client(*, with_card: bool = True, name: str = "Ada Lovelace") -> Client:
    n = next(_numbers)
    c = Client(name=name, email=f"client{n}@example.com", stripe_customer_id=f"cus_test{n}", cards=[])
    if with_card:
        c.cards.append(
            Card(
                stripe_payment_method_id=f"pm_test{n}",
                brand="visa",
                last4="4242",
                exp_month=12,
                exp_year=2030,
                is_default=True,
            )
        )
    return c


def invoice(
    *,
    total: int = 10_000,
    currency: str = "usd",
    owner: Client | None = None,
    payment_method: str = "online_card",
    paid: tuple[int, ...] = (),
    void: bool = False,
    auto_charge: bool = False,
    due: date | None = None,
) -> Invoice:
    inv = Invoice(
        number=f"T-{next(_numbers):05d}",
        client=owner or client(),
        currency=currency,
        total=total,
        due_date=due or date(2026, 11, 1),
        payment_method=payment_method,
        auto_charge=auto_charge,
        is_void=void,
        description="",
        payments=[],
        charge_attempts=[],
    )
    for amount in paid:
        inv.payments.append(Payment(amount=amount, method="cash", received_at=utcnow(), reference=""))
    return inv


def attempt(inv: Invoice, status: str = "queued", amount: int | None = None) -> ChargeAttempt:
    a = ChargeAttempt(
        invoice=inv,
        amount=amount or inv.total,
        currency=inv.currency,
        source="admin",
        status=status,
        idempotency_key=f"offsession:charge:test-{next(_numbers)}",
    )
    a.id = f"00000000-0000-4000-8000-{next(_numbers):012d}"
    return a


def persist(session: Session, *objects: object) -> None:
    session.add_all(objects)
    session.flush()


# ---- rows added to a session (numbered by the caller) ----------------------------------------------


def make_client(session: Session, n: int, card: bool = True) -> Client:
    client = Client(name=f"Client {n}", email=f"c{n}@example.com", stripe_customer_id=f"cus_{n}")
    if card:
        client.cards.append(
            Card(
                stripe_payment_method_id=f"pm_{n}",
                brand="visa",
                last4="4242",
                exp_month=1,
                exp_year=2030,
                is_default=True,
            )
        )
    session.add(client)
    return client


def make_invoice(session: Session, client: Client, n: int, **kw: Any) -> Invoice:
    values = {"currency": "usd", "total": 10_000, "due_date": TODAY, "auto_charge": True} | kw
    invoice = Invoice(number=f"B-{n:05d}", client=client, **values)
    session.add(invoice)
    return invoice
