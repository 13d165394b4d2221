"""What goes over the wire to Stripe, for shared.adapters.stripe_gateway: the pinned API version, the
parameters of a charge in a fixed order, per-request options, the HTTP transport, and the SDK's errors
read back into shared.domain.payments' errors. With the gateway, the product's only `import stripe`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import requests
import stripe
from requests.adapters import HTTPAdapter

from shared.domain.payments import (
    CardDetails,
    ChargeRequest,
    GatewayError,
    PermanentErrorKind,
    PermanentStripeError,
    TransientStripeError,
    id_of,
)

# The Stripe API version every request is made at (sent as Stripe-Version): the one the installed stripe
# SDK is generated for, whose parameter types describe what this module sends. pyproject.toml bounds the
# SDK to its major; moving either is one deliberate change, and tests/shared/adapters/test_stripe_gateway.py
# fails until both agree. Changes that matter at this version: docs.stripe.com/changelog/endive/2026-09-30.
STRIPE_API_VERSION = "2026-10-28.endive"

# How a PaymentIntent or SetupIntent is restricted to cards at STRIPE_API_VERSION. payment_method_types
# was removed in 2026-09-30.endive (400 payment_method_types_no_longer_supported); its replacement,
# allowed_payment_method_types (added in 2026-07-29.dahlia), keeps the intent card-only whatever the
# Dashboard enables, so no confirm ever needs a return_url for a redirecting method.
CARD_ONLY: dict[str, Any] = {"allowed_payment_method_types": ["card"]}

LIST_PAGE_SIZE = 100  # Stripe's maximum page size for list endpoints

# One request's HTTP timeout, and how many times the SDK sends it again (same key) after a connection
# error, a 409 or a 5xx. Together they bound how long a call can take (StripeGateway.longest_call_seconds),
# which bounds how long a worker may keep a charge's lease alive (shared.services.leases).
STRIPE_TIMEOUT_SECONDS = 30.0
STRIPE_NETWORK_RETRIES = 2


class CardErrorSignal(Exception):
    """Internal: a 402 card_error, handed to the methods that know what a decline means for them."""

    def __init__(self, error: Mapping[str, Any], request_id: str | None) -> None:
        super().__init__(error.get("message"))
        self.error = error
        self.request_id = request_id


# --------------------------------------------------------------------------------------------------
# Parameters, errors, options
# --------------------------------------------------------------------------------------------------


def payment_intent_create_params(request: ChargeRequest) -> dict[str, Any]:
    """An off-session charge's parameters, in a fixed order, so the SDK encodes the same request to the same
    bytes."""
    return {
        "amount": request.amount,
        "currency": request.currency.lower(),
        "customer": request.customer_id,
        "payment_method": request.payment_method_id,
        "off_session": True,
        "confirm": True,
        **CARD_ONLY,
        "metadata": dict(request.metadata),  # a copy, already sorted by key
        "description": request.description,
    }


def error_fields(exc: stripe.StripeError) -> dict[str, Any]:
    # stripe 16 keeps the body's fields on `exc.error` (RateLimitError.code is None; decline_code lives here).
    return exc.error.to_dict() if exc.error is not None else {}


def translate_error(exc: stripe.StripeError) -> GatewayError:
    """Map an SDK exception (other than CardError) to a domain error."""
    fields = error_fields(exc)
    message = fields.get("message") or exc.user_message or exc.__class__.__name__
    code = fields.get("code") or exc.code
    status = exc.http_status
    request_id = exc.request_id
    if isinstance(exc, stripe.RateLimitError):
        return TransientStripeError(
            message, code=code, http_status=status, request_id=request_id, rate_limited=True
        )
    if isinstance(exc, stripe.APIConnectionError):
        return TransientStripeError(message, code=code, http_status=status, request_id=request_id)
    kind: PermanentErrorKind
    if isinstance(exc, stripe.IdempotencyError):
        kind = "idempotency"
    elif isinstance(exc, stripe.InvalidRequestError):
        kind = "invalid_request"
    elif isinstance(exc, stripe.AuthenticationError):
        kind = "authentication"
    elif isinstance(exc, stripe.PermissionError):
        kind = "permission"
    elif isinstance(exc, stripe.CardError):
        kind = "card"
    elif isinstance(exc, stripe.APIError):
        # 409 (incl. idempotency_key_in_use), 5xx, and unreadable answers (status None or 2xx with a
        # garbled body): the request may or may not have run, so replaying the same key is the way out.
        if status is None or status == 409 or status >= 500 or status < 400:
            return TransientStripeError(message, code=code, http_status=status, request_id=request_id)
        kind = "api"
    else:
        kind = "api"
    embedded = fields.get("payment_intent")
    return PermanentStripeError(
        message,
        kind=kind,
        code=code,
        param=fields.get("param"),
        http_status=status,
        request_id=request_id,
        payment_intent_id=id_of(embedded),
    )


def card_details(payment_method: Mapping[str, Any]) -> CardDetails:
    card = payment_method.get("card") or {}
    return CardDetails(
        payment_method_id=str(payment_method["id"]),
        brand=str(card.get("brand") or "unknown"),
        last4=str(card.get("last4") or ""),
        exp_month=int(card.get("exp_month") or 0),
        exp_year=int(card.get("exp_year") or 0),
    )


def unix_seconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("use a timezone-aware datetime; a naive one is ambiguous")
    return int(moment.timestamp())


def request_options(
    idempotency_key: str | None = None, stripe_account: str | None = None
) -> stripe.RequestOptions:
    # Always per-request options, never params: inside params the SDK would send them as form fields.
    options: stripe.RequestOptions = {}
    if idempotency_key is not None:
        options["idempotency_key"] = idempotency_key
    if stripe_account is not None:
        options["stripe_account"] = stripe_account
    return options


# Keep-alive connections to Stripe kept per process: one per thread that calls at once (the charges
# worker runs 64), so no thread opens a fresh TLS connection for want of a pooled one.
STRIPE_HTTP_POOL_SIZE = 100


def requests_client(timeout_seconds: float) -> stripe.RequestsClient:
    """The SDK's requests transport. With no proxy in the environment it gets one requests.Session that
    does not read the environment again on every request (with `trust_env`, requests scans os.environ
    for proxies and looks up ~/.netrc per call: about a twentieth of a charge's CPU). Nothing is lost:
    the SDK passes its own CA bundle, and a .netrc entry would only have replaced the API key's
    Authorization header. With a proxy configured, the SDK's own per-thread sessions read it."""
    if urllib.request.getproxies():
        return stripe.RequestsClient(timeout=timeout_seconds)
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=STRIPE_HTTP_POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return stripe.RequestsClient(timeout=timeout_seconds, session=session)


def is_live_key(api_key: str) -> bool:
    return api_key.startswith(("sk_live_", "rk_live_"))
