"""The Stripe adapter: the product's one `import stripe`, behind shared.services.ports.StripePort.

Everything here goes through `stripe.StripeClient`; nothing reads or sets the global `stripe.api_key`.
Callers get the plain dataclasses and errors of shared.domain.payments back, never SDK objects or SDK
exceptions.
"""

from __future__ import annotations

import json
from typing import Any

import stripe

from shared.adapters.stripe_calls import AccountCallback, CallObserver
from shared.adapters.stripe_cards import CardCalls
from shared.adapters.stripe_payments import PaymentCalls
from shared.adapters.stripe_wire import (
    STRIPE_NETWORK_RETRIES,
)
from shared.config import Config, check_safe
from shared.domain.payments import (
    WEBHOOK_TOLERANCE_SECONDS,
    WebhookPayloadError,
    WebhookSignatureError,
)

__all__ = ["StripeGateway", "gateway_from_config"]


class StripeGateway(CardCalls, PaymentCalls):
    """Stripe, as the product needs it: one mixin per group of calls over StripeCalls's plumbing. Every
    method that touches account objects takes `stripe_account` (a Connect account id sent as
    Stripe-Account; None = the platform account itself)."""

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
