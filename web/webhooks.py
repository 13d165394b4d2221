"""POST /webhooks/stripe: verify on the raw body, store once, answer 200 at once, process later."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from shared.domain.payments import WebhookPayloadError, WebhookSignatureError
from shared.log_context import bind_log_ids
from shared.services import outbox
from shared.services.stripe_connection import stored_webhook_secrets
from shared.services.webhooks import (
    DRAIN_GATHER_SECONDS,
    TASK_DRAIN_WEBHOOK_EVENTS,
    payment_intent_id_of,
    store_received_event,
)
from web.errors import error_response
from web.services import gateway, publish, runtime, session_scope

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


@bp.post("/webhooks/stripe")
def receive() -> ResponseReturnValue:
    payload = request.get_data(cache=False)
    try:
        event = _verify(payload, request.headers.get("Stripe-Signature"))
    except WebhookSignatureError as exc:
        return error_response(400, "invalid_signature", f"Stripe-Signature refused: {exc.message}")
    except WebhookPayloadError as exc:
        return error_response(400, "invalid_payload", exc.message)
    # With our mode: an event that repeats what its attempt recorded is stored processed, nothing published.
    stored = store_received_event(runtime().engine, event, livemode=gateway().livemode)
    # The request's log line names the event, its PaymentIntent and what became of it: an event stored
    # processed here is never seen by a worker, so this line is its only trace in the logs.
    outcome = ("queued" if stored.needs_processing else "stored processed") if stored.created else "duplicate"
    bind_log_ids(event_id=event["id"], payment_intent_id=payment_intent_id_of(event), webhook=outcome)
    if stored.created and stored.needs_processing:
        try:
            _request_processing(stored.id)
        except Exception as exc:  # stored already: the janitor re-drives unprocessed events
            log.warning("webhook event %s stored, not yet published: %s", event["id"], exc)
    return jsonify({"received": True, "duplicate": not stored.created}), 200


def _verify(payload: bytes, signature: str | None) -> dict[str, Any]:
    """STRIPE_WEBHOOK_SECRET's secrets first (they win, and need no database), then the secret of the
    endpoint Connect registered, read (and decrypted) only for an event they do not verify."""
    try:
        return gateway().verify_webhook(payload, signature)
    except WebhookSignatureError:
        with session_scope() as session:
            stored = stored_webhook_secrets(session, runtime().secret_box)
        if not stored:
            raise
        return gateway().verify_webhook(payload, signature, also=stored)


def _request_processing(event_row_id: int) -> None:
    """A drain in DRAIN_GATHER_SECONDS, unless one is pending already (most requests publish nothing); one
    message per event without Redis, or when Redis fails (the flag is only an optimisation)."""
    requests = runtime().drain_requests
    if requests.coalescing:
        try:
            requests.request(lambda: publish(TASK_DRAIN_WEBHOOK_EVENTS, {}, DRAIN_GATHER_SECONDS))
            return
        except redis.RedisError as exc:
            log.warning("webhook drain flag unavailable, one message for this event: %s", exc)
    publish(outbox.TASK_PROCESS_WEBHOOK_EVENT, {"event_id": event_row_id}, None)
