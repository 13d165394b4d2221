"""The event types Offsession's webhook endpoint subscribes to are exactly those processing acts on."""

from __future__ import annotations

from typing import Any

from shared.services.webhooks import EVENTS_WITH_WORK, has_work


def _event_of(event_type: str) -> dict[str, Any]:
    kind = event_type.split(".")[0]
    obj_type = {"payment_intent": "payment_intent", "refund": "refund"}.get(kind, "charge")
    return {"type": event_type, "data": {"object": {"id": "x_1", "object": obj_type}}}


def test_every_subscribed_event_type_has_work() -> None:
    assert all(has_work(event_type, _event_of(event_type)) for event_type in EVENTS_WITH_WORK)
    assert len(set(EVENTS_WITH_WORK)) == len(EVENTS_WITH_WORK)


def test_the_types_left_out_would_only_be_stored() -> None:
    for event_type in ("payment_intent.created", "charge.succeeded", "charge.failed", "customer.created"):
        assert event_type not in EVENTS_WITH_WORK
        assert not has_work(event_type, _event_of(event_type))
