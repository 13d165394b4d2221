"""The Stripe adapter: the product's one `import stripe`, behind shared.services.ports.StripePort.

Everything here goes through `stripe.StripeClient`; nothing reads or sets the global `stripe.api_key`.
Callers get the plain dataclasses and errors of shared.domain.payments back, never SDK objects or SDK
exceptions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import stripe
from stripe.params import PaymentIntentListParams, RefundCreateParams

from shared.adapters.stripe_wire import (
    CARD_ONLY,
    LIST_PAGE_SIZE,
    STRIPE_API_VERSION,
    STRIPE_NETWORK_RETRIES,
    STRIPE_TIMEOUT_SECONDS,
    CardErrorSignal,
    card_details,
    error_fields,
    is_live_key,
    payment_intent_create_params,
    request_options,
    requests_client,
    translate_error,
    unix_seconds,
)
from shared.config import STRIPE_HOSTED_API_BASE, Config, ConfigError, check_safe
from shared.domain.payments import (
    WEBHOOK_TOLERANCE_SECONDS,
    CardDetails,
    CardSetupDeclined,
    CardSetupRequiresAction,
    ChargeOutcome,
    ChargeRequest,
    PaymentIntentView,
    PermanentStripeError,
    RefundView,
    RequiresAction,
    TransientStripeError,
    WebhookPayloadError,
    WebhookSignatureError,
    classify_payment_intent,
    id_of,
    outcome_from_card_error,
    payment_intent_view,
)

__all__ = ["StripeGateway", "gateway_from_config"]

# Called with the Stripe-Account a request is made for (None = the platform itself).
AccountCallback = Callable[[str | None], None]
# Told of every API call once it is over: (operation, outcome, seconds); shared.adapters.metrics records it.
CallObserver = Callable[[str, str, float], None]


# --------------------------------------------------------------------------------------------------
# The gateway
# --------------------------------------------------------------------------------------------------


class StripeGateway:
    """Stripe, as the product needs it. Every method that touches account objects takes `stripe_account`
    (a Connect account id sent as Stripe-Account; None = the platform account itself)."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None,
        webhook_secret: str | Sequence[str],
        *,
        max_network_retries: int = STRIPE_NETWORK_RETRIES,
        timeout_seconds: float = STRIPE_TIMEOUT_SECONDS,
        before_request: AccountCallback | None = None,
        before_request_max_seconds: float = 0.0,
        on_rate_limited: AccountCallback | None = None,
        http_client: stripe.HTTPClient | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        """`max_network_retries`: the SDK's own retries (same key) on connection errors, 409 and 5xx;
        StripeClient's default is 0, so it is always explicit here. `before_request` runs before each API
        call (not each SDK retry) and may block, at most `before_request_max_seconds`, to keep a shared
        rate budget; `on_rate_limited` is told of
        every 429. `http_client` replaces the SDK's HTTP transport (tests record requests with it). `on_call`
        is told each call's operation, outcome and duration (metrics); it must not raise."""
        if not api_key:
            raise ConfigError("STRIPE_API_KEY is empty")
        base = api_base.rstrip("/") if api_base else None
        if is_live_key(api_key) and base not in (None, STRIPE_HOSTED_API_BASE):
            raise ConfigError(
                f"STRIPE_API_KEY is a live key but STRIPE_API_BASE is {base!r}; "
                "a live key may only talk to Stripe itself (unset STRIPE_API_BASE)."
            )
        if max_network_retries < 0:
            raise ValueError("max_network_retries must be >= 0")
        self.api_base = base
        self.livemode = is_live_key(api_key)
        self.max_network_retries = max_network_retries
        self.timeout_seconds = timeout_seconds
        self.before_request_max_seconds = before_request_max_seconds
        # Every secret an endpoint of ours signs with (several while one is being rotated).
        self._webhook_secrets = (
            (webhook_secret,) if isinstance(webhook_secret, str) else tuple(webhook_secret)
        )
        self._before_request = before_request
        self._on_rate_limited = on_rate_limited
        self._on_call = on_call
        self._client = stripe.StripeClient(
            api_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses={"api": base} if base else None,
            max_network_retries=max_network_retries,
            http_client=http_client or requests_client(timeout_seconds),
        )

    @property
    def longest_call_seconds(self) -> float:
        """The longest one call can take before it returns or raises: the wait in `before_request`, then
        every try the SDK makes (each bounded by the HTTP timeout) and the SDK's backoff between them."""
        tries = self.max_network_retries + 1
        backoff = self.max_network_retries * stripe.HTTPClient.MAX_DELAY
        return self.before_request_max_seconds + tries * self.timeout_seconds + backoff

    # ---- plumbing ----------------------------------------------------------------------------------

    def _call(
        self,
        operation_name: str,
        stripe_account: str | None,
        operation: Callable[[], Any],
        *,
        card_errors: bool = False,
    ) -> dict[str, Any]:
        """Run one API call and return the object as a plain dict; translate every SDK error.
        `operation_name` (the gateway method's name) labels the call's metrics."""
        if self._before_request is not None:
            self._before_request(stripe_account)
        started = time.monotonic()
        outcome = "error"  # anything the SDK did not wrap
        try:
            result = operation()
            outcome = "ok"
        except stripe.CardError as exc:
            outcome = "card_error"
            if card_errors:
                raise CardErrorSignal(error_fields(exc), exc.request_id) from exc
            raise translate_error(exc) from exc
        except stripe.StripeError as exc:
            translated = translate_error(exc)
            outcome = "permanent"
            if isinstance(translated, TransientStripeError):
                outcome = "rate_limited" if translated.rate_limited else "transient"
            if (
                isinstance(translated, TransientStripeError)
                and translated.rate_limited
                and self._on_rate_limited is not None
            ):
                self._on_rate_limited(stripe_account)
            raise translated from exc
        finally:
            if self._on_call is not None:
                self._on_call(operation_name, outcome, time.monotonic() - started)
        # A raw request's JSON is a dict already; an SDK object is turned into one.
        return result if isinstance(result, dict) else result.to_dict()

    # ---- customers and cards -----------------------------------------------------------------------

    def ensure_customer(
        self,
        name: str,
        email: str,
        *,
        idempotency_key: str,
        existing_id: str | None = None,
        stripe_account: str | None = None,
    ) -> str:
        """The id of a live Stripe customer for this client: `existing_id` while it still exists, else a
        new one created under `idempotency_key` (e.g. `offsession:customer:<client id>`)."""
        key = idempotency_key
        if existing_id:
            try:
                customer = self._call(
                    "ensure_customer",
                    stripe_account,
                    lambda: self._client.v1.customers.retrieve(
                        existing_id, options=request_options(stripe_account=stripe_account)
                    ),
                )
            except PermanentStripeError as exc:
                if exc.code != "resource_missing":
                    raise
                customer = {"deleted": True}
            if not customer.get("deleted"):
                return existing_id
            # Under the original key Stripe would replay the creation of the customer that is now gone.
            key = f"{idempotency_key}:replaces:{existing_id}"
        created = self._call(
            "ensure_customer",
            stripe_account,
            lambda: self._client.v1.customers.create(
                {"name": name, "email": email},
                options=request_options(key, stripe_account),
            ),
        )
        return str(created["id"])

    def attach_card(
        self,
        customer_id: str,
        payment_method_token: str,
        *,
        idempotency_key: str,
        make_default: bool = True,
        stripe_account: str | None = None,
    ) -> CardDetails:
        """Save a card for off-session use through a confirmed SetupIntent (usage=off_session): the card is
        checked, and authenticated if its issuer asks, while it is being saved rather than at the first
        off-session charge. Raises CardSetupDeclined, or CardSetupRequiresAction when the cardholder must
        authenticate on-session (Stripe.js with its client_secret, then card_from_setup_intent)."""
        try:
            setup = self._call(
                "attach_card",
                stripe_account,
                lambda: self._client.v1.setup_intents.create(
                    {
                        "customer": customer_id,
                        "payment_method": payment_method_token,
                        "allowed_payment_method_types": CARD_ONLY["allowed_payment_method_types"],
                        "usage": "off_session",
                        "confirm": True,
                    },
                    options=request_options(idempotency_key, stripe_account),
                ),
                card_errors=True,
            )
        except CardErrorSignal as signal:
            error = signal.error
            raise CardSetupDeclined(
                error.get("message") or "The card was declined while saving it",
                code=error.get("code"),
                decline_code=error.get("decline_code"),
                setup_intent_id=id_of(error.get("setup_intent")),
            ) from None
        return self._card_from_setup(setup, make_default=make_default, stripe_account=stripe_account)

    def attach_payment_method(
        self,
        customer_id: str,
        payment_method: str,
        *,
        idempotency_key: str,
        make_default: bool = True,
        stripe_account: str | None = None,
    ) -> CardDetails:
        """Attach a PaymentMethod the caller already holds (set up client-side, or a test token) to the
        customer, without a SetupIntent's card check. The API's path: whoever collected the card ran
        the cardholder through its setup; the Client Zone's own path is `attach_card`."""
        try:
            attached = self._call(
                "attach_payment_method",
                stripe_account,
                lambda: self._client.v1.payment_methods.attach(
                    payment_method,
                    {"customer": customer_id},
                    options=request_options(idempotency_key, stripe_account),
                ),
                card_errors=True,
            )
        except CardErrorSignal as signal:
            error = signal.error
            raise CardSetupDeclined(
                error.get("message") or "The card was declined while saving it",
                code=error.get("code"),
                decline_code=error.get("decline_code"),
            ) from None
        if make_default:
            self.set_default_card(customer_id, attached["id"], stripe_account=stripe_account)
        return card_details(attached)

    def card_from_setup_intent(
        self, setup_intent_id: str, *, make_default: bool = True, stripe_account: str | None = None
    ) -> CardDetails:
        """The saved card of a SetupIntent the cardholder has since authenticated (after
        CardSetupRequiresAction was handed to Stripe.js). Raises the same errors as attach_card while
        the SetupIntent has not succeeded."""
        setup = self._call(
            "card_from_setup_intent",
            stripe_account,
            lambda: self._client.v1.setup_intents.retrieve(
                setup_intent_id, options=request_options(stripe_account=stripe_account)
            ),
        )
        return self._card_from_setup(setup, make_default=make_default, stripe_account=stripe_account)

    def _card_from_setup(
        self, setup: Mapping[str, Any], *, make_default: bool, stripe_account: str | None
    ) -> CardDetails:
        status = setup.get("status")
        payment_method_id = id_of(setup.get("payment_method"))
        customer_id = id_of(setup.get("customer"))
        if status == "requires_action":
            next_action = setup.get("next_action") or {}
            raise CardSetupRequiresAction(
                "The card issuer requires the cardholder to authenticate before the card can be saved",
                setup_intent_id=setup.get("id"),
                client_secret=setup.get("client_secret"),
                payment_method_id=payment_method_id,
                next_action_type=next_action.get("type"),
            )
        if status == "requires_payment_method":
            error = setup.get("last_setup_error") or {}
            raise CardSetupDeclined(
                error.get("message") or "The card could not be saved",
                code=error.get("code"),
                decline_code=error.get("decline_code"),
                setup_intent_id=setup.get("id"),
            )
        if status != "succeeded" or payment_method_id is None or customer_id is None:
            raise PermanentStripeError(
                f"SetupIntent {setup.get('id')} is in status {status!r} without a card saved to a customer",
                kind="unexpected_response",
            )
        payment_method = self._call(
            "card_from_setup",
            stripe_account,
            lambda: self._client.v1.payment_methods.retrieve(
                payment_method_id, options=request_options(stripe_account=stripe_account)
            ),
        )
        if make_default:
            self.set_default_card(customer_id, payment_method_id, stripe_account=stripe_account)
        return card_details(payment_method)

    def set_default_card(
        self, customer_id: str, payment_method_id: str, *, stripe_account: str | None = None
    ) -> None:
        """customer.invoice_settings.default_payment_method: the card the dashboard and Stripe show as
        default. Setting a value is naturally idempotent, so the SDK's own key is enough here."""
        self._call(
            "set_default_card",
            stripe_account,
            lambda: self._client.v1.customers.update(
                customer_id,
                {"invoice_settings": {"default_payment_method": payment_method_id}},
                options=request_options(stripe_account=stripe_account),
            ),
        )

    def detach_card(self, payment_method_id: str, *, stripe_account: str | None = None) -> None:
        """Detach a saved card. Detaching one that is already detached counts as done."""
        try:
            self._call(
                "detach_card",
                stripe_account,
                lambda: self._client.v1.payment_methods.detach(
                    payment_method_id, options=request_options(stripe_account=stripe_account)
                ),
            )
        except PermanentStripeError as exc:
            if exc.kind != "invalid_request" or exc.code == "resource_missing":
                raise
            # Stripe answers 400 when the card is no longer attached; check rather than trust the words.
            payment_method = self._call(
                "detach_card",
                stripe_account,
                lambda: self._client.v1.payment_methods.retrieve(
                    payment_method_id, options=request_options(stripe_account=stripe_account)
                ),
            )
            if payment_method.get("customer") is not None:
                raise

    # ---- charges -----------------------------------------------------------------------------------

    def create_offsession_payment_intent(self, request: ChargeRequest) -> ChargeOutcome:
        """Create and confirm an off-session card PaymentIntent (payment_intent_create_params). Replaying
        the same request returns the first answer (declines included) for as long as Stripe keeps the key
        (≥ 24 h). Raises TransientStripeError (outcome unknown: replay) or PermanentStripeError."""
        params = payment_intent_create_params(request)
        options = request_options(request.idempotency_key, request.stripe_account)
        try:
            # The hot path of a batch: the response's JSON as it is, not built into StripeObjects only to
            # be turned back into dicts (a tenth of the call's CPU). Same encoding, same errors, same
            # network retries as payment_intents.create: raw_request goes through the same requestor.
            data = self._call(
                "create_offsession_payment_intent",
                request.stripe_account,
                lambda: self._client.raw_request("post", "/v1/payment_intents", **params, **options).data,
                card_errors=True,
            )
        except CardErrorSignal as signal:
            return outcome_from_card_error(signal.error)
        return classify_payment_intent(payment_intent_view(data))

    def retrieve_payment_intent(
        self, payment_intent_id: str, *, stripe_account: str | None = None
    ) -> PaymentIntentView:
        data = self._call(
            "retrieve_payment_intent",
            stripe_account,
            lambda: self._client.v1.payment_intents.retrieve(
                payment_intent_id, options=request_options(stripe_account=stripe_account)
            ),
        )
        return payment_intent_view(data)

    def confirm_on_session(
        self,
        payment_intent_id: str,
        payment_method_id: str,
        return_url: str,
        *,
        idempotency_key: str | None = None,
        stripe_account: str | None = None,
    ) -> ChargeOutcome:
        """Confirm again with the client present (off_session=false): usually RequiresAction, whose view
        carries the client_secret and the bank's page (`next_action_redirect_url`, see
        authentication_page) that brings the client back to `return_url`. A RequiresAction without such a
        page (an action only Stripe.js can run) is a PermanentStripeError: this product has no Stripe.js."""
        try:
            data = self._call(
                "confirm_on_session",
                stripe_account,
                lambda: self._client.v1.payment_intents.confirm(
                    payment_intent_id,
                    {"payment_method": payment_method_id, "off_session": False, "return_url": return_url},
                    options=request_options(idempotency_key, stripe_account),
                ),
                card_errors=True,
            )
        except CardErrorSignal as signal:
            return outcome_from_card_error(signal.error)
        outcome = classify_payment_intent(payment_intent_view(data))
        if isinstance(outcome, RequiresAction) and outcome.payment_intent.next_action_redirect_url is None:
            raise PermanentStripeError(
                f"Stripe asked for an authentication step ({outcome.payment_intent.next_action_type}) that "
                "only Stripe.js can run, and gave no page to send the client to",
                kind="unexpected_response",
                payment_intent_id=outcome.payment_intent_id,
            )
        return outcome

    def cancel_payment_intent(
        self,
        payment_intent_id: str,
        *,
        idempotency_key: str | None = None,
        stripe_account: str | None = None,
    ) -> PaymentIntentView:
        data = self._call(
            "cancel_payment_intent",
            stripe_account,
            lambda: self._client.v1.payment_intents.cancel(
                payment_intent_id, options=request_options(idempotency_key, stripe_account)
            ),
        )
        return payment_intent_view(data)

    def _list_payment_intents(
        self, params: PaymentIntentListParams, stripe_account: str | None
    ) -> Iterator[PaymentIntentView]:
        # Paged by hand rather than auto_paging_iter so each page passes through before_request and
        # the error translation.
        starting_after: str | None = None
        while True:
            page_params: PaymentIntentListParams = {**params, "limit": LIST_PAGE_SIZE}
            if starting_after is not None:
                page_params["starting_after"] = starting_after

            def list_page(page_params: PaymentIntentListParams = page_params) -> Any:
                return self._client.v1.payment_intents.list(
                    page_params, options=request_options(stripe_account=stripe_account)
                )

            page = self._call("list_payment_intents", stripe_account, list_page)
            items = page.get("data") or []
            for item in items:
                yield payment_intent_view(item)
            if not page.get("has_more") or not items:
                return
            starting_after = items[-1]["id"]

    def find_attempt_payment_intents(
        self,
        customer_id: str,
        charge_attempt_id: str,
        *,
        created_gte: datetime,
        stripe_account: str | None = None,
    ) -> list[PaymentIntentView]:
        """PaymentIntents carrying metadata.charge_attempt_id. Lists by customer (strongly consistent)
        and matches client-side: search could miss a PaymentIntent created in the last minute(s)."""
        params: PaymentIntentListParams = {
            "customer": customer_id,
            "created": {"gte": unix_seconds(created_gte)},
        }
        return [
            view
            for view in self._list_payment_intents(params, stripe_account)
            if view.metadata.get("charge_attempt_id") == charge_attempt_id
        ]

    def list_payment_intents_created(
        self, created_gte: datetime, created_lt: datetime, *, stripe_account: str | None = None
    ) -> Iterator[PaymentIntentView]:
        """Every PaymentIntent created in [created_gte, created_lt), newest first (daily reconciliation)."""
        params: PaymentIntentListParams = {
            "created": {"gte": unix_seconds(created_gte), "lt": unix_seconds(created_lt)}
        }
        return self._list_payment_intents(params, stripe_account)

    def refund(
        self,
        payment_intent_id: str,
        *,
        idempotency_key: str,
        amount: int | None = None,
        stripe_account: str | None = None,
    ) -> RefundView:
        """Refund all (amount=None) or part of a succeeded PaymentIntent."""
        params: RefundCreateParams = {"payment_intent": payment_intent_id}
        if amount is not None:
            if amount <= 0:
                raise ValueError("a refund amount must be positive")
            params["amount"] = amount
        data = self._call(
            "refund",
            stripe_account,
            lambda: self._client.v1.refunds.create(
                params, options=request_options(idempotency_key, stripe_account)
            ),
        )
        return RefundView(
            id=data["id"],
            status=str(data.get("status")),
            amount=int(data.get("amount") or 0),
            currency=str(data.get("currency") or ""),
            payment_intent_id=id_of(data.get("payment_intent")),
        )

    # ---- webhooks ----------------------------------------------------------------------------------

    def verify_webhook(
        self, payload: bytes, sig_header: str | None, *, tolerance: int = WEBHOOK_TOLERANCE_SECONDS
    ) -> dict[str, Any]:
        """Check Stripe-Signature over the raw body (HMAC-SHA256, timestamp within `tolerance` seconds)
        and return the event as a plain dict."""
        try:
            body = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WebhookPayloadError("the webhook body is not UTF-8 text") from exc
        refusal: stripe.SignatureVerificationError | None = None
        for secret in self._webhook_secrets:
            try:
                # Tolerance passed explicitly: verify_header's own default (None) skips the replay check.
                stripe.WebhookSignature.verify_header(body, sig_header, secret, tolerance)
            except stripe.SignatureVerificationError as exc:
                refusal = exc
                continue
            break
        else:
            message = refusal.user_message if refusal is not None else None
            raise WebhookSignatureError(message or "invalid Stripe-Signature") from refusal
        try:
            event = json.loads(body)
        except json.JSONDecodeError as exc:
            raise WebhookPayloadError(f"the webhook body is not JSON: {exc}") from exc
        if not isinstance(event, dict) or not isinstance(event.get("id"), str) or "type" not in event:
            raise WebhookPayloadError("the webhook body is not a Stripe event (no id/type)")
        return event


def gateway_from_config(
    config: Config,
    *,
    max_network_retries: int = STRIPE_NETWORK_RETRIES,
    before_request: AccountCallback | None = None,
    before_request_max_seconds: float = 0.0,
    on_rate_limited: AccountCallback | None = None,
    on_call: CallObserver | None = None,
) -> StripeGateway:
    """The gateway the processes use. Refuses a live key aimed anywhere but Stripe (ConfigError)."""
    check_safe(config)
    return StripeGateway(
        config.stripe_api_key,
        config.stripe_api_base,
        config.stripe_webhook_secrets,
        max_network_retries=max_network_retries,
        before_request=before_request,
        before_request_max_seconds=before_request_max_seconds,
        on_rate_limited=on_rate_limited,
        on_call=on_call,
    )
