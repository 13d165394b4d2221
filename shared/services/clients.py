"""Clients and their saved cards. Stripe holds the card; we keep its PaymentMethod id and what may be shown.

The first card becomes the default; deleting the default promotes the newest remaining card, or
leaves none. The database allows one default per client, so the old default is cleared first.

Every Stripe call here happens between database transactions, never inside one: a slow Stripe must
not hold a lock (on SQLite, the whole database's write lock) while the network answers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from shared.domain.models import Card, Client, table_of
from shared.services import audit, dunning
from shared.services.admins import AdminError, normalize_email
from shared.services.settings import get_settings

if TYPE_CHECKING:
    from shared.services.ports import StripePort


class ClientError(ValueError):
    """Bad client or card input; the message is fit to show to a person."""


class ClientExists(ClientError):
    """Another client has this email: the Client Zone signs in by email, so emails are unique."""


class NotFound(LookupError):
    """No such client, or no such card of that client."""


@dataclass(frozen=True)
class SavedCard:
    id: int
    client_id: int
    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool

    @classmethod
    def of(cls, card: Card) -> SavedCard:
        return cls(
            card.id,
            card.client_id,
            card.stripe_payment_method_id,
            card.brand,
            card.last4,
            card.exp_month,
            card.exp_year,
            card.is_default,
        )


def _account(factory: sessionmaker[Session]) -> str | None:
    with factory() as session:
        account = get_settings(session).stripe_account_id
        session.commit()
        return account


def _client(session: Session, client_id: int) -> Client:
    client = session.scalars(
        select(Client).where(Client.id == client_id).options(selectinload(Client.cards))
    ).one_or_none()
    if client is None:
        raise NotFound("No such client.")
    return client


def _card(client: Client, card_id: int) -> Card:
    card = next((c for c in client.cards if c.id == card_id), None)
    if card is None:
        raise NotFound("No such card.")
    return card


def create_client(
    factory: sessionmaker[Session], gateway: StripePort, *, name: str, email: str, actor: str
) -> int:
    """Create the Stripe customer, then the client; returns the client id."""
    clean_name = (name or "").strip()
    if not clean_name or len(clean_name) > 200:
        raise ClientError("A client needs a name of 1 to 200 characters.")
    try:
        address = normalize_email(email)
    except AdminError as exc:
        raise ClientError(str(exc)) from exc
    with factory() as session:
        _refuse_taken_email(session, address)
    account = _account(factory)
    # A key of its own for this request (not the row id, which a database may hand out again).
    customer_id = gateway.ensure_customer(
        clean_name, address, idempotency_key=f"offsession:customer:{uuid.uuid4()}", stripe_account=account
    )
    try:
        with factory() as session, session.begin():
            client = Client(name=clean_name, email=address, stripe_customer_id=customer_id)
            session.add(client)
            session.flush()
            audit.record(session, actor, "client.created", client_id=client.id)
            return client.id
    except IntegrityError:
        # Taken meanwhile by a concurrent request (the unique index decides); the Stripe customer just
        # made stays unused.
        with factory() as session:
            _refuse_taken_email(session, address)
        raise


def _refuse_taken_email(session: Session, address: str) -> None:
    taken = session.scalar(select(Client.id).where(Client.email == address))
    if taken is not None:
        raise ClientExists(f"Client {taken} already has the email {address}; each client needs its own.")


def change_email(session: Session, client_id: int, email: str, *, actor: str) -> str:
    """Give a client another email (the operator's way out of two clients sharing one); returns it
    normalized. Reads and writes only the id and email columns, so that it works on a database whose
    upgrade stopped on those shared emails."""
    try:
        address = normalize_email(email)
    except AdminError as exc:
        raise ClientError(str(exc)) from exc
    table = table_of(Client)
    if session.scalar(select(table.c.id).where(table.c.id == client_id)) is None:
        raise NotFound("No such client.")
    # In any case: before the upgrade that makes them unique, emails may be stored as typed.
    taken = session.scalar(
        select(table.c.id).where(func.lower(func.trim(table.c.email)) == address, table.c.id != client_id)
    )
    if taken is not None:
        raise ClientExists(f"Client {taken} already has the email {address}; each client needs its own.")
    session.execute(table.update().where(table.c.id == client_id).values(email=address))
    audit.record(session, actor, "client.email_changed", client_id=client_id, email=address)
    return address


def add_card(
    factory: sessionmaker[Session],
    gateway: StripePort,
    client_id: int,
    payment_method: str,
    *,
    actor: str,
    set_up: bool = False,
) -> SavedCard:
    """Save a card. `set_up` runs it through a SetupIntent (usage=off_session), as when the cardholder
    is present in the Client Zone; without it the PaymentMethod is attached as given (the API's path:
    whoever collected the card set it up)."""
    token = (payment_method or "").strip()
    if not token.startswith("pm_"):
        raise ClientError("payment_method must be a Stripe PaymentMethod id (pm_...).")
    account = _account(factory)
    with factory() as session:
        client = _client(session, client_id)
        customer_id, first_card = client.stripe_customer_id, client.default_card is None
        session.rollback()
    if customer_id is None:
        raise ClientError("This client has no Stripe customer yet.")
    attach = gateway.attach_card if set_up else gateway.attach_payment_method
    details = attach(
        customer_id,
        token,
        idempotency_key=f"offsession:card:{client_id}:{uuid.uuid4()}",
        make_default=first_card,
        stripe_account=account,
    )
    with factory() as session, session.begin():
        client = _client(session, client_id)
        card = Card(
            client_id=client_id,
            stripe_payment_method_id=details.payment_method_id,
            brand=details.brand,
            last4=details.last4,
            exp_month=details.exp_month,
            exp_year=details.exp_year,
            is_default=client.default_card is None,
        )
        try:
            with session.begin_nested():
                session.add(card)
        except IntegrityError:  # another card became the default meanwhile
            card.is_default = False
            session.add(card)
        session.flush()
        audit.record(session, actor, "card.added", client_id=client_id, card_id=card.id, last4=card.last4)
        if card.is_default:
            dunning.clear_for_client(session, client_id, actor=actor)  # a new card: charging may resume
        return SavedCard.of(card)


def set_default_card(
    factory: sessionmaker[Session], gateway: StripePort, client_id: int, card_id: int, *, actor: str
) -> SavedCard:
    account = _account(factory)
    with factory() as session:
        client = _client(session, client_id)
        card = _card(client, card_id)
        if card.is_default:
            return SavedCard.of(card)
        customer_id, pm_id = client.stripe_customer_id, card.stripe_payment_method_id
        session.rollback()
    assert customer_id is not None
    gateway.set_default_card(customer_id, pm_id, stripe_account=account)
    with factory() as session, session.begin():
        client = _client(session, client_id)
        card = _card(client, card_id)
        _make_default(session, client, card)
        audit.record(session, actor, "card.default_set", client_id=client_id, card_id=card_id)
        dunning.clear_for_client(session, client_id, actor=actor)  # another card: charging may resume
        return SavedCard.of(card)


def delete_card(
    factory: sessionmaker[Session], gateway: StripePort, client_id: int, card_id: int, *, actor: str
) -> SavedCard | None:
    """Detach and forget a card; returns the card that is now the default, if any."""
    account = _account(factory)
    with factory() as session:
        card = _card(_client(session, client_id), card_id)
        pm_id = card.stripe_payment_method_id
        session.rollback()
    gateway.detach_card(pm_id, stripe_account=account)
    with factory() as session, session.begin():
        client = _client(session, client_id)
        card = _card(client, card_id)
        was_default, last4 = card.is_default, card.last4
        client.cards.remove(card)
        session.delete(card)
        session.flush()
        audit.record(session, actor, "card.deleted", client_id=client_id, last4=last4)
        successor = (
            max(client.cards, key=lambda c: (c.created_at, c.id)) if was_default and client.cards else None
        )
        if successor is not None:
            _make_default(session, client, successor)
        result = SavedCard.of(successor) if successor else None
        customer_id = client.stripe_customer_id
    if result is not None and customer_id:
        gateway.set_default_card(customer_id, result.payment_method_id, stripe_account=account)
    return result


def _make_default(session: Session, client: Client, card: Card) -> None:
    for other in client.cards:
        if other.is_default and other.id != card.id:
            other.is_default = False
    session.flush()  # clear the old default before setting the new one: one default per client
    card.is_default = True
    session.flush()
