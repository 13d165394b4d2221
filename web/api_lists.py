"""The API's list endpoints, GET /api/clients and GET /api/invoices: filters and cursor pages
(shared/services/listings.py says why a page after `starting_after` is stable while rows are inserted)."""

from __future__ import annotations

from flask import jsonify, request
from flask.typing import ResponseReturnValue

from shared.services.invoices import DUE_FILTERS, INVOICE_STATUSES
from shared.services.listings import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, clients_after, invoices_after
from shared.services.settings import get_settings
from web import openapi_schemas
from web.api import ASCII_DIGITS, bp
from web.auth import require_api_token
from web.errors import ApiError
from web.serializers import client_json, invoice_json
from web.services import session_scope

MAX_SEARCH_LENGTH = 100


def _number(name: str, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not (ASCII_DIGITS.fullmatch(raw) and len(raw) < 20 and low <= int(raw) <= high):
        raise ApiError(422, "invalid", f"{name} must be a whole number from {low} to {high}.", field=name)
    return int(raw)


def _choice(name: str, allowed: tuple[str, ...]) -> str | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if raw not in allowed:
        raise ApiError(422, "invalid", f"{name} must be one of {', '.join(allowed)}.", field=name)
    return raw


def _search() -> str | None:
    raw = request.args.get("q")
    if raw is not None and (len(raw) > MAX_SEARCH_LENGTH or "\x00" in raw):
        raise ApiError(
            422, "invalid", f"q may be at most {MAX_SEARCH_LENGTH} characters, without NUL.", field="q"
        )
    return raw


def _page_arguments() -> dict[str, int | None]:
    limit = _number("limit", 1, MAX_PAGE_LIMIT)
    return {
        "limit": DEFAULT_PAGE_LIMIT if limit is None else limit,
        "starting_after": _number("starting_after", 1, openapi_schemas.MAX_ID),
    }


@bp.get("/clients")
@require_api_token
def list_clients() -> ResponseReturnValue:
    arguments = _page_arguments()
    with session_scope() as session:
        page = clients_after(session, search=_search(), **arguments)  # type: ignore[arg-type]
        return jsonify({"data": [client_json(c) for c in page.rows], "has_more": page.has_more})


@bp.get("/invoices")
@require_api_token
def list_invoices() -> ResponseReturnValue:
    auto = _choice("auto_charge", ("true", "false"))
    filters = {
        "status": _choice("status", INVOICE_STATUSES),
        "due": _choice("due", DUE_FILTERS),
        "auto_charge": None if auto is None else auto == "true",
        "client_id": _number("client_id", 1, openapi_schemas.MAX_ID),
        "search": _search(),
    }
    arguments = _page_arguments()
    with session_scope() as session:
        settings = get_settings(session)
        page = invoices_after(session, **filters, **arguments)  # type: ignore[arg-type]
        return jsonify(
            {"data": [invoice_json(i, settings, detail=False) for i in page.rows], "has_more": page.has_more}
        )
