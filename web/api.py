"""The JSON API (described by web/openapi.py). Views parse, call shared/, answer; the rules live there."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, date, datetime
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from shared.domain.ledger import LedgerError
from shared.domain.models import ChargeAttempt, Client, Invoice
from shared.domain.payments import (
    CardSetupDeclined,
    CardSetupRequiresAction,
    GatewayError,
    PermanentStripeError,
)
from shared.domain.states import AttemptStatus
from shared.services import charge_requests, clients, invoices, payments
from shared.services.charge_actions import ChargeNotCancelable, cancel_charge
from shared.services.charge_requests import ChargeRequestError, NotChargeable, load_invoice_for_charge
from shared.services.idempotent_requests import IdempotencyKeyReused, IdempotentRequest, StoredAnswer
from shared.services.settings import SettingsError, get_settings, update_settings
from web import openapi, openapi_schemas
from web.auth import require_api_token
from web.errors import ApiError
from web.serializers import card_json, charge_json, client_json, invoice_json, payment_json, settings_json
from web.services import gateway, session_scope, sessions, unit_of_work

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api")

# Charge ids are lowercase UUIDs (shared.domain.models.new_uuid); anything else names no charge.
CHARGE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ASCII_DIGITS = re.compile(r"[0-9]+")


# ---- parsing ---------------------------------------------------------------------------------------


def json_body(*, optional: bool = False) -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "invalid_json", "The request needs a JSON object body.")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurd nesting
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    return body


def field(
    body: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    *,
    required: bool = True,
    default: Any = None,
) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise ApiError(422, "invalid", f"{name} is required.", field=name)
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; an amount of `true` is not.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        words = {"str": "a string", "int": "an integer", "bool": "true or false", "dict": "an object"}
        names = " or ".join(words.get(k.__name__, k.__name__) for k in kinds)
        raise ApiError(422, "invalid", f"{name} must be {names}.", field=name)
    if isinstance(value, str) and not _storable(value):
        raise ApiError(
            422, "invalid", f"{name} may not contain NUL characters or unpaired surrogates.", field=name
        )
    return value


def _storable(text: str) -> bool:
    """PostgreSQL refuses NUL in text and every database refuses what is not UTF-8 (a lone surrogate
    escaped in JSON decodes to one): refused here, they would be a 500 from the database."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def in_id_range(value: int) -> bool:
    """Row ids are 32-bit integer columns: an id from a body beyond them names no row, and would overflow
    the query (SQLite) or be refused (PostgreSQL)."""
    return 1 <= value <= openapi_schemas.MAX_ID


def parse_date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ApiError(422, "invalid", f"{name} must be a date like 2026-12-31.", field=name) from exc


def parse_time(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # In UTC now, as it is stored: 9999-12-31T23:00-05:00 does not fit, and must say so as a 422.
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise ApiError(422, "invalid", f"{name} must be a date or an ISO 8601 time.", field=name) from exc


def actor() -> str:
    return str(g.get("actor", "api"))


def _404(what: str) -> ApiError:
    return ApiError(404, "not_found", f"No such {what}.")


@bp.url_value_preprocessor
def _charge_ids_that_name_a_row(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A charge id that is no UUID is a 404 before the database sees it (PostgreSQL refuses a NUL in it).
    Integer ids are bounded by the app's <int:> converter (web.DatabaseIdConverter)."""
    charge_id = (values or {}).get("charge_id")
    if charge_id is not None and not CHARGE_ID.fullmatch(charge_id):
        raise _404("charge")


def _gateway_error(exc: GatewayError) -> ApiError:
    if isinstance(exc, CardSetupDeclined):
        return ApiError(402, "card_declined", exc.message)
    if isinstance(exc, CardSetupRequiresAction):
        return ApiError(402, "authentication_required", exc.message)
    return ApiError(502, "stripe_error", f"Stripe did not accept the request: {exc.message}")


# ---- the description --------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    # Public on purpose: it describes the API and opens nothing.
    return jsonify(openapi.document())


# ---- settings --------------------------------------------------------------------------------------


@bp.get("/settings")
@require_api_token
def get_settings_view() -> ResponseReturnValue:
    with session_scope() as session:
        return jsonify(
            settings_json(get_settings(session), stripe_mode=current_app.config["OFFSESSION"].stripe_mode)
        )


@bp.put("/settings")
@require_api_token
def put_settings() -> ResponseReturnValue:
    body = json_body()
    account = field(body, "stripe_account_id", str, required=False)
    if account is not None and len(account.strip()) > openapi_schemas.MAX_ACCOUNT_ID_LENGTH:
        # The pattern in shared.services.settings allows one character more than the column holds.
        raise ApiError(
            422,
            "invalid",
            f"stripe_account_id may be at most {openapi_schemas.MAX_ACCOUNT_ID_LENGTH} characters.",
            field="stripe_account_id",
        )
    try:
        with session_scope() as session:
            settings = update_settings(
                session,
                actor(),
                stripe_connected=field(body, "stripe_connected", bool, required=False),
                stripe_account_id=account,
                clear_stripe_account="stripe_account_id" in body and body["stripe_account_id"] is None,
                online_card_payments_enabled=field(
                    body, "online_card_payments_enabled", bool, required=False
                ),
            )
            return jsonify(settings_json(settings, stripe_mode=current_app.config["OFFSESSION"].stripe_mode))
    except SettingsError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc


# ---- clients and cards -------------------------------------------------------------------------------


def _client(session: Session, client_id: int) -> Client:
    client = session.scalars(
        select(Client).where(Client.id == client_id).options(selectinload(Client.cards))
    ).one_or_none()
    if client is None:
        raise _404("client")
    return client


@bp.post("/clients")
@require_api_token
def create_client() -> ResponseReturnValue:
    body = json_body()
    name, email = field(body, "name", str), field(body, "email", str)
    # The column holds 254 characters, and shared.services.admins.normalize_email checks no length.
    if max(len(email), len(email.strip().lower())) > openapi_schemas.MAX_EMAIL_LENGTH:
        raise ApiError(
            422,
            "invalid",
            f"email may be at most {openapi_schemas.MAX_EMAIL_LENGTH} characters.",
            field="email",
        )
    try:
        client_id = clients.create_client(sessions(), gateway(), name=name, email=email, actor=actor())
    except clients.ClientExists as exc:
        raise ApiError(409, "client_exists", str(exc), field="email") from exc
    except clients.ClientError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc
    except GatewayError as exc:
        raise _gateway_error(exc) from exc
    with session_scope() as session:
        return jsonify(client_json(_client(session, client_id))), 201


@bp.get("/clients/<int:client_id>")
@require_api_token
def get_client(client_id: int) -> ResponseReturnValue:
    with session_scope() as session:
        return jsonify(client_json(_client(session, client_id)))


def _card_call(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a card operation of shared.services.clients, answering its errors in the API's shape."""
    try:
        return call(sessions(), gateway(), *args, actor=actor(), **kwargs)
    except clients.NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    except clients.ClientError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc
    except GatewayError as exc:
        if call is clients.add_card and _unknown_payment_method(exc):
            raise ApiError(422, "invalid", exc.message, field="payment_method") from exc
        raise _gateway_error(exc) from exc


def _unknown_payment_method(exc: GatewayError) -> bool:
    """Stripe knows no such PaymentMethod: the caller's mistake (422), not Stripe failing (502). It is the
    attach URL's own object (no param); a missing customer would name its parameter."""
    return (
        isinstance(exc, PermanentStripeError)
        and exc.code == "resource_missing"
        and exc.param in (None, "payment_method")
    )


@bp.post("/clients/<int:client_id>/cards")
@require_api_token
def add_card(client_id: int) -> ResponseReturnValue:
    token = field(json_body(), "payment_method", str)
    if len(token.strip()) > openapi_schemas.MAX_PAYMENT_METHOD_LENGTH:
        # No PaymentMethod id is that long, and the card table keeps 64 characters.
        raise ApiError(
            422,
            "invalid",
            f"payment_method may be at most {openapi_schemas.MAX_PAYMENT_METHOD_LENGTH} characters.",
            field="payment_method",
        )
    return jsonify(card_json(_card_call(clients.add_card, client_id, token))), 201


@bp.post("/clients/<int:client_id>/cards/<int:card_id>/default")
@require_api_token
def make_default_card(client_id: int, card_id: int) -> ResponseReturnValue:
    return jsonify(card_json(_card_call(clients.set_default_card, client_id, card_id)))


@bp.delete("/clients/<int:client_id>/cards/<int:card_id>")
@require_api_token
def delete_card(client_id: int, card_id: int) -> ResponseReturnValue:
    _card_call(clients.delete_card, client_id, card_id)
    return "", 204


# ---- invoices ------------------------------------------------------------------------------------------


def _invoice(session: Session, invoice_id: int, *, lock: bool = False) -> Invoice:
    invoice = load_invoice_for_charge(session, invoice_id, lock=lock)
    if invoice is None:
        raise _404("invoice")
    return invoice


@bp.post("/invoices")
@require_api_token
def create_invoice() -> ResponseReturnValue:
    body = json_body()
    client_id = field(body, "client_id", int)
    due = parse_date(field(body, "due_date", str), "due_date")
    try:
        with session_scope() as session:
            client = session.get(Client, client_id) if in_id_range(client_id) else None
            if client is None:
                raise ApiError(422, "invalid", f"No client with id {client_id}.", field="client_id")
            invoice = invoices.create_invoice(
                session,
                client,
                number=field(body, "number", str),
                currency=field(body, "currency", str),
                total=field(body, "total", int),
                due_date=due,
                payment_method=field(body, "payment_method", str, required=False, default="online_card"),
                auto_charge=field(body, "auto_charge", bool, required=False, default=False),
                description=field(body, "description", str, required=False, default=""),
                actor=actor(),
            )
            invoice = _invoice(session, invoice.id)
            return jsonify(invoice_json(invoice, get_settings(session))), 201
    except invoices.InvoiceError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc


@bp.get("/invoices/<int:invoice_id>")
@require_api_token
def get_invoice(invoice_id: int) -> ResponseReturnValue:
    with session_scope() as session:
        return jsonify(invoice_json(_invoice(session, invoice_id), get_settings(session)))


@bp.post("/invoices/<int:invoice_id>/payments")
@require_api_token
def record_payment(invoice_id: int) -> ResponseReturnValue:
    body = json_body()
    received = field(body, "received_at", str, required=False)
    try:
        with session_scope() as session:
            invoice = _invoice(session, invoice_id, lock=True)
            payment = payments.record_payment(
                session,
                invoice,
                amount=field(body, "amount", int),
                method=field(body, "method", str),
                received_at=parse_time(received, "received_at") if received else None,
                reference=field(body, "reference", str, required=False, default="")[:200],
                recorded_by=actor(),
            )
            return jsonify(payment_json(payment, invoice.currency)), 201
    except LedgerError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc


# ---- charges -------------------------------------------------------------------------------------------


@bp.post("/invoices/<int:invoice_id>/charges")
@require_api_token
def request_charge(invoice_id: int) -> ResponseReturnValue:
    """202 with the queued charge at once; a worker does the charging."""
    body = json_body(optional=True)
    amount = field(body, "amount", int, required=False)
    key = (request.headers.get("Idempotency-Key") or "").strip() or None
    if key is not None and len(key) > openapi_schemas.MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key may be at most 255 characters.")
    if key is not None and not _storable(key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key may not contain NUL characters.")
    idempotent = IdempotentRequest(key, {"invoice": invoice_id, "body": body}) if key else None
    try:
        with unit_of_work() as uow:
            if idempotent and (earlier := idempotent.earlier_answer(uow.session)) is not None:
                return _replayed(earlier)
            invoice = _invoice(uow.session, invoice_id, lock=True)
            # Again under the invoice lock: a concurrent request with this key may have just finished.
            if idempotent and (earlier := idempotent.earlier_answer(uow.session)) is not None:
                return _replayed(earlier)
            attempt = charge_requests.request_charge(
                uow, invoice, source="admin", requested_by=actor(), amount=amount
            )
            answer = charge_json(attempt)
            if idempotent:
                idempotent.remember(uow.session, 202, answer)
    except IdempotencyKeyReused as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc)) from exc
    except NotChargeable as exc:
        raise ApiError(409, "not_chargeable", str(exc), blockers=[b.as_dict() for b in exc.blockers]) from exc
    except ChargeRequestError as exc:
        raise ApiError(422, "invalid", str(exc), field="amount") from exc
    except IntegrityError:
        # Only the Idempotency-Key's record can clash at commit (request_charge flushed the attempt): a
        # concurrent request with the same key won the race, so answer as it did.
        if idempotent is None:
            raise
        with session_scope() as session:
            earlier = idempotent.earlier_answer(session)
        if earlier is None:
            raise
        return _replayed(earlier)
    return jsonify(answer), 202


def _replayed(earlier: StoredAnswer) -> ResponseReturnValue:
    response = jsonify(earlier.body)
    response.headers["Idempotent-Replayed"] = "true"
    return response, earlier.status


@bp.get("/charges/<charge_id>")
@require_api_token
def get_charge(charge_id: str) -> ResponseReturnValue:
    with session_scope() as session:
        attempt = session.get(ChargeAttempt, charge_id)
        if attempt is None:
            raise _404("charge")
        return jsonify(charge_json(attempt))


@bp.get("/charges")
@require_api_token
def list_charges() -> ResponseReturnValue:
    query = select(ChargeAttempt).order_by(ChargeAttempt.created_at.desc(), ChargeAttempt.id)
    status = request.args.get("status")
    if status:
        if status not in {s.value for s in AttemptStatus}:
            raise ApiError(
                422, "invalid", f"status must be one of {', '.join(s.value for s in AttemptStatus)}."
            )
        query = query.where(ChargeAttempt.status == status)
    invoice_id = request.args.get("invoice_id")
    if invoice_id:
        # ASCII digits only (str.isdigit() passes '²', which int() refuses), few enough for int().
        number = int(invoice_id) if ASCII_DIGITS.fullmatch(invoice_id) and len(invoice_id) < 100 else -1
        if not 0 <= number <= openapi_schemas.MAX_ID:
            raise ApiError(422, "invalid", f"invoice_id must be a number from 0 to {openapi_schemas.MAX_ID}.")
        query = query.where(ChargeAttempt.invoice_id == number)
    try:
        limit = min(max(int(request.args.get("limit", 100)), 1), 500)
    except ValueError as exc:
        raise ApiError(422, "invalid", "limit must be a number.") from exc
    with session_scope() as session:
        return jsonify({"data": [charge_json(a) for a in session.scalars(query.limit(limit))]})


@bp.post("/charges/<charge_id>/cancel")
@require_api_token
def cancel(charge_id: str) -> ResponseReturnValue:
    try:
        cancel_charge(sessions(), gateway(), charge_id, actor=actor())
    except LookupError as exc:
        raise _404("charge") from exc
    except ChargeNotCancelable as exc:
        raise ApiError(409, "not_cancelable", str(exc)) from exc
    except GatewayError as exc:
        raise _gateway_error(exc) from exc
    with session_scope() as session:
        return jsonify(charge_json(session.get_one(ChargeAttempt, charge_id)))
