"""The OpenAPI 3.0.3 description of the JSON API, served at GET /api/openapi.json.

It documents what the code does, not what it might: enums and limits come from the constants the
views and shared/ check against, and tests/web/test_openapi.py runs schemathesis against the
real app to hold the two together (schema-valid input is accepted, schema-invalid input is refused
with a 4xx in the Error shape, and every answer matches the response schemas below).

Request bodies ignore unknown fields (additionalProperties left open); response bodies are closed
(additionalProperties: false), so a field added to web/serializers.py must be added here as well.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from shared.domain.states import AttemptStatus
from web.openapi_schemas import (
    MAX_ID,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    Schema,
    error,
    json_content,
    ref,
    schemas,
)

UNAUTHORIZED = error("No or wrong `Authorization: Bearer <OFFSESSION_API_TOKEN>` (`unauthorized`).")
BAD_BODY = error("The body is empty, not JSON, or not a JSON object (`invalid_json`).")
TOO_LARGE = error("The body is larger than 1 MiB (`payload_too_large`).")
INVALID = error(
    "A field is missing, of the wrong type or out of range, or a rule refuses it (`invalid`, with "
    "`field` when one field is to blame)."
)
STRIPE_ERROR = error("Stripe did not accept the request (`stripe_error`).")


def _id_parameter(name: str, what: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what}'s id.",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID, "example": 1},
    }


CLIENT_ID = _id_parameter("client_id", "client")
CARD_ID = _id_parameter("card_id", "card")
INVOICE_ID = _id_parameter("invoice_id", "invoice")
CHARGE_ID: Schema = {
    "name": "charge_id",
    "in": "path",
    "required": True,
    "description": "The charge's id (a UUID, lowercase).",
    "schema": {"type": "string", "format": "uuid"},
}


def _body(schema: Schema, *, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    responses: dict[str, Schema],
    *,
    tags: list[str],
    parameters: list[Schema] | None = None,
    body: Schema | None = None,
    public: bool = False,
) -> Schema:
    """An operation; those with a body also answer 400 and 413, those behind the token 401."""
    operation: Schema = {"summary": summary, "tags": tags}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
        responses.setdefault("400", BAD_BODY)
        responses.setdefault("413", TOO_LARGE)
    if public:
        operation["security"] = []
    else:
        responses.setdefault("401", UNAUTHORIZED)
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def _paths() -> dict[str, Schema]:
    card_errors = {
        "402": error(
            "The card was declined while saving it (`card_declined`) or needs the cardholder to "
            "authenticate (`authentication_required`)."
        ),
        "404": error("No such client (`not_found`)."),
        "422": INVALID,
        "502": STRIPE_ERROR,
    }
    return {
        "/api/openapi.json": {
            "get": _operation(
                "This description",
                {"200": json_content({"type": "object"}, "The OpenAPI document.")},
                tags=["meta"],
                public=True,
            )
        },
        "/api/settings": {
            "get": _operation(
                "The card-payment settings",
                {"200": json_content(ref("Settings"), "The settings.")},
                tags=["settings"],
            ),
            "put": _operation(
                "Change the card-payment settings",
                {"200": json_content(ref("Settings"), "The settings after the change."), "422": INVALID},
                tags=["settings"],
                body=_body(ref("SettingsUpdate")),
            ),
        },
        "/api/clients": {
            "post": _operation(
                "Create a client (and its Stripe customer)",
                {
                    "201": json_content(ref("Client"), "The client."),
                    "409": error("Another client has this email (`client_exists`): emails are unique."),
                    "422": INVALID,
                    "502": STRIPE_ERROR,
                },
                tags=["clients"],
                body=_body(ref("ClientCreate")),
            )
        },
        "/api/clients/{client_id}": {
            "get": _operation(
                "A client with its cards",
                {
                    "200": json_content(ref("Client"), "The client."),
                    "404": error("No such client (`not_found`)."),
                },
                tags=["clients"],
                parameters=[CLIENT_ID],
            )
        },
        "/api/clients/{client_id}/cards": {
            "post": _operation(
                "Save a card",
                {
                    "201": json_content(
                        ref("Card"), "The card; the client's first card becomes the default."
                    ),
                    **card_errors,
                },
                tags=["clients"],
                parameters=[CLIENT_ID],
                body=_body(ref("CardCreate")),
            )
        },
        "/api/clients/{client_id}/cards/{card_id}/default": {
            "post": _operation(
                "Make a card the client's default",
                {
                    "200": json_content(ref("Card"), "The card, now the default."),
                    "404": error("No such client, or no such card of that client (`not_found`)."),
                    "502": STRIPE_ERROR,
                },
                tags=["clients"],
                parameters=[CLIENT_ID, CARD_ID],
            )
        },
        "/api/clients/{client_id}/cards/{card_id}": {
            "delete": _operation(
                "Delete a card",
                {
                    "204": {
                        "description": "Deleted; a deleted default is replaced by the newest other card."
                    },
                    "404": error("No such client, or no such card of that client (`not_found`)."),
                    "502": STRIPE_ERROR,
                },
                tags=["clients"],
                parameters=[CLIENT_ID, CARD_ID],
            )
        },
        "/api/invoices": {
            "post": _operation(
                "Create an invoice",
                {"201": json_content(ref("Invoice"), "The invoice."), "422": INVALID},
                tags=["invoices"],
                body=_body(ref("InvoiceCreate")),
            )
        },
        "/api/invoices/{invoice_id}": {
            "get": _operation(
                "An invoice with its balance, chargeability, payments and charges",
                {
                    "200": json_content(ref("Invoice"), "The invoice."),
                    "404": error("No such invoice (`not_found`)."),
                },
                tags=["invoices"],
                parameters=[INVOICE_ID],
            )
        },
        "/api/invoices/{invoice_id}/payments": {
            "post": _operation(
                "Record a manual payment or refund",
                {
                    "201": json_content(ref("Payment"), "The ledger entry."),
                    "404": error("No such invoice (`not_found`)."),
                    "422": INVALID,
                },
                tags=["invoices"],
                parameters=[INVOICE_ID],
                body=_body(ref("PaymentCreate")),
            )
        },
        "/api/invoices/{invoice_id}/charges": {
            "post": _operation(
                "Charge the client's saved card",
                {
                    "202": json_content(
                        ref("Charge"),
                        "Queued: a worker charges the card. A repeat with the same Idempotency-Key and body "
                        "answers the original charge again.",
                        headers={
                            "Idempotent-Replayed": {
                                "description": "`true` when this is the stored answer to an earlier request.",
                                "schema": {"type": "string", "enum": ["true"]},
                            }
                        },
                    ),
                    "400": error(
                        "The body is not a JSON object (`invalid_json`), or the Idempotency-Key is longer "
                        "than 255 characters (`invalid_idempotency_key`)."
                    ),
                    "404": error("No such invoice (`not_found`)."),
                    "409": error("The invoice cannot be charged now (`not_chargeable`, with `blockers`)."),
                    "422": error(
                        "A bad amount (`invalid`, field `amount`), or an Idempotency-Key already used for "
                        "another request (`idempotency_key_reused`)."
                    ),
                },
                tags=["charges"],
                parameters=[
                    INVOICE_ID,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Makes a retry safe: the same key and body answer the first "
                        "charge again. Surrounding whitespace is stripped; blank means none.",
                        "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
                    },
                ],
                body=_body(ref("ChargeRequest"), required=False),
            )
        },
        "/api/charges": {
            "get": _operation(
                "Charges, newest first",
                {"200": json_content(ref("ChargeList"), "The charges."), "422": INVALID},
                tags=["charges"],
                parameters=[
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,
                        "description": "Only charges in this status (empty: any).",
                        "schema": {"type": "string", "enum": [s.value for s in AttemptStatus]},
                    },
                    {
                        "name": "invoice_id",
                        "in": "query",
                        "required": False,
                        "allowEmptyValue": True,
                        "description": "Only the charges of this invoice (empty: any).",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "At most this many (default 100); clamped to 1..500.",
                        "schema": {"type": "integer", "default": 100},
                    },
                ],
            )
        },
        "/api/charges/{charge_id}": {
            "get": _operation(
                "A charge",
                {
                    "200": json_content(ref("Charge"), "The charge."),
                    "404": error("No such charge (`not_found`)."),
                },
                tags=["charges"],
                parameters=[CHARGE_ID],
            )
        },
        "/api/charges/{charge_id}/cancel": {
            "post": _operation(
                "Cancel a charge",
                {
                    "200": json_content(ref("Charge"), "The charge after the cancel."),
                    "404": error("No such charge (`not_found`)."),
                    "409": error(
                        "Only queued charges that never reached Stripe and charges waiting for the client "
                        "can be canceled (`not_cancelable`)."
                    ),
                    "502": STRIPE_ERROR,
                },
                tags=["charges"],
                parameters=[CHARGE_ID],
            )
        },
        "/webhooks/stripe": {
            "post": _operation(
                "Receive a Stripe event",
                {
                    "200": json_content(
                        ref("WebhookReceipt"), "Stored (or already stored); processed later."
                    ),
                    "400": error(
                        "Missing, wrong or stale Stripe-Signature (`invalid_signature`), or a signed body "
                        "that is not a Stripe event (`invalid_payload`)."
                    ),
                },
                tags=["webhooks"],
                public=True,
                parameters=[
                    {
                        "name": "Stripe-Signature",
                        "in": "header",
                        "required": True,
                        "description": "`t=<unix time>,v1=<HMAC-SHA256 of t.body with the endpoint secret>`.",
                        "schema": {"type": "string"},
                    }
                ],
                body=_body(ref("StripeEvent")),
            )
        },
        "/healthz": {
            "get": _operation(
                "Health of the database and the broker",
                {
                    "200": json_content(ref("Health"), "Both answer (`ok`)."),
                    "503": json_content(ref("Health"), "One does not (`unavailable: <error type>`)."),
                },
                tags=["meta"],
                public=True,
            )
        },
    }


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The OpenAPI document (built once; the views serialise it)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Offsession JSON API",
            "version": "1",
            "description": (
                "Off-session card charges for invoices through Stripe. JSON in and out; amounts are "
                'integers in minor units. Every error is `{"error": code, "message": words}` (plus '
                "`field` or `blockers` where said), never a stack trace. Unknown fields in request bodies "
                "are ignored; a field sent as null counts as absent."
            ),
        },
        "security": [{"bearer": []}],
        "tags": [
            {"name": name} for name in ("settings", "clients", "invoices", "charges", "webhooks", "meta")
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The value of OFFSESSION_API_TOKEN.",
                }
            },
            "schemas": schemas(),
        },
    }
