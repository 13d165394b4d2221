"""The webhooks of a card saved through Stripe Checkout (shared.services.card_setup): when the client
closes the tab before coming back, `checkout.session.completed` or `setup_intent.succeeded` stores the
card, once, whichever comes first (and whether or not the browser came back too).

The event is only a hint: what is stored is Stripe's copy of the session (or SetupIntent) read now,
bound to the client its metadata names (mode, account, the client's own customer:
shared.domain.binding.card_setup_mismatch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from shared.domain.binding import Mismatch, MismatchReason, card_setup_account_mismatch
from shared.services.card_setup import (
    CLIENT_METADATA_KEY,
    CardSetupIncomplete,
    client_named_by,
    store_setup_card,
)
from shared.services.clients import NotFound, current_connection

if TYPE_CHECKING:
    from shared.services.ports import StripePort

CARD_SETUP_EVENTS = ("checkout.session.completed", "setup_intent.succeeded")


def is_card_setup_event(event_type: str, obj: dict[str, Any]) -> bool:
    """A completed setup-mode Checkout Session, or a succeeded SetupIntent, naming a client of ours (the
    SetupIntents the API's own card saving makes name none: that path stores its card itself)."""
    if event_type == "checkout.session.completed":
        ours = obj.get("object") == "checkout.session" and obj.get("mode") == "setup"
    elif event_type == "setup_intent.succeeded":
        ours = obj.get("object") == "setup_intent"
    else:
        return False
    return ours and bool((obj.get("metadata") or {}).get(CLIENT_METADATA_KEY))


def apply_card_setup_event(
    factory: sessionmaker[Session],
    gateway: StripePort,
    event_type: str,
    obj: dict[str, Any],
    *,
    account: str | None,
    actor: str,
) -> str:
    """Store the card the event reports; returns what happened, in words. Raises Mismatch (nothing
    stored) when Stripe's copy is not the named client's."""
    wrong_account = card_setup_account_mismatch(account, current_connection(factory).stripe_account)
    if wrong_account is not None:
        raise wrong_account  # before asking Stripe: that account's objects are none of ours
    named = str((obj.get("metadata") or {}).get(CLIENT_METADATA_KEY, ""))
    object_id = str(obj.get("id"))
    if event_type == "checkout.session.completed":
        view = gateway.retrieve_card_setup_session(object_id, stripe_account=account)
    else:
        view = gateway.retrieve_card_setup_intent(object_id, stripe_account=account)
    if str(client_named_by(view)) != named:
        raise Mismatch(
            MismatchReason.CUSTOMER,
            f"The event's {object_id} names client {named}; Stripe's copy of it names "
            f"{view.metadata.get(CLIENT_METADATA_KEY) or 'none'}.",
        )
    try:
        stored = store_setup_card(factory, gateway, view, account=account, actor=actor)
    except CardSetupIncomplete as exc:
        return f"{object_id}: no card saved ({exc})"
    except NotFound as exc:
        return f"{object_id}: {exc}"
    return f"{object_id}: card {stored.card.id} of client {stored.card.client_id} {stored.outcome.value}"
