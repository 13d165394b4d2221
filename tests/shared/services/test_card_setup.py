"""Saving a card through Stripe Checkout in setup mode (shared/services/card_setup.py) and its webhooks
(shared/services/card_setup_events.py), over FakeStripe: the card is stored once whichever of the
browser's return and the two webhooks comes first, the same card is never stored twice, the first card
is the default, and a setup that is not the client's stores nothing."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.secret_box import FernetSecretBox
from shared.domain.eligibility import usable_card
from shared.domain.models import Card, Client, WebhookEvent
from shared.services import card_setup, clients, stripe_connection
from shared.services.card_setup import CardSetupIncomplete, SetupOutcome
from shared.services.settings import get_settings, update_settings
from shared.services.webhooks import process_event, store_event
from tests.support.fake_stripe import FakeStripe

SUCCESS = "https://offsession.example/client/cards/added?session_id={CHECKOUT_SESSION_ID}"
CANCEL = "https://offsession.example/client/cards"


@pytest.fixture
def stripe() -> FakeStripe:
    return FakeStripe()


def new_client(factory: sessionmaker[Session], stripe: FakeStripe, n: int = 1) -> int:
    with factory() as session, session.begin():
        update_settings(session, "test", stripe_connected=True)
    return clients.create_client(factory, stripe, name=f"Client {n}", email=f"c{n}@example.com", actor="test")


def start(factory: sessionmaker[Session], stripe: FakeStripe, client_id: int) -> str:
    url = card_setup.start_card_setup(
        factory, stripe, client_id, success_url=SUCCESS, cancel_url=CANCEL, actor="client:test"
    )
    return url.rsplit("/", 1)[1]  # the session id ends Stripe's page address


def saved_cards(factory: sessionmaker[Session], client_id: int) -> list[Card]:
    with factory() as session:
        return list(session.scalars(select(Card).where(Card.client_id == client_id).order_by(Card.id)))


def deliver(factory: sessionmaker[Session], stripe: FakeStripe, events: list[dict[str, Any]]) -> list[str]:
    outcomes = []
    for event in events:
        with factory() as session, session.begin():
            stored = store_event(session, event)
        outcomes.append(process_event(factory, stripe, stored.id))
    return outcomes


def setup_events(stripe: FakeStripe) -> list[dict[str, Any]]:
    wanted = ("checkout.session.completed", "setup_intent.succeeded")
    return [event for event in stripe.server.take_events() if event["type"] in wanted]


def test_the_card_saved_on_stripes_page_is_stored_once_and_default(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    client_id = new_client(session_factory, stripe)
    session_id = start(session_factory, stripe, client_id)
    created = stripe.retrieve_card_setup_session(session_id)
    assert created.metadata == {"offsession_client_id": str(client_id)} and created.session_status == "open"
    stripe.server.complete_checkout(session_id, "pm_card_visa")

    stored = card_setup.finish_card_setup(
        session_factory, stripe, session_id, client_id=client_id, actor="client:test"
    )
    assert stored.outcome is SetupOutcome.SAVED and stored.card.is_default
    (card,) = saved_cards(session_factory, client_id)
    assert (card.brand, card.last4, card.is_default) == ("visa", "4242", True)
    assert card.fingerprint and card.exp_month == 12
    customer = stripe.server.state()["customers"][0]
    assert customer["invoice_settings"]["default_payment_method"] == card.stripe_payment_method_id
    # The webhooks come too, twice each: the card is stored already.
    events = setup_events(stripe)
    assert len(events) == 2
    outcomes = deliver(session_factory, stripe, events + events)
    assert all("already_stored" in outcome for outcome in outcomes[:2]), outcomes
    again = card_setup.finish_card_setup(
        session_factory, stripe, session_id, client_id=client_id, actor="client:test"
    )
    assert again.outcome is SetupOutcome.ALREADY_STORED
    assert len(saved_cards(session_factory, client_id)) == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_closed_tab_still_saves_the_card_once_through_the_webhooks(
    session_factory: sessionmaker[Session], stripe: FakeStripe, seed: int
) -> None:
    client_id = new_client(session_factory, stripe)
    session_id = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(session_id, "pm_card_mastercard")
    events = setup_events(stripe) * 2
    random.Random(seed).shuffle(events)  # unordered and duplicated, as Stripe delivers them
    deliver(session_factory, stripe, events)
    (card,) = saved_cards(session_factory, client_id)
    assert (card.brand, card.last4, card.is_default) == ("mastercard", "4444", True)
    with session_factory() as session:
        assert session.scalar(select(WebhookEvent.id).where(WebhookEvent.processed_at.is_(None))) is None


def test_the_same_card_saved_again_is_not_stored_twice(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    client_id = new_client(session_factory, stripe)
    first = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(first, "pm_card_visa")
    card_setup.finish_card_setup(session_factory, stripe, first, client_id=client_id, actor="client:test")
    second = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(second, "pm_card_visa")
    stored = card_setup.finish_card_setup(
        session_factory, stripe, second, client_id=client_id, actor="client:test"
    )
    assert stored.outcome is SetupOutcome.DUPLICATE
    (card,) = saved_cards(session_factory, client_id)
    duplicate = stripe.retrieve_card_setup_session(second).card
    assert duplicate is not None and duplicate.payment_method_id != card.stripe_payment_method_id
    # Stripe keeps one PaymentMethod for the card too: the new one is detached.
    pms = {pm["id"]: pm for pm in stripe.server.state()["payment_methods"]}
    assert pms[duplicate.payment_method_id]["customer"] is None
    assert pms[card.stripe_payment_method_id]["customer"] is not None
    # A second, different card is stored and not the default.
    third = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(third, "pm_card_mastercard")
    card_setup.finish_card_setup(session_factory, stripe, third, client_id=client_id, actor="client:test")
    assert [(c.last4, c.is_default) for c in saved_cards(session_factory, client_id)] == [
        ("4242", True),
        ("4444", False),
    ]


def test_a_declined_card_saves_nothing(session_factory: sessionmaker[Session], stripe: FakeStripe) -> None:
    client_id = new_client(session_factory, stripe)
    session_id = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(session_id, "pm_card_chargeDeclined")
    with pytest.raises(CardSetupIncomplete):
        card_setup.finish_card_setup(
            session_factory, stripe, session_id, client_id=client_id, actor="client:test"
        )
    assert saved_cards(session_factory, client_id) == []


def test_a_client_without_a_stripe_customer_gets_one(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    with session_factory() as session, session.begin():
        update_settings(session, "test", stripe_connected=True)
        client = Client(name="No Customer", email="none@example.com")
        session.add(client)
        session.flush()
        client_id = client.id
    session_id = start(session_factory, stripe, client_id)
    with session_factory() as session:
        customer_id = session.get_one(Client, client_id).stripe_customer_id
    assert customer_id is not None
    assert stripe.retrieve_card_setup_session(session_id).customer_id == customer_id


def test_another_clients_session_is_not_theirs_to_finish(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    ada = new_client(session_factory, stripe, 1)
    bob = new_client(session_factory, stripe, 2)
    session_id = start(session_factory, stripe, ada)
    stripe.server.complete_checkout(session_id)
    with pytest.raises(clients.NotFound):
        card_setup.finish_card_setup(session_factory, stripe, session_id, client_id=bob, actor="client:bob")
    assert saved_cards(session_factory, bob) == [] and saved_cards(session_factory, ada) == []


def _flagged(factory: sessionmaker[Session]) -> list[str | None]:
    with factory() as session:
        return list(session.scalars(select(WebhookEvent.flagged_reason).order_by(WebhookEvent.id)))


def test_an_event_naming_another_client_than_the_customers_is_flagged(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    ada = new_client(session_factory, stripe, 1)
    bob = new_client(session_factory, stripe, 2)
    session_id = start(session_factory, stripe, ada)
    stripe.server.complete_checkout(session_id)
    # Stripe's copy names Ada; a forged (or re-pointed) event names Bob: nothing is stored for either.
    with stripe.server.lock:
        stripe.server.account(None).checkout_sessions[session_id]["metadata"] = {
            "offsession_client_id": str(bob)
        }
    completed = next(e for e in setup_events(stripe) if e["type"] == "checkout.session.completed")
    (outcome,) = deliver(session_factory, stripe, [completed])
    assert outcome.startswith("flagged (customer_mismatch)"), outcome
    assert saved_cards(session_factory, bob) == [] and saved_cards(session_factory, ada) == []


def test_an_event_from_another_account_or_mode_is_flagged(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    client_id = new_client(session_factory, stripe)
    session_id = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(session_id)
    completed = next(e for e in setup_events(stripe) if e["type"] == "checkout.session.completed")
    other_account = {**completed, "id": "evt_other_account", "account": "acct_1Elsewhere"}
    live = {**completed, "id": "evt_live", "livemode": True}
    outcomes = deliver(session_factory, stripe, [other_account, live])
    assert outcomes[0].startswith("flagged (account_mismatch)"), outcomes
    assert outcomes[1].startswith("flagged (livemode_mismatch)"), outcomes
    assert saved_cards(session_factory, client_id) == []


def test_the_return_and_the_webhook_at_the_same_moment_store_one_card(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    client_id = new_client(session_factory, stripe)
    session_id = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(session_id)
    view = stripe.retrieve_card_setup_session(session_id)
    barrier = threading.Barrier(2)
    outcomes: list[SetupOutcome] = []
    errors: list[BaseException] = []

    def store() -> None:
        barrier.wait(10)
        try:
            result = card_setup.store_setup_card(session_factory, stripe, view, account=None, actor="t")
            outcomes.append(result.outcome)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=store) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(outcomes) == sorted([SetupOutcome.SAVED, SetupOutcome.ALREADY_STORED])
    assert len(saved_cards(session_factory, client_id)) == 1


def test_a_late_webhook_does_not_bring_back_a_card_the_client_deleted(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    client_id = new_client(session_factory, stripe)
    session_id = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(session_id)
    stored = card_setup.finish_card_setup(
        session_factory, stripe, session_id, client_id=client_id, actor="client:test"
    )
    clients.delete_card(session_factory, stripe, client_id, stored.card.id, actor="client:test")
    outcomes = deliver(session_factory, stripe, setup_events(stripe))
    assert all("removed since" in outcome for outcome in outcomes), outcomes
    assert saved_cards(session_factory, client_id) == []


def test_after_switching_accounts_the_same_card_saved_again_is_stored_there_and_charged(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    """The fingerprint is the same card only within one account and mode: saved again through Checkout
    under the newly connected account, it is a card of its own there, and the one a charge uses."""

    box = FernetSecretBox("test-secret-key-" + "x" * 32)
    base = "https://pay.example.com"
    stripe_connection.connect(session_factory, stripe, box, actor="admin:test", public_base_url=base)
    client_id = new_client(session_factory, stripe)
    first = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(first, "pm_card_visa")
    card_setup.finish_card_setup(session_factory, stripe, first, client_id=client_id, actor="client:test")

    stripe.server.connected_accounts["acct_1Bakery"] = {
        "id": "acct_1Bakery",
        "name": "Bakery",
        "charges_enabled": True,
    }
    stripe.server.oauth_codes["ac_1"] = "acct_1Bakery"
    stripe_connection.finish_oauth(
        session_factory, stripe, box, code="ac_1", actor="admin:test", public_base_url=base
    )
    with session_factory() as session:
        client = session.get_one(Client, client_id)
        assert (
            usable_card(client, get_settings(session)) is None
        )  # the platform's card cannot be charged here

    second = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(second, "pm_card_visa", stripe_account="acct_1Bakery")
    stored = card_setup.finish_card_setup(
        session_factory, stripe, second, client_id=client_id, actor="client:test"
    )
    assert stored.outcome is SetupOutcome.SAVED
    old, new = saved_cards(session_factory, client_id)
    assert old.fingerprint == new.fingerprint
    assert (old.stripe_account_id, new.stripe_account_id) == ("acct_fakeplatform", "acct_1Bakery")
    assert new.stripe_customer_id != old.stripe_customer_id and new.is_default and not old.is_default
    with session_factory() as session:
        client = session.get_one(Client, client_id)
        chosen = usable_card(client, get_settings(session))
        assert chosen is not None and chosen.id == new.id


def test_a_card_saved_through_the_api_and_again_on_stripes_page_is_stored_once(
    session_factory: sessionmaker[Session], stripe: FakeStripe
) -> None:
    """The API's path (clients.add_card) stores Stripe's fingerprint as Checkout does, so the same card
    saved by either path, in either order, is one card, and Stripe keeps one PaymentMethod for it."""
    client_id = new_client(session_factory, stripe)
    by_api = clients.add_card(session_factory, stripe, client_id, "pm_card_visa", actor="api")
    (card,) = saved_cards(session_factory, client_id)
    assert card.fingerprint is not None and card.stripe_payment_method_id == by_api.payment_method_id
    # Again through the API: the card already saved is the answer; the new PaymentMethod is detached.
    again = clients.add_card(session_factory, stripe, client_id, "pm_card_visa", actor="api")
    assert again == by_api
    pms = stripe.server.state()["payment_methods"]
    assert [pm["id"] for pm in pms if pm["customer"] is not None] == [card.stripe_payment_method_id]
    # Then on Stripe's page: a duplicate of the card the API saved.
    session_id = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(session_id, "pm_card_visa")
    stored = card_setup.finish_card_setup(
        session_factory, stripe, session_id, client_id=client_id, actor="client:test"
    )
    assert stored.outcome is SetupOutcome.DUPLICATE and stored.card.id == card.id
    # And the other way: a card saved on Stripe's page, then through the API.
    second = start(session_factory, stripe, client_id)
    stripe.server.complete_checkout(second, "pm_card_mastercard")
    on_page = card_setup.finish_card_setup(session_factory, stripe, second, client_id=client_id, actor="c")
    by_api_after = clients.add_card(session_factory, stripe, client_id, "pm_card_mastercard", actor="api")
    assert by_api_after == on_page.card
    assert [(c.last4, c.is_default) for c in saved_cards(session_factory, client_id)] == [
        ("4242", True),
        ("4444", False),
    ]
