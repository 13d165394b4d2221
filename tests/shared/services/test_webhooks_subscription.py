"""The event types Offsession's webhook endpoint subscribes to are exactly those processing acts on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from shared.services.webhooks import EVENTS_WITH_WORK, has_work


def _event_of(event_type: str) -> dict[str, Any]:
    kind = event_type.split(".")[0]
    obj_type = {
        "payment_intent": "payment_intent",
        "refund": "refund",
        "checkout": "checkout.session",
        "setup_intent": "setup_intent",
    }.get(kind, "charge")
    # A card saved through Checkout names the client it is for (shared.services.card_setup).
    setup = {"mode": "setup", "metadata": {"offsession_client_id": "1"}} if kind != "charge" else {}
    return {"type": event_type, "data": {"object": {"id": "x_1", "object": obj_type, **setup}}}


def test_every_subscribed_event_type_has_work() -> None:
    assert all(has_work(event_type, _event_of(event_type)) for event_type in EVENTS_WITH_WORK)
    assert len(set(EVENTS_WITH_WORK)) == len(EVENTS_WITH_WORK)


def test_card_setups_that_are_not_a_clients_would_only_be_stored() -> None:
    # A payment-mode session, or the SetupIntent of a card the API saved itself, names no client.
    payment_mode = {"id": "cs_1", "object": "checkout.session", "mode": "payment", "metadata": {}}
    api_setup = {"id": "seti_1", "object": "setup_intent", "metadata": {}}
    assert not has_work("checkout.session.completed", {"data": {"object": payment_mode}})
    assert not has_work("setup_intent.succeeded", {"data": {"object": api_setup}})


def test_the_types_left_out_would_only_be_stored() -> None:
    for event_type in ("payment_intent.created", "charge.succeeded", "charge.failed", "customer.created"):
        assert event_type not in EVENTS_WITH_WORK
        assert not has_work(event_type, _event_of(event_type))


def test_the_readme_lists_exactly_the_events_to_subscribe_to() -> None:
    """Operators subscribe by hand from the README's list (Operations, the webhook endpoint): it must be
    the list Connect registers."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    start = readme.index("Offsession acts on these events")
    paragraph = readme[start : readme.index("Connect registers", start)]
    listed = re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", paragraph)
    assert sorted(set(listed) - {"shared.services.webhooks"}) == sorted(EVENTS_WITH_WORK)
