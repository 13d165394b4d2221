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

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from shared.domain.eligibility import CARD_ELSEWHERE_MESSAGE
from shared.domain.models import Card, Client, table_of
from shared.domain.payments import CardDetails
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
    # Where the card lives: the Stripe account and mode it was saved in (None: before they were recorded).
    stripe_account_id: str | None = None
    livemode: bool | None = None

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
            card.stripe_account_id,
            card.livemode,
        )


@dataclass(frozen=True)
class Connection:
    """Where Stripe calls for this business go now: `stripe_account` is the Stripe-Account header (None
    = the key's own account); `place` is (account id, livemode) as verified at Connect, None before."""

    stripe_account: str | None
    place: tuple[str, bool] | None


def current_connection(factory: sessionmaker[Session]) -> Connection:
    with factory() as session:
        settings = get_settings(session)
        connection = Connection(settings.stripe_account_id, settings.verified_place)
        session.commit()
        return connection


def lives_here(account_id: str | None, livemode: bool | None, place: tuple[str, bool] | None) -> bool:
    return place is None or (account_id, livemode) == place


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
    connection = current_connection(factory)
    # A key of its own for this request (not the row id, which a database may hand out again).
    customer_id = gateway.ensure_customer(
        clean_name,
        address,
        idempotency_key=f"offsession:customer:{uuid.uuid4()}",
        stripe_account=connection.stripe_account,
    )
    account_id, livemode = connection.place or (None, None)
    try:
        with factory() as session, session.begin():
            client = Client(
                name=clean_name,
                email=address,
                stripe_customer_id=customer_id,
                stripe_customer_account_id=account_id,
                stripe_customer_livemode=livemode,
            )
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
) -> SavedCard:
    """Save a card the caller set up (the API's path and seed-demo's; the Client Zone saves through
    Checkout, shared.services.card_setup): the PaymentMethod is attached to the client's customer as
    given. The same card saved again (Stripe's fingerprint, where the connection charges) is not stored
    twice: the card already saved is returned and the new PaymentMethod detached, as Checkout does."""
    token = (payment_method or "").strip()
    if not token.startswith("pm_"):
        raise ClientError("payment_method must be a Stripe PaymentMethod id (pm_...).")
    connection = current_connection(factory)
    account = connection.stripe_account
    customer_id, first_card = customer_for_connection(factory, gateway, client_id, connection, actor=actor)
    details = gateway.attach_payment_method(
        customer_id,
        token,
        idempotency_key=f"offsession:card:{client_id}:{uuid.uuid4()}",
        make_default=first_card,
        stripe_account=account,
    )
    with factory() as session, session.begin():
        client = _client(session, client_id)
        saved = _same_card(session, client_id, details, connection.place)
        if saved is None:
            stored = _store_card(session, client, details, connection.place, customer_id, actor=actor)
            if stored is not None:
                return SavedCard.of(stored)
            saved = _same_card(session, client_id, details, connection.place)  # stored meanwhile
            if saved is None:
                raise ClientError("This PaymentMethod is saved for another client.")
        existing = SavedCard.of(saved)
    if existing.payment_method_id != details.payment_method_id:
        gateway.detach_card(details.payment_method_id, stripe_account=account)
    return existing


def _same_card(
    session: Session, client_id: int, details: CardDetails, place: tuple[str, bool] | None
) -> Card | None:
    """The client's card already saved with this PaymentMethod, or with this card (fingerprint) where
    the connection charges."""
    same = select(Card).where(Card.client_id == client_id)
    if details.fingerprint is None:
        return session.scalar(same.where(Card.stripe_payment_method_id == details.payment_method_id))
    same_pm = Card.stripe_payment_method_id == details.payment_method_id
    same = same.where(or_(same_pm, Card.fingerprint == details.fingerprint))
    if place is not None:
        same = same.where(Card.stripe_account_id == place[0], Card.livemode == place[1])
    return session.scalars(same.order_by(Card.id)).first()


def _store_card(
    session: Session,
    client: Client,
    details: CardDetails,
    place: tuple[str, bool] | None,
    customer_id: str,
    *,
    actor: str,
) -> Card | None:
    """Store a newly attached card (the default when the client has none usable here); None when the
    same card was stored meanwhile (the fingerprint's unique index)."""
    default = client.default_card
    if default is not None and not lives_here(default.stripe_account_id, default.livemode, place):
        # The default card cannot be charged where the connection is: the card saved here replaces it.
        default.is_default = False
        session.flush()
    account_id, livemode = place or (None, None)

    def card(is_default: bool) -> Card:
        return Card(
            stripe_account_id=account_id,
            livemode=livemode,
            stripe_customer_id=customer_id,
            client_id=client.id,
            stripe_payment_method_id=details.payment_method_id,
            brand=details.brand,
            last4=details.last4,
            exp_month=details.exp_month,
            exp_year=details.exp_year,
            fingerprint=details.fingerprint,
            is_default=is_default,
        )

    new = card(client.default_card is None)
    try:
        with session.begin_nested():
            session.add(new)
    except IntegrityError:
        # Another card became the default meanwhile, or the same card was stored: try as not default.
        new = card(False)
        try:
            with session.begin_nested():
                session.add(new)
        except IntegrityError:
            return None
    audit.record(session, actor, "card.added", client_id=client.id, card_id=new.id, last4=new.last4)
    if new.is_default:
        dunning.clear_for_client(session, client.id, actor=actor)  # a new card: charging may resume
    return new


def customer_for_connection(
    factory: sessionmaker[Session],
    gateway: StripePort,
    client_id: int,
    connection: Connection,
    *,
    actor: str,
) -> tuple[str, bool]:
    """The client's Stripe customer where the connection is, made there when the client's customer lives
    in another account or mode (a customer, like a card, exists in one account and mode only); and
    whether the client has no card usable there yet (the next one becomes Stripe's default)."""
    with factory() as session:
        client = _client(session, client_id)
        customer_id = client.stripe_customer_id
        here = lives_here(
            client.stripe_customer_account_id, client.stripe_customer_livemode, connection.place
        )
        first_card = not any(
            lives_here(c.stripe_account_id, c.livemode, connection.place) for c in client.cards
        )
        name, email = client.name, client.email
        session.rollback()
    if customer_id is not None and here:
        return customer_id, first_card
    customer_id = gateway.ensure_customer(
        name,
        email,
        idempotency_key=f"offsession:customer:{client_id}:{uuid.uuid4()}",
        stripe_account=connection.stripe_account,
    )
    account_id, livemode = connection.place or (None, None)
    with factory() as session, session.begin():
        client = _client(session, client_id)
        client.stripe_customer_id = customer_id
        client.stripe_customer_account_id = account_id
        client.stripe_customer_livemode = livemode
        audit.record(
            session, actor, "client.customer_created", client_id=client_id, stripe_account=account_id
        )
    return customer_id, first_card


def set_default_card(
    factory: sessionmaker[Session], gateway: StripePort, client_id: int, card_id: int, *, actor: str
) -> SavedCard:
    connection = current_connection(factory)
    account = connection.stripe_account
    with factory() as session:
        client = _client(session, client_id)
        card = _card(client, card_id)
        if card.is_default:
            return SavedCard.of(card)
        if not lives_here(card.stripe_account_id, card.livemode, connection.place):
            raise ClientError(f"This card is {CARD_ELSEWHERE_MESSAGE}.")
        customer_id = card.stripe_customer_id or client.stripe_customer_id
        pm_id = card.stripe_payment_method_id
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
    """Detach and forget a card; returns the card that is now the default, if any. A card saved under
    another Stripe account is only forgotten: this connection cannot reach it to detach it."""
    connection = current_connection(factory)
    account = connection.stripe_account
    with factory() as session:
        card = _card(_client(session, client_id), card_id)
        pm_id = card.stripe_payment_method_id
        reachable = lives_here(card.stripe_account_id, card.livemode, connection.place)
        session.rollback()
    if reachable:
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
        customer_id = successor.stripe_customer_id or client.stripe_customer_id if successor else None
        successor_here = successor is not None and lives_here(
            successor.stripe_account_id, successor.livemode, connection.place
        )
    if result is not None and customer_id and successor_here:
        gateway.set_default_card(customer_id, result.payment_method_id, stripe_account=account)
    return result


def _make_default(session: Session, client: Client, card: Card) -> None:
    for other in client.cards:
        if other.is_default and other.id != card.id:
            other.is_default = False
    session.flush()  # clear the old default before setting the new one: one default per client
    card.is_default = True
    session.flush()
