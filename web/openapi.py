"""The OpenAPI 3.0.3 description of the JSON API, served at GET /api/openapi.json.

It documents what the code does, not what it might: enums and limits come from the constants the
views and shared/ check against, and tests/integration/test_openapi.py runs schemathesis against the
real app to hold the two together (schema-valid input is accepted, schema-invalid input is refused
with a 4xx in the Error shape, and every answer matches the response schemas below).

Request bodies ignore unknown fields (additionalProperties left open); response bodies are closed
(additionalProperties: false), so a field added to web/serializers.py must be added here as well.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from shared.domain.eligibility import BlockerCode
from shared.domain.ledger import InvoiceStatus
from shared.domain.models import ATTEMPT_SOURCES, INVOICE_PAYMENT_METHODS, LEDGER_METHODS
from shared.domain.money import STRIPE_MAXIMUM_AMOUNT, THREE_DECIMAL
from shared.domain.states import AttemptStatus
from web import MAX_DATABASE_ID

# Row ids are 32-bit integer columns on PostgreSQL; a larger id can name no row (answered 404 / 422).
MAX_ID = MAX_DATABASE_ID
# The longest email the client table stores.
MAX_EMAIL_LENGTH = 254
# Connect account ids are stored in 64 characters, `acct_` included.
MAX_ACCOUNT_ID_LENGTH = 64
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# The card table keeps PaymentMethod ids in 64 characters (Stripe's are about 27).
MAX_PAYMENT_METHOD_LENGTH = 64

Schema = dict[str, Any]

# No string may carry a NUL character (PostgreSQL refuses them; the API answers 422 first).
NO_NUL = r"^[^\u0000]*$"


def _trimmed(max_length: int) -> str:
    """A pattern for text that shared/ strips of surrounding whitespace, then wants 1..max_length long."""
    return rf"^\s*[^\s\u0000](?:[^\u0000]{{0,{max_length - 2}}}[^\s\u0000])?\s*$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str, **extra: Any) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def _error(description: str) -> Schema:
    return _json(_ref("Error"), description)


def _closed(properties: dict[str, Schema]) -> Schema:
    """A response object: every listed property present, nothing else."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(properties),
        "properties": properties,
    }


def _nullable(schema: Schema) -> Schema:
    if "enum" in schema:  # OpenAPI 3.0.3: an enum must list null itself for nullable to admit it
        return {**schema, "nullable": True, "enum": [*schema["enum"], None]}
    return {**schema, "nullable": True}


STRING: Schema = {"type": "string"}
TIME: Schema = {"type": "string", "format": "date-time"}
MINOR_UNITS: Schema = {
    "type": "integer",
    "description": "An amount in the currency's minor units (1000 is $10.00).",
}

# Shared errors of every /api operation, and of those that read a JSON body.
UNAUTHORIZED = _error("No or wrong `Authorization: Bearer <OFFSESSION_API_TOKEN>` (`unauthorized`).")
BAD_BODY = _error("The body is empty, not JSON, or not a JSON object (`invalid_json`).")
TOO_LARGE = _error("The body is larger than 1 MiB (`payload_too_large`).")
INVALID = _error(
    "A field is missing, of the wrong type or out of range, or a rule refuses it (`invalid`, with "
    "`field` when one field is to blame)."
)
STRIPE_ERROR = _error("Stripe did not accept the request (`stripe_error`).")


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


def _schemas() -> dict[str, Schema]:
    blocker = _closed({"code": {"type": "string", "enum": [c.value for c in BlockerCode]}, "message": STRING})
    card = _closed(
        {
            "id": {"type": "integer"},
            "client_id": {"type": "integer"},
            "payment_method": {"type": "string", "description": "The Stripe PaymentMethod id (pm_...)."},
            "brand": STRING,
            "last4": STRING,
            "exp_month": {"type": "integer", "minimum": 1, "maximum": 12},
            "exp_year": {"type": "integer"},
            "is_default": {"type": "boolean"},
        }
    )
    payment = _closed(
        {
            "id": {"type": "integer"},
            "amount": {**MINOR_UNITS, "description": "Minor units; negative for a refund."},
            "currency": STRING,
            "amount_display": STRING,
            "method": {"type": "string", "enum": list(LEDGER_METHODS)},
            "received_at": TIME,
            "reference": STRING,
            "charge_id": _nullable({"type": "string", "description": "The card charge it came from."}),
            "payment_intent_id": _nullable(STRING),
            "refund_id": _nullable(STRING),
        }
    )
    statuses = [s.value for s in AttemptStatus]
    charge = _closed(
        {
            "id": {"type": "string", "format": "uuid"},
            "invoice_id": {"type": "integer"},
            "status": {"type": "string", "enum": statuses},
            "status_label": STRING,
            "amount": MINOR_UNITS,
            "currency": STRING,
            "amount_display": STRING,
            "payment_intent_id": _nullable(STRING),
            "failure_code": _nullable(STRING),
            "decline_code": _nullable(STRING),
            "failure_message": _nullable(STRING),
            "source": {"type": "string", "enum": list(ATTEMPT_SOURCES)},
            "requested_by": STRING,
            "next_retry_at": _nullable(TIME),
            "created_at": TIME,
            "updated_at": TIME,
        }
    )
    invoice_statuses = [s.value for s in InvoiceStatus]
    invoice = _closed(
        {
            "id": {"type": "integer"},
            "number": STRING,
            "client_id": {"type": "integer"},
            "client_name": STRING,
            "currency": STRING,
            "total": MINOR_UNITS,
            "amount_paid": MINOR_UNITS,
            "amount_due": MINOR_UNITS,
            "status": {"type": "string", "enum": invoice_statuses},
            "display": _closed(
                {"total": STRING, "amount_paid": STRING, "amount_due": STRING, "status": STRING}
            ),
            "due_date": {"type": "string", "format": "date"},
            "payment_method": {"type": "string", "enum": list(INVOICE_PAYMENT_METHODS)},
            "auto_charge": {"type": "boolean"},
            "void": {"type": "boolean"},
            "description": STRING,
            "charge": _closed(
                {
                    "eligible": {"type": "boolean"},
                    "blockers": {"type": "array", "items": _ref("Blocker")},
                }
            ),
            "payments": {"type": "array", "items": _ref("Payment")},
            "charges": {"type": "array", "items": _ref("Charge")},
        }
    )
    return {
        "Error": {
            "type": "object",
            "description": "Every error answer: a stable code and words fit to show, never a stack trace.",
            "additionalProperties": False,
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "description": "A stable code, e.g. `invalid`, `not_found`."},
                "message": STRING,
                "field": {"type": "string", "description": "The request field to blame, when there is one."},
                "blockers": {
                    "type": "array",
                    "items": _ref("Blocker"),
                    "description": "Why the invoice cannot be charged (`not_chargeable` only).",
                },
            },
        },
        "Blocker": blocker,
        "Settings": _closed(
            {
                "stripe_connected": {"type": "boolean"},
                "stripe_account_id": _nullable(STRING),
                "online_card_payments_enabled": {"type": "boolean"},
                "stripe_mode": {"type": "string", "enum": ["test", "live"]},
                "updated_at": _nullable(TIME),
            }
        ),
        "SettingsUpdate": {
            "type": "object",
            "description": "Only the fields sent change (null counts as not sent, but a null "
            "`stripe_account_id` clears the account); unknown fields are ignored.",
            "properties": {
                "stripe_connected": _nullable({"type": "boolean"}),
                "stripe_account_id": _nullable(
                    {
                        "type": "string",
                        "pattern": rf"^\s*(?:acct_[A-Za-z0-9]{{1,{MAX_ACCOUNT_ID_LENGTH - 5}}})?\s*$",
                        "description": "A Connect account id (acct_...); blank: the platform account.",
                    }
                ),
                "online_card_payments_enabled": _nullable({"type": "boolean"}),
            },
        },
        "Card": card,
        "CardCreate": {
            "type": "object",
            "example": {"payment_method": "pm_card_visa"},
            "required": ["payment_method"],
            "properties": {
                "payment_method": {
                    "type": "string",
                    "pattern": rf"^\s*pm_(?:[^\u0000]{{0,{MAX_PAYMENT_METHOD_LENGTH - 4}}}[^\s\u0000])?\s*$",
                    "description": "A PaymentMethod id (e.g. `pm_card_visa`), already set up for "
                    "off-session use; it is attached as given. One Stripe does not know is a 422.",
                }
            },
        },
        "Client": _closed(
            {
                "id": {"type": "integer"},
                "name": STRING,
                "email": {"type": "string", "description": "Lowercased."},
                "stripe_customer_id": _nullable(STRING),
                "cards": {"type": "array", "items": _ref("Card")},
            }
        ),
        "ClientCreate": {
            "type": "object",
            "example": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "required": ["name", "email"],
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": _trimmed(200),
                    "description": "1 to 200 characters once surrounding whitespace is stripped.",
                },
                "email": {
                    "type": "string",
                    "maxLength": MAX_EMAIL_LENGTH,
                    "pattern": r"^\s*[^@\s\u0000]+@[^@\s\u0000]+\.[^@\s\u0000]+\s*$",
                },
            },
        },
        "Invoice": invoice,
        "InvoiceCreate": {
            "type": "object",
            "example": {
                "client_id": 1,
                "number": "INV-2026-001",
                "currency": "usd",
                "total": 12500,
                "due_date": "2026-12-31",
                "payment_method": "online_card",
                "auto_charge": True,
                "description": "Consulting, November",
            },
            "required": ["client_id", "number", "currency", "total", "due_date"],
            "properties": {
                "client_id": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_ID,
                    "example": 1,
                    "description": "An existing client (an unknown one is a 422).",
                },
                "number": {
                    "type": "string",
                    "pattern": _trimmed(64),
                    "description": "Unique; 1 to 64 characters once stripped (a used number is a 422).",
                },
                "currency": {
                    "type": "string",
                    "pattern": r"^\s*[A-Za-z]{3}\s*$",
                    "description": "An ISO 4217 code, any case, of a currency Stripe charges cards in; "
                    "another code, or a three-decimal currency ("
                    + ", ".join(sorted(THREE_DECIMAL))
                    + "), is a 422.",
                },
                "total": {**MINOR_UNITS, "minimum": 1, "maximum": STRIPE_MAXIMUM_AMOUNT},
                "due_date": {"type": "string", "format": "date"},
                "payment_method": _nullable(
                    {"type": "string", "enum": list(INVOICE_PAYMENT_METHODS), "default": "online_card"}
                ),
                "auto_charge": _nullable({"type": "boolean", "default": False}),
                "description": _nullable(
                    {
                        "type": "string",
                        "pattern": NO_NUL,
                        "default": "",
                        "description": "Stripped and cut to 500 characters.",
                    }
                ),
            },
        },
        "Payment": payment,
        "PaymentCreate": {
            "type": "object",
            "example": {
                "amount": 2500,
                "method": "bank_transfer",
                "received_at": "2026-11-20",
                "reference": "TX 81",
            },
            "required": ["amount", "method"],
            "properties": {
                "amount": {
                    **MINOR_UNITS,
                    "not": {"enum": [0]},
                    "description": "Minor units, not 0: positive money received (at most what is due, "
                    "less a card charge in flight), negative a refund (at most what was paid); "
                    "beyond either is a 422.",
                },
                "method": {"type": "string", "enum": list(LEDGER_METHODS)},
                "received_at": _nullable(
                    {
                        "type": "string",
                        "anyOf": [{"format": "date-time"}, {"format": "date"}, {"maxLength": 0}],
                        "description": "An ISO 8601 time (UTC when it has no offset) or date; "
                        "empty or null: now.",
                    }
                ),
                "reference": _nullable(
                    {
                        "type": "string",
                        "pattern": NO_NUL,
                        "default": "",
                        "description": "Cut to 200 characters.",
                    }
                ),
            },
        },
        "Charge": charge,
        "ChargeRequest": {
            "type": "object",
            "example": {"amount": 5000},
            "properties": {
                "amount": _nullable(
                    {
                        **MINOR_UNITS,
                        "minimum": 1,
                        "maximum": STRIPE_MAXIMUM_AMOUNT,
                        "description": "A part of what is due (more is a 422); null or absent: all of it.",
                    }
                )
            },
        },
        "ChargeList": _closed({"data": {"type": "array", "items": _ref("Charge")}}),
        "StripeEvent": {
            "type": "object",
            "description": "A Stripe event, verified against Stripe-Signature over the raw body.",
            "properties": {"id": STRING, "type": STRING},
        },
        "WebhookReceipt": _closed({"received": {"type": "boolean"}, "duplicate": {"type": "boolean"}}),
        "Health": _closed({"database": STRING, "broker": STRING}),
    }


def _paths() -> dict[str, Schema]:
    card_errors = {
        "402": _error(
            "The card was declined while saving it (`card_declined`) or needs the cardholder to "
            "authenticate (`authentication_required`)."
        ),
        "404": _error("No such client (`not_found`)."),
        "422": INVALID,
        "502": STRIPE_ERROR,
    }
    return {
        "/api/openapi.json": {
            "get": _operation(
                "This description",
                {"200": _json({"type": "object"}, "The OpenAPI document.")},
                tags=["meta"],
                public=True,
            )
        },
        "/api/settings": {
            "get": _operation(
                "The card-payment settings",
                {"200": _json(_ref("Settings"), "The settings.")},
                tags=["settings"],
            ),
            "put": _operation(
                "Change the card-payment settings",
                {"200": _json(_ref("Settings"), "The settings after the change."), "422": INVALID},
                tags=["settings"],
                body=_body(_ref("SettingsUpdate")),
            ),
        },
        "/api/clients": {
            "post": _operation(
                "Create a client (and its Stripe customer)",
                {
                    "201": _json(_ref("Client"), "The client."),
                    "409": _error("Another client has this email (`client_exists`): emails are unique."),
                    "422": INVALID,
                    "502": STRIPE_ERROR,
                },
                tags=["clients"],
                body=_body(_ref("ClientCreate")),
            )
        },
        "/api/clients/{client_id}": {
            "get": _operation(
                "A client with its cards",
                {"200": _json(_ref("Client"), "The client."), "404": _error("No such client (`not_found`).")},
                tags=["clients"],
                parameters=[CLIENT_ID],
            )
        },
        "/api/clients/{client_id}/cards": {
            "post": _operation(
                "Save a card",
                {
                    "201": _json(_ref("Card"), "The card; the client's first card becomes the default."),
                    **card_errors,
                },
                tags=["clients"],
                parameters=[CLIENT_ID],
                body=_body(_ref("CardCreate")),
            )
        },
        "/api/clients/{client_id}/cards/{card_id}/default": {
            "post": _operation(
                "Make a card the client's default",
                {
                    "200": _json(_ref("Card"), "The card, now the default."),
                    "404": _error("No such client, or no such card of that client (`not_found`)."),
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
                    "404": _error("No such client, or no such card of that client (`not_found`)."),
                    "502": STRIPE_ERROR,
                },
                tags=["clients"],
                parameters=[CLIENT_ID, CARD_ID],
            )
        },
        "/api/invoices": {
            "post": _operation(
                "Create an invoice",
                {"201": _json(_ref("Invoice"), "The invoice."), "422": INVALID},
                tags=["invoices"],
                body=_body(_ref("InvoiceCreate")),
            )
        },
        "/api/invoices/{invoice_id}": {
            "get": _operation(
                "An invoice with its balance, chargeability, payments and charges",
                {
                    "200": _json(_ref("Invoice"), "The invoice."),
                    "404": _error("No such invoice (`not_found`)."),
                },
                tags=["invoices"],
                parameters=[INVOICE_ID],
            )
        },
        "/api/invoices/{invoice_id}/payments": {
            "post": _operation(
                "Record a manual payment or refund",
                {
                    "201": _json(_ref("Payment"), "The ledger entry."),
                    "404": _error("No such invoice (`not_found`)."),
                    "422": INVALID,
                },
                tags=["invoices"],
                parameters=[INVOICE_ID],
                body=_body(_ref("PaymentCreate")),
            )
        },
        "/api/invoices/{invoice_id}/charges": {
            "post": _operation(
                "Charge the client's saved card",
                {
                    "202": _json(
                        _ref("Charge"),
                        "Queued: a worker charges the card. A repeat with the same Idempotency-Key and body "
                        "answers the original charge again.",
                        headers={
                            "Idempotent-Replayed": {
                                "description": "`true` when this is the stored answer to an earlier request.",
                                "schema": {"type": "string", "enum": ["true"]},
                            }
                        },
                    ),
                    "400": _error(
                        "The body is not a JSON object (`invalid_json`), or the Idempotency-Key is longer "
                        "than 255 characters (`invalid_idempotency_key`)."
                    ),
                    "404": _error("No such invoice (`not_found`)."),
                    "409": _error("The invoice cannot be charged now (`not_chargeable`, with `blockers`)."),
                    "422": _error(
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
                body=_body(_ref("ChargeRequest"), required=False),
            )
        },
        "/api/charges": {
            "get": _operation(
                "Charges, newest first",
                {"200": _json(_ref("ChargeList"), "The charges."), "422": INVALID},
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
                {"200": _json(_ref("Charge"), "The charge."), "404": _error("No such charge (`not_found`).")},
                tags=["charges"],
                parameters=[CHARGE_ID],
            )
        },
        "/api/charges/{charge_id}/cancel": {
            "post": _operation(
                "Cancel a charge",
                {
                    "200": _json(_ref("Charge"), "The charge after the cancel."),
                    "404": _error("No such charge (`not_found`)."),
                    "409": _error(
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
                    "200": _json(_ref("WebhookReceipt"), "Stored (or already stored); processed later."),
                    "400": _error(
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
                body=_body(_ref("StripeEvent")),
            )
        },
        "/healthz": {
            "get": _operation(
                "Health of the database and the broker",
                {
                    "200": _json(_ref("Health"), "Both answer (`ok`)."),
                    "503": _json(_ref("Health"), "One does not (`unavailable: <error type>`)."),
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
            "schemas": _schemas(),
        },
    }
