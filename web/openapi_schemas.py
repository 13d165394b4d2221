"""The building blocks of the OpenAPI description (web/openapi.py): the limits the views check, small
schema helpers, and the component schemas of every JSON body the API answers with."""

from __future__ import annotations

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


def trimmed(max_length: int) -> str:
    """A pattern for text that shared/ strips of surrounding whitespace, then wants 1..max_length long."""
    return rf"^\s*[^\s\u0000](?:[^\u0000]{{0,{max_length - 2}}}[^\s\u0000])?\s*$"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema, description: str, **extra: Any) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def error(description: str) -> Schema:
    return json_content(ref("Error"), description)


def closed(properties: dict[str, Schema]) -> Schema:
    """A response object: every listed property present, nothing else."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(properties),
        "properties": properties,
    }


def nullable(schema: Schema) -> Schema:
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


def schemas() -> dict[str, Schema]:
    blocker = closed({"code": {"type": "string", "enum": [c.value for c in BlockerCode]}, "message": STRING})
    card = closed(
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
    payment = closed(
        {
            "id": {"type": "integer"},
            "amount": {**MINOR_UNITS, "description": "Minor units; negative for a refund."},
            "currency": STRING,
            "amount_display": STRING,
            "method": {"type": "string", "enum": list(LEDGER_METHODS)},
            "received_at": TIME,
            "reference": STRING,
            "charge_id": nullable({"type": "string", "description": "The card charge it came from."}),
            "payment_intent_id": nullable(STRING),
            "refund_id": nullable(STRING),
        }
    )
    statuses = [s.value for s in AttemptStatus]
    charge = closed(
        {
            "id": {"type": "string", "format": "uuid"},
            "invoice_id": {"type": "integer"},
            "status": {"type": "string", "enum": statuses},
            "status_label": STRING,
            "amount": MINOR_UNITS,
            "currency": STRING,
            "amount_display": STRING,
            "payment_intent_id": nullable(STRING),
            "failure_code": nullable(STRING),
            "decline_code": nullable(STRING),
            "failure_message": nullable(STRING),
            "source": {"type": "string", "enum": list(ATTEMPT_SOURCES)},
            "requested_by": STRING,
            "next_retry_at": nullable(TIME),
            "created_at": TIME,
            "updated_at": TIME,
        }
    )
    invoice_statuses = [s.value for s in InvoiceStatus]
    invoice = closed(
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
            "display": closed(
                {"total": STRING, "amount_paid": STRING, "amount_due": STRING, "status": STRING}
            ),
            "due_date": {"type": "string", "format": "date"},
            "payment_method": {"type": "string", "enum": list(INVOICE_PAYMENT_METHODS)},
            "auto_charge": {"type": "boolean"},
            "void": {"type": "boolean"},
            "description": STRING,
            "charge": closed(
                {
                    "eligible": {"type": "boolean"},
                    "blockers": {"type": "array", "items": ref("Blocker")},
                }
            ),
            "payments": {"type": "array", "items": ref("Payment")},
            "charges": {"type": "array", "items": ref("Charge")},
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
                    "items": ref("Blocker"),
                    "description": "Why the invoice cannot be charged (`not_chargeable` only).",
                },
            },
        },
        "Blocker": blocker,
        "Settings": closed(
            {
                "stripe_connected": {"type": "boolean"},
                "stripe_account_id": nullable(STRING),
                "online_card_payments_enabled": {"type": "boolean"},
                "stripe_mode": {"type": "string", "enum": ["test", "live"]},
                "updated_at": nullable(TIME),
            }
        ),
        "SettingsUpdate": {
            "type": "object",
            "description": "Only the fields sent change (null counts as not sent, but a null "
            "`stripe_account_id` clears the account); unknown fields are ignored.",
            "properties": {
                "stripe_connected": nullable({"type": "boolean"}),
                "stripe_account_id": nullable(
                    {
                        "type": "string",
                        "pattern": rf"^\s*(?:acct_[A-Za-z0-9]{{1,{MAX_ACCOUNT_ID_LENGTH - 5}}})?\s*$",
                        "description": "A Connect account id (acct_...); blank: the platform account.",
                    }
                ),
                "online_card_payments_enabled": nullable({"type": "boolean"}),
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
        "Client": closed(
            {
                "id": {"type": "integer"},
                "name": STRING,
                "email": {"type": "string", "description": "Lowercased."},
                "stripe_customer_id": nullable(STRING),
                "cards": {"type": "array", "items": ref("Card")},
            }
        ),
        "ClientCreate": {
            "type": "object",
            "example": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "required": ["name", "email"],
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": trimmed(200),
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
                    "pattern": trimmed(64),
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
                "payment_method": nullable(
                    {"type": "string", "enum": list(INVOICE_PAYMENT_METHODS), "default": "online_card"}
                ),
                "auto_charge": nullable({"type": "boolean", "default": False}),
                "description": nullable(
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
                "received_at": nullable(
                    {
                        "type": "string",
                        "anyOf": [{"format": "date-time"}, {"format": "date"}, {"maxLength": 0}],
                        "description": "An ISO 8601 time (UTC when it has no offset) or date; "
                        "empty or null: now.",
                    }
                ),
                "reference": nullable(
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
                "amount": nullable(
                    {
                        **MINOR_UNITS,
                        "minimum": 1,
                        "maximum": STRIPE_MAXIMUM_AMOUNT,
                        "description": "A part of what is due (more is a 422); null or absent: all of it.",
                    }
                )
            },
        },
        "ChargeList": closed({"data": {"type": "array", "items": ref("Charge")}}),
        "StripeEvent": {
            "type": "object",
            "description": "A Stripe event, verified against Stripe-Signature over the raw body.",
            "properties": {"id": STRING, "type": STRING},
        },
        "WebhookReceipt": closed({"received": {"type": "boolean"}, "duplicate": {"type": "boolean"}}),
        "Health": closed({"database": STRING, "broker": STRING}),
    }
