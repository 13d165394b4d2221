"""Saving a card through Stripe's hosted Checkout page in setup mode (docs.stripe.com/payments/checkout/
save-and-reuse): the client's browser goes to Stripe, types the card there (and authenticates with
their bank when the card asks for it at setup), and comes back; our pages never see a card number.

`start_card_setup` creates the Checkout Session for the client's Stripe customer (creating the customer
first when the client has none). `store_setup_card` stores the card a completed session (or its
SetupIntent) saved: brand, last four, expiry and fingerprint. It is idempotent and may run twice at
once, from the browser's return and from the webhook: the PaymentMethod id and the (client, fingerprint)
pair are unique in the database, so whoever commits second finds the card stored. The same card saved
again (same fingerprint, another PaymentMethod) is not stored twice: its new PaymentMethod is detached
at Stripe. The first card becomes the default, at Stripe too.

As in shared.services.clients, no Stripe call is made inside a database transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.binding import Mismatch, MismatchReason, card_setup_mismatch
from shared.domain.models import Card, Client
from shared.domain.payments import CardDetails, CardSetupView
from shared.services import audit, dunning
from shared.services.clients import (
    Connection,
    NotFound,
    SavedCard,
    current_connection,
    customer_for_connection,
    lives_here,
)
from shared.services.settings import get_settings

if TYPE_CHECKING:
    from shared.services.ports import StripePort

# The metadata key (on the Checkout Session and on its SetupIntent) naming the client the card is for.
CLIENT_METADATA_KEY = "offsession_client_id"


class CardSetupIncomplete(Exception):
    """The session saved no card (yet): still open, expired, or its SetupIntent did not succeed. The
    message is fit to show to the client."""


class SetupOutcome(StrEnum):
    SAVED = "saved"  # stored now
    ALREADY_STORED = "already_stored"  # this PaymentMethod was stored before (the return and the webhook)
    DUPLICATE = "duplicate"  # the client had this card (same fingerprint) already: not stored twice


@dataclass(frozen=True)
class StoredSetupCard:
    card: SavedCard
    outcome: SetupOutcome


def _customer_of(
    factory: sessionmaker[Session], gateway: StripePort, client_id: int, connection: Connection, actor: str
) -> str:
    """The client's Stripe customer where the connection charges, made there when the client has none
    in that account and mode yet (shared.services.clients.customer_for_connection)."""
    customer_id, _ = customer_for_connection(factory, gateway, client_id, connection, actor=actor)
    return customer_id


def start_card_setup(
    factory: sessionmaker[Session],
    gateway: StripePort,
    client_id: int,
    *,
    success_url: str,
    cancel_url: str,
    actor: str,
) -> str:
    """Create a Checkout Session (mode=setup) saving a card to the client's customer; returns Stripe's
    page to send the browser to. `success_url` should carry {CHECKOUT_SESSION_ID}."""
    connection = current_connection(factory)
    account = connection.stripe_account
    customer_id = _customer_of(factory, gateway, client_id, connection, actor)
    view = gateway.create_card_setup_session(
        customer_id,
        success_url=success_url,
        cancel_url=cancel_url,
        metadata={CLIENT_METADATA_KEY: str(client_id)},
        # A new session per click; the key makes the SDK's own retries of this one request safe.
        idempotency_key=f"offsession:card-setup:{client_id}:{uuid.uuid4()}",
        stripe_account=account,
    )
    with factory() as session, session.begin():
        audit.record(session, actor, "card_setup.started", client_id=client_id, session_id=view.session_id)
    if not view.url:
        raise CardSetupIncomplete("Stripe did not give a page to save the card on. Please try again.")
    return view.url


def client_named_by(view: CardSetupView) -> int | None:
    """The client id a session's (or SetupIntent's) metadata names; None when it is not one of ours."""
    named = view.metadata.get(CLIENT_METADATA_KEY, "")
    return int(named) if named.isdigit() else None


def finish_card_setup(
    factory: sessionmaker[Session], gateway: StripePort, session_id: str, *, client_id: int, actor: str
) -> StoredSetupCard:
    """The client's browser is back from Stripe's page: read the session and store its card. Raises
    CardSetupIncomplete when it saved none, Mismatch when the session is not this client's."""
    account = current_connection(factory).stripe_account
    view = gateway.retrieve_card_setup_session(session_id, stripe_account=account)
    if client_named_by(view) != client_id:
        raise NotFound("No such card setup for this client.")
    return store_setup_card(factory, gateway, view, account=account, actor=actor)


def store_setup_card(
    factory: sessionmaker[Session],
    gateway: StripePort,
    view: CardSetupView,
    *,
    account: str | None,
    actor: str,
) -> StoredSetupCard:
    """Store the card a completed setup saved, once. `account`: the account Stripe reported it from
    (None: the platform). Raises CardSetupIncomplete, NotFound (no client of that id) or Mismatch
    (another mode, account or customer: nothing is stored)."""
    if not view.saved or view.card is None:
        if view.session_status == "expired":
            raise CardSetupIncomplete("This card setup expired before a card was saved. Please try again.")
        raise CardSetupIncomplete("No card was saved. You can try again with the Add a card button.")
    client_id = client_named_by(view)
    if client_id is None:
        raise NotFound("This card setup names no client.")
    details = view.card
    with factory() as session, session.begin():
        client = session.get(Client, client_id)
        if client is None:
            raise NotFound("No such client.")
        settings = get_settings(session)
        mismatch = card_setup_mismatch(
            view,
            client_id=client_id,
            client_customer_id=client.stripe_customer_id,
            account=account,
            expected_account=settings.stripe_account_id,
            livemode=gateway.livemode,
        )
        if mismatch is not None:
            raise mismatch
        place = settings.verified_place
        found = _stored(session, client_id, details.payment_method_id, details.fingerprint, place)
        if found is None and not view.still_attached:
            # Deleted since (a late webhook of a card the client removed): not brought back.
            raise CardSetupIncomplete("This card was removed since it was saved.")
        if found is None:
            default = client.default_card
            if default is not None and not lives_here(default.stripe_account_id, default.livemode, place):
                # The default cannot be charged where the connection is: the card saved here replaces it.
                default.is_default = False
                session.flush()
            card = _new_card(client, details, place, is_default=_has_no_default(session, client_id))
            try:
                with session.begin_nested():
                    session.add(card)
            except IntegrityError:
                # Stored meanwhile by the other path (the return or the webhook), or another card became
                # the default at the same moment: read again.
                found = _stored(session, client_id, details.payment_method_id, details.fingerprint, place)
                if found is None:
                    card = _new_card(client, details, place, is_default=False)
                    session.add(card)
        if found is not None:
            outcome = (
                SetupOutcome.ALREADY_STORED
                if found.stripe_payment_method_id == details.payment_method_id
                else SetupOutcome.DUPLICATE
            )
            result = StoredSetupCard(SavedCard.of(found), outcome)
        else:
            session.flush()
            audit.record(
                session,
                actor,
                "card.added",
                client_id=client_id,
                card_id=card.id,
                last4=card.last4,
                via="checkout",
                setup=view.session_id or view.setup_intent_id,
            )
            if card.is_default:
                dunning.clear_for_client(session, client_id, actor=actor)  # a new card: charging may resume
            result = StoredSetupCard(SavedCard.of(card), SetupOutcome.SAVED)
        customer_id = client.stripe_customer_id
    assert customer_id is not None
    if result.card.is_default and result.card.payment_method_id == details.payment_method_id:
        # Again when the card was stored already: a crash between the commit and this call is repaired
        # by the next pass (the return or a webhook). Setting the same value twice is harmless.
        gateway.set_default_card(customer_id, details.payment_method_id, stripe_account=account)
    elif result.outcome is SetupOutcome.DUPLICATE:
        # The client saved a card they had saved before: keep one PaymentMethod for it at Stripe too.
        gateway.detach_card(details.payment_method_id, stripe_account=account)
    return result


def _stored(
    session: Session,
    client_id: int,
    payment_method_id: str,
    fingerprint: str | None,
    place: tuple[str, bool] | None,
) -> Card | None:
    """The client's card with this PaymentMethod, or else with this fingerprint where the connection
    charges (`place`; the same card saved under another account is another PaymentMethod there)."""
    by_pm = session.scalar(select(Card).where(Card.stripe_payment_method_id == payment_method_id))
    if by_pm is not None:
        if by_pm.client_id != client_id:
            raise Mismatch(
                MismatchReason.CUSTOMER,
                f"PaymentMethod {payment_method_id} is stored for client {by_pm.client_id}, not {client_id}.",
            )
        return by_pm
    if fingerprint is None:
        return None
    same_card = select(Card).where(Card.client_id == client_id, Card.fingerprint == fingerprint)
    if place is not None:
        same_card = same_card.where(Card.stripe_account_id == place[0], Card.livemode == place[1])
    return session.scalar(same_card)


def _new_card(
    client: Client, details: CardDetails, place: tuple[str, bool] | None, *, is_default: bool
) -> Card:
    account_id, livemode = place or (None, None)
    return Card(
        client_id=client.id,
        stripe_account_id=account_id,
        livemode=livemode,
        stripe_customer_id=client.stripe_customer_id,
        stripe_payment_method_id=details.payment_method_id,
        brand=details.brand,
        last4=details.last4,
        exp_month=details.exp_month,
        exp_year=details.exp_year,
        fingerprint=details.fingerprint,
        is_default=is_default,
    )


def _has_no_default(session: Session, client_id: int) -> bool:
    return session.scalar(select(Card.id).where(Card.client_id == client_id, Card.is_default)) is None
