"""Demo data for `offsession seed-demo`: idempotent, keyed by client email and invoice number.

Clients carry the emulator's test cards of each behaviour (stripe_emulator/cards.py); invoices cover every
status (open, partially paid, paid, void), and some are due today with auto-charge on.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import AdminUser, Client, Invoice
from shared.services import admins, clients, invoices, payments
from shared.services.ports import StripePort
from shared.services.settings import get_settings, update_settings

ACTOR = "seed-demo"
DEMO_ADMIN_EMAIL = "admin@demo.offsession.test"


class SeedRefused(Exception):
    """Demo data is not for this deployment; the message says why."""


@dataclass(frozen=True)
class DemoClient:
    name: str
    email: str
    card: str | None


DEMO_CLIENTS = (
    DemoClient("Ada Lovelace", "ada@demo.offsession.test", "pm_card_visa"),
    DemoClient("Grace Hopper", "grace@demo.offsession.test", "pm_card_mastercard"),
    DemoClient("Dan Declined", "dan@demo.offsession.test", "pm_card_chargeDeclined"),
    DemoClient("Ines Insufficient", "ines@demo.offsession.test", "pm_card_chargeDeclinedInsufficientFunds"),
    DemoClient("Eve Expired", "eve@demo.offsession.test", "pm_card_chargeDeclinedExpiredCard"),
    DemoClient("Arthur Authenticate", "arthur@demo.offsession.test", "pm_card_authenticationRequired"),
    DemoClient("Fiona Fails", "fiona@demo.offsession.test", "pm_card_chargeCustomerFail"),
    DemoClient("Nora Nocard", "nora@demo.offsession.test", None),
)


@dataclass(frozen=True)
class DemoInvoice:
    number: str
    client_email: str
    total: int
    currency: str = "usd"
    due_in_days: int = 0
    payment_method: str = "online_card"
    auto_charge: bool = False
    void: bool = False
    payments: tuple[tuple[int, str, str], ...] = field(default=())  # (amount, method, reference)
    description: str = ""


def _demo_invoices() -> tuple[DemoInvoice, ...]:
    due_today = [
        DemoInvoice(
            f"DEMO-{i + 1:04d}",
            c.email,
            12_000 + 1_500 * i,
            auto_charge=True,
            description=f"Monthly retainer for {c.name}",
        )
        for i, c in enumerate(DEMO_CLIENTS)
    ]
    return (
        *due_today,
        DemoInvoice(
            "DEMO-0101",
            "ada@demo.offsession.test",
            45_000,
            due_in_days=14,
            description="Open, due in two weeks",
        ),
        DemoInvoice(
            "DEMO-0102",
            "grace@demo.offsession.test",
            80_000,
            due_in_days=-3,
            payments=((30_000, "bank_transfer", "Wire 2026-001"),),
            description="Partially paid by bank transfer",
        ),
        DemoInvoice(
            "DEMO-0103",
            "ada@demo.offsession.test",
            25_000,
            due_in_days=-10,
            payments=((10_000, "cash", "Receipt 17"), (15_000, "cheque", "Cheque 4411")),
            description="Paid in cash and by cheque",
        ),
        DemoInvoice(
            "DEMO-0104", "dan@demo.offsession.test", 9_900, void=True, description="Voided: issued by mistake"
        ),
        DemoInvoice(
            "DEMO-0105",
            "grace@demo.offsession.test",
            60_000,
            due_in_days=7,
            payment_method="bank_transfer",
            description="To be paid by bank transfer",
        ),
        DemoInvoice(
            "DEMO-0106",
            "ada@demo.offsession.test",
            12_000,
            currency="jpy",
            due_in_days=-1,
            description="Zero-decimal currency: ¥12,000",
        ),
        DemoInvoice("DEMO-0107", "grace@demo.offsession.test", 30, description="Below Stripe's minimum"),
    )


@dataclass
class SeedReport:
    clients_created: int = 0
    cards_added: int = 0
    invoices_created: int = 0
    admin_email: str = DEMO_ADMIN_EMAIL
    admin_password: str | None = None


def demo_admin_password(var_dir: Path) -> str:
    """The demo admin's password, generated once and kept under var/ so `make run` can print it."""
    path = var_dir / "demo_admin_password"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(12)
    path.write_text(password)
    path.chmod(0o600)
    return password


def seed_demo(
    factory: sessionmaker[Session], gateway: StripePort, var_dir: Path, today: date | None = None
) -> SeedReport:
    if gateway.livemode:
        # Demo customers, cards and an admin with a printed password in a live account: never.
        raise SeedRefused(
            "STRIPE_API_KEY is a live key: demo data (customers, test cards, a demo admin) is for test "
            "mode only. Use a test key (sk_test_...) or the emulator."
        )
    report = SeedReport()
    today = today or date.today()
    with factory() as session, session.begin():
        if not get_settings(session).stripe_connected:
            # The demo runs against the emulator: connect it so the Charge buyer button works at once.
            update_settings(session, ACTOR, stripe_connected=True)

    client_ids: dict[str, int] = {}
    for demo in DEMO_CLIENTS:
        with factory() as session:
            existing = session.scalar(select(Client.id).where(Client.email == demo.email))
            session.rollback()
        if existing is None:
            existing = clients.create_client(factory, gateway, name=demo.name, email=demo.email, actor=ACTOR)
            report.clients_created += 1
            if demo.card:
                clients.add_card(factory, gateway, existing, demo.card, actor=ACTOR)
                report.cards_added += 1
        client_ids[demo.email] = existing

    with factory() as session, session.begin():
        for demo_invoice in _demo_invoices():
            if session.scalar(select(Invoice.id).where(Invoice.number == demo_invoice.number)) is not None:
                continue
            invoice = invoices.create_invoice(
                session,
                session.get_one(Client, client_ids[demo_invoice.client_email]),
                number=demo_invoice.number,
                currency=demo_invoice.currency,
                total=demo_invoice.total,
                due_date=today + timedelta(days=demo_invoice.due_in_days),
                payment_method=demo_invoice.payment_method,
                auto_charge=demo_invoice.auto_charge,
                description=demo_invoice.description,
                actor=ACTOR,
            )
            for amount, method, reference in demo_invoice.payments:
                payments.record_payment(
                    session, invoice, amount=amount, method=method, reference=reference, recorded_by=ACTOR
                )
            if demo_invoice.void:
                invoices.void_invoice(session, invoice, actor=ACTOR)
            report.invoices_created += 1

        password = demo_admin_password(var_dir)
        if session.scalar(select(AdminUser).where(AdminUser.email == DEMO_ADMIN_EMAIL)) is None:
            admins.create_admin(session, DEMO_ADMIN_EMAIL, password, actor=ACTOR)
        report.admin_password = password
    return report
