"""What the domain knows of a card payment at Stripe, whoever asks Stripe (shared.services.ports.StripePort).

- a charge is asked for with a `ChargeRequest` and ends as one of the `ChargeOutcome` dataclasses
  (`Succeeded`, `CardDeclined`, `AuthenticationRequired`, `RequiresAction`, `Processing`, `Canceled`);
- a PaymentIntent, as Stripe renders it, is read into a `PaymentIntentView`, and `classify_payment_intent`
  says which outcome it stands for (the worker, the webhooks and the janitor all ask it);
- a failure to get an answer is a `TransientStripeError` (retry later with the same idempotency key and
  the same parameters) or a `PermanentStripeError` (a bug or a configuration problem: alert, don't retry).

Pure: no I/O, no SDK. Stripe's JSON comes in as plain mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

REQUIRED_CHARGE_METADATA = ("invoice_id", "invoice_number", "charge_attempt_id")
MAX_IDEMPOTENCY_KEY_LENGTH = 255  # Stripe rejects longer keys
# How old a webhook's signed timestamp may be (Stripe's own libraries default to five minutes).
WEBHOOK_TOLERANCE_SECONDS = 300

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class GatewayError(Exception):
    """Base of every error this module raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only details survive pickling (Celery results, multiprocessing).
        return (self.__class__, (self.message,), self.__dict__)


class TransientStripeError(GatewayError):
    """No trustworthy answer (connection error, 5xx, 409, 429): retry with the same key and params."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        rate_limited: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        self.request_id = request_id
        # True for 429 (rate_limit and lock_timeout): the caller should slow its request budget.
        self.rate_limited = rate_limited


PermanentErrorKind = Literal[
    "invalid_request", "authentication", "permission", "idempotency", "card", "api", "unexpected_response"
]


class PermanentStripeError(GatewayError):
    """Stripe refused the request itself; retrying cannot help. A bug or misconfiguration to alert on."""

    def __init__(
        self,
        message: str,
        *,
        kind: PermanentErrorKind = "api",
        code: str | None = None,
        param: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        payment_intent_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.param = param
        self.http_status = http_status
        self.request_id = request_id
        self.payment_intent_id = payment_intent_id

    @property
    def is_idempotency_error(self) -> bool:
        """The same idempotency key was reused with other parameters (or on another endpoint)."""
        return self.kind == "idempotency"


class CardSetupDeclined(GatewayError):
    """The card could not be saved: the check Stripe runs on setup declined it (every decline test card
    except pm_card_chargeCustomerFail fails here, not at the charge)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        decline_code: str | None = None,
        setup_intent_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.decline_code = decline_code
        self.setup_intent_id = setup_intent_id


class CardSetupRequiresAction(GatewayError):
    """The issuer wants the cardholder to authenticate before the card is saved (on-session, Stripe.js)."""

    def __init__(
        self,
        message: str,
        *,
        setup_intent_id: str | None = None,
        client_secret: str | None = None,
        payment_method_id: str | None = None,
        next_action_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.setup_intent_id = setup_intent_id
        self.client_secret = client_secret
        self.payment_method_id = payment_method_id
        self.next_action_type = next_action_type


class WebhookSignatureError(GatewayError):
    """Missing, malformed, wrong or stale Stripe-Signature: the request did not come from Stripe."""


class WebhookPayloadError(GatewayError):
    """Correctly signed, but the body is not a JSON Stripe event."""


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentError:
    """A PaymentIntent's `last_payment_error` (or the error of a 402), as far as the product uses it."""

    type: str | None
    code: str | None
    decline_code: str | None
    message: str | None
    advice_code: str | None
    network_advice_code: str | None


@dataclass(frozen=True)
class PaymentIntentView:
    id: str
    status: str
    amount: int
    amount_received: int
    currency: str
    customer: str | None
    payment_method: str | None
    metadata: dict[str, str]
    latest_charge: str | None
    last_payment_error: PaymentError | None
    created: int
    client_secret: str | None
    next_action_type: str | None
    next_action_redirect_url: str | None
    livemode: bool


@dataclass(frozen=True)
class CardDetails:
    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class RefundView:
    id: str
    status: str
    amount: int
    currency: str
    payment_intent_id: str | None


@dataclass(frozen=True)
class ChargeRequest:
    """Everything an off-session charge sends. Keep it (or what builds it) stored with the attempt:
    every retry must send byte-identical parameters under the same idempotency key."""

    amount: int
    currency: str
    customer_id: str
    payment_method_id: str
    metadata: dict[str, str]
    description: str
    idempotency_key: str
    stripe_account: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or self.amount <= 0:
            raise ValueError(f"amount must be a positive integer in minor units, got {self.amount!r}")
        if len(self.currency) != 3 or not self.currency.isalpha():
            raise ValueError(f"currency must be a 3-letter ISO code, got {self.currency!r}")
        if not self.customer_id or not self.payment_method_id:
            raise ValueError("customer_id and payment_method_id are required")
        if not self.idempotency_key or len(self.idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise ValueError(f"idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters")
        missing = [key for key in REQUIRED_CHARGE_METADATA if not self.metadata.get(key)]
        if missing:
            raise ValueError(f"metadata is missing {', '.join(missing)}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()):
            raise ValueError("metadata keys and values must be strings")
        # A sorted private copy: later changes to the caller's dict cannot alter what a retry sends.
        object.__setattr__(self, "metadata", dict(sorted(self.metadata.items())))


# The end state of a create/confirm, or of a PaymentIntent read back later.
@dataclass(frozen=True)
class _PaymentIntentState:
    payment_intent: PaymentIntentView

    @property
    def payment_intent_id(self) -> str:
        return self.payment_intent.id


@dataclass(frozen=True)
class Succeeded(_PaymentIntentState):
    pass


@dataclass(frozen=True)
class CardDeclined:
    code: str | None
    decline_code: str | None
    message: str | None
    payment_intent_id: str | None
    advice_code: str | None = None
    network_advice_code: str | None = None
    payment_intent: PaymentIntentView | None = None


@dataclass(frozen=True)
class AuthenticationRequired:
    """Off-session the issuer wants 3DS: the client has to come back on-session (confirm_on_session)."""

    payment_intent_id: str | None
    message: str | None
    payment_intent: PaymentIntentView | None = None


@dataclass(frozen=True)
class RequiresAction(_PaymentIntentState):
    """The PaymentIntent waits for the customer (next_action / client_secret on the view)."""


@dataclass(frozen=True)
class Processing(_PaymentIntentState):
    pass


@dataclass(frozen=True)
class Canceled(_PaymentIntentState):
    pass


ChargeOutcome = Succeeded | CardDeclined | AuthenticationRequired | RequiresAction | Processing | Canceled


# --------------------------------------------------------------------------------------------------
# Reading Stripe's objects
# --------------------------------------------------------------------------------------------------


def id_of(value: Any) -> str | None:
    """An expandable field is an id string, an expanded object, or null."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        object_id = value.get("id")
        return object_id if isinstance(object_id, str) else None
    return str(value)


def _payment_error(error: Mapping[str, Any] | None) -> PaymentError | None:
    if not error:
        return None
    return PaymentError(
        type=error.get("type"),
        code=error.get("code"),
        decline_code=error.get("decline_code"),
        message=error.get("message"),
        advice_code=error.get("advice_code"),
        network_advice_code=error.get("network_advice_code"),
    )


def authentication_page(next_action: Mapping[str, Any] | None) -> str | None:
    """The page a browser is sent to for 3-D Secure, from a PaymentIntent's `next_action`.

    A server-side confirm with a `return_url` (and without `use_stripe_sdk`) answers `redirect_to_url`,
    whose `url` is "The URL you must redirect your customer to in order to authenticate the payment"
    (the PaymentIntent object's reference; the `use_stripe_sdk` confirm parameter is documented as the
    opt-in for "confirming server-side and using Stripe.js, iOS, or Android client-side SDKs to handle the
    next actions"). Should Stripe answer `use_stripe_sdk` all the same, its 3-D Secure redirect variant
    carries Stripe's hosted authentication page in `stripe_js`, which a plain redirect can also reach."""
    if not next_action:
        return None
    if next_action.get("type") == "redirect_to_url":
        url = (next_action.get("redirect_to_url") or {}).get("url")
        return url if isinstance(url, str) and url else None
    if next_action.get("type") == "use_stripe_sdk":
        sdk = next_action.get("use_stripe_sdk") or {}
        url = sdk.get("stripe_js") if sdk.get("type") == "three_d_secure_redirect" else None
        return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None
    return None


def payment_intent_view(data: Mapping[str, Any]) -> PaymentIntentView:
    """A PaymentIntent as the API renders it (a dict: `to_dict()` of the SDK object, or JSON)."""
    next_action = data.get("next_action") or {}
    return PaymentIntentView(
        id=data["id"],
        status=data["status"],
        amount=int(data.get("amount") or 0),
        amount_received=int(data.get("amount_received") or 0),
        currency=str(data.get("currency") or ""),
        customer=id_of(data.get("customer")),
        payment_method=id_of(data.get("payment_method")),
        metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
        latest_charge=id_of(data.get("latest_charge")),
        last_payment_error=_payment_error(data.get("last_payment_error")),
        created=int(data.get("created") or 0),
        client_secret=data.get("client_secret"),
        next_action_type=next_action.get("type"),
        next_action_redirect_url=authentication_page(next_action),
        livemode=bool(data.get("livemode", False)),
    )


def _is_authentication_required(error: PaymentError | Mapping[str, Any] | None) -> bool:
    if error is None:
        return False
    if isinstance(error, PaymentError):
        codes = (error.code, error.decline_code)
    else:
        codes = (error.get("code"), error.get("decline_code"))
    return "authentication_required" in codes


def classify_payment_intent(view: PaymentIntentView) -> ChargeOutcome:
    """What a PaymentIntent's current state means for the charge (create, confirm, janitor, webhooks)."""
    status = view.status
    if status == "succeeded":
        return Succeeded(view)
    if status == "processing":
        return Processing(view)
    if status == "requires_action":
        return RequiresAction(view)
    if status == "canceled":
        return Canceled(view)
    if status == "requires_payment_method":
        error = view.last_payment_error
        if _is_authentication_required(error):
            return AuthenticationRequired(
                payment_intent_id=view.id, message=error.message if error else None, payment_intent=view
            )
        return CardDeclined(
            code=error.code if error else None,
            decline_code=error.decline_code if error else None,
            message=error.message if error else None,
            payment_intent_id=view.id,
            advice_code=error.advice_code if error else None,
            network_advice_code=error.network_advice_code if error else None,
            payment_intent=view,
        )
    # requires_confirmation / requires_capture: we never create such PaymentIntents.
    raise PermanentStripeError(
        f"PaymentIntent {view.id} is in status {status!r}, which an off-session card charge never reaches",
        kind="unexpected_response",
        payment_intent_id=view.id,
    )


def outcome_from_card_error(error: Mapping[str, Any]) -> ChargeOutcome:
    """A 402 card_error on create/confirm (its `error` object): Stripe embeds the PaymentIntent in its state
    after the decline."""
    embedded = error.get("payment_intent")
    view = payment_intent_view(embedded) if isinstance(embedded, Mapping) and embedded.get("id") else None
    payment_intent_id = view.id if view else None
    if _is_authentication_required(error):
        return AuthenticationRequired(
            payment_intent_id=payment_intent_id, message=error.get("message"), payment_intent=view
        )
    return CardDeclined(
        code=error.get("code"),
        decline_code=error.get("decline_code"),
        message=error.get("message"),
        payment_intent_id=payment_intent_id,
        advice_code=error.get("advice_code"),
        network_advice_code=error.get("network_advice_code"),
        payment_intent=view,
    )
