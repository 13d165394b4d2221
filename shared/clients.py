"""Clients and their saved cards. Stripe holds the card; we keep its PaymentMethod id and what may be shown.

The first card becomes the default; deleting the default promotes the newest remaining card, or
leaves none. The database allows one default per client, so the old default is cleared first.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from shared import audit, retries
from shared.admins import AdminError, normalize_email
from shared.models import Card, Client

if TYPE_CHECKING:
    from shared.gateway import StripeGateway


class ClientError(ValueError):
    """Bad client or card input; the message is fit to show to a person."""


def create_client(
    session: Session,
    gateway: StripeGateway,
    *,
    name: str,
    email: str,
    actor: str,
    stripe_account: str | None = None,
) -> Client:
    clean_name = (name or "").strip()
    if not clean_name or len(clean_name) > 200:
        raise ClientError("A client needs a name of 1 to 200 characters.")
    try:
        address = normalize_email(email)
    except AdminError as exc:
        raise ClientError(str(exc)) from exc
    client = Client(name=clean_name, email=address)
    session.add(client)
    session.flush()  # the id makes the Stripe idempotency key
    client.stripe_customer_id = gateway.ensure_customer(
        name=clean_name,
        email=address,
        idempotency_key=f"offsession:customer:{client.id}",
        stripe_account=stripe_account,
    )
    audit.record(session, actor, "client.created", client_id=client.id)
    session.flush()
    return client


def add_card(
    session: Session,
    gateway: StripeGateway,
    client: Client,
    payment_method: str,
    *,
    actor: str,
    stripe_account: str | None = None,
    set_up: bool = False,
) -> Card:
    """Save a card. `set_up` runs it through a SetupIntent (usage=off_session), as when the cardholder
    is present in the Client Zone; without it the PaymentMethod is attached as given (the API's path:
    whoever collected the card set it up)."""
    token = (payment_method or "").strip()
    if not token.startswith("pm_"):
        raise ClientError("payment_method must be a Stripe PaymentMethod id (pm_...).")
    if client.stripe_customer_id is None:
        raise ClientError(f"{client.name} has no Stripe customer yet.")
    make_default = client.default_card is None
    attach = gateway.attach_card if set_up else gateway.attach_payment_method
    details = attach(
        client.stripe_customer_id,
        token,
        # Each "add a card" is its own request: a fresh key, kept for the SDK's retries of this one.
        idempotency_key=f"offsession:card:{client.id}:{uuid.uuid4()}",
        make_default=make_default,
        stripe_account=stripe_account,
    )
    card = Card(
        client=client,
        stripe_payment_method_id=details.payment_method_id,
        brand=details.brand,
        last4=details.last4,
        exp_month=details.exp_month,
        exp_year=details.exp_year,
        is_default=make_default,
    )
    session.add(card)
    session.flush()
    audit.record(session, actor, "card.added", client_id=client.id, card_id=card.id, last4=card.last4)
    if make_default:
        retries.clear_for_client(session, client.id, actor=actor)  # a new card: charging may resume
    return card


def set_default_card(
    session: Session,
    gateway: StripeGateway,
    client: Client,
    card: Card,
    *,
    actor: str,
    stripe_account: str | None = None,
) -> Card:
    if card.client_id != client.id:
        raise ClientError("That card belongs to another client.")
    if card.is_default:
        return card
    assert client.stripe_customer_id is not None
    gateway.set_default_card(
        client.stripe_customer_id, card.stripe_payment_method_id, stripe_account=stripe_account
    )
    _make_default(session, client, card)
    audit.record(session, actor, "card.default_set", client_id=client.id, card_id=card.id)
    retries.clear_for_client(session, client.id, actor=actor)  # another card: charging may resume
    return card


def delete_card(
    session: Session,
    gateway: StripeGateway,
    client: Client,
    card: Card,
    *,
    actor: str,
    stripe_account: str | None = None,
) -> Card | None:
    """Detach and forget a card; returns the card that is now the default, if any."""
    if card.client_id != client.id:
        raise ClientError("That card belongs to another client.")
    gateway.detach_card(card.stripe_payment_method_id, stripe_account=stripe_account)
    was_default = card.is_default
    client.cards.remove(card)
    session.delete(card)
    session.flush()
    audit.record(session, actor, "card.deleted", client_id=client.id, last4=card.last4)
    if not was_default or not client.cards:
        return client.default_card
    successor = max(client.cards, key=lambda c: (c.created_at, c.id))
    assert client.stripe_customer_id is not None
    gateway.set_default_card(
        client.stripe_customer_id, successor.stripe_payment_method_id, stripe_account=stripe_account
    )
    _make_default(session, client, successor)
    return successor


def _make_default(session: Session, client: Client, card: Card) -> None:
    for other in client.cards:
        if other.is_default and other.id != card.id:
            other.is_default = False
    session.flush()  # clear the old default before setting the new one: one default per client
    card.is_default = True
    session.flush()
