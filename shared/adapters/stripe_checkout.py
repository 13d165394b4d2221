"""Stripe's hosted Checkout page in setup mode: how a client saves a card for later without our pages ever
seeing it (docs.stripe.com/payments/checkout/save-and-reuse). No card form, no Stripe.js: the browser
goes to the session's `url`, Stripe's page collects the card (and its bank's authentication, when the
issuer asks for it at setup) and sends the browser back to our success or cancel URL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.adapters.stripe_calls import StripeCalls
from shared.adapters.stripe_wire import CARD_ONLY, card_details, request_options
from shared.domain.payments import CardSetupView, id_of

__all__ = ["CheckoutCalls", "card_setup_view"]


def card_setup_view(session: Mapping[str, Any] | None, setup: Mapping[str, Any] | None) -> CardSetupView:
    """A Checkout Session (or None) and its SetupIntent (expanded, with its PaymentMethod expanded, or
    None) as plain values."""
    setup = setup or {}
    payment_method = setup.get("payment_method")
    card = card_details(payment_method) if isinstance(payment_method, Mapping) else None
    owner = session if session is not None else setup
    return CardSetupView(
        session_id=session.get("id") if session is not None else None,
        url=session.get("url") if session is not None else None,
        session_status=session.get("status") if session is not None else None,
        setup_intent_id=setup.get("id") or (id_of(session.get("setup_intent")) if session else None),
        setup_status=setup.get("status"),
        customer_id=id_of(owner.get("customer")) or id_of(setup.get("customer")),
        metadata={str(k): str(v) for k, v in (owner.get("metadata") or {}).items()},
        card=card,
        card_customer_id=id_of(payment_method.get("customer"))
        if isinstance(payment_method, Mapping)
        else None,
        livemode=bool(owner.get("livemode")),
    )


class CheckoutCalls(StripeCalls):
    """Checkout Sessions in setup mode: create one for a customer, read one back with its card."""

    def create_card_setup_session(
        self,
        customer_id: str,
        *,
        success_url: str,
        cancel_url: str,
        metadata: Mapping[str, str],
        idempotency_key: str,
        stripe_account: str | None = None,
    ) -> CardSetupView:
        """A Checkout Session (mode=setup) that saves a card to `customer_id` for off-session use. Card
        only (allowed_payment_method_types, so no currency is needed at this API version); `metadata`
        goes on the session and on its SetupIntent, so either one names whose card it is.
        `success_url` may carry {CHECKOUT_SESSION_ID}, which Stripe replaces with the session's id."""
        session = self._call(
            "create_card_setup_session",
            stripe_account,
            lambda: self._client.v1.checkout.sessions.create(
                {
                    "mode": "setup",
                    "customer": customer_id,
                    "allowed_payment_method_types": CARD_ONLY["allowed_payment_method_types"],
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "metadata": dict(metadata),
                    "setup_intent_data": {"metadata": dict(metadata)},
                },
                options=request_options(idempotency_key, stripe_account),
            ),
        )
        return card_setup_view(session, None)

    def retrieve_card_setup_session(
        self, session_id: str, *, stripe_account: str | None = None
    ) -> CardSetupView:
        """The session as it is now, with its SetupIntent and that SetupIntent's card."""
        session = self._call(
            "retrieve_card_setup_session",
            stripe_account,
            lambda: self._client.v1.checkout.sessions.retrieve(
                session_id,
                {"expand": ["setup_intent.payment_method"]},
                options=request_options(stripe_account=stripe_account),
            ),
        )
        setup = session.get("setup_intent")
        return card_setup_view(session, setup if isinstance(setup, Mapping) else None)

    def retrieve_card_setup_intent(
        self, setup_intent_id: str, *, stripe_account: str | None = None
    ) -> CardSetupView:
        """A SetupIntent as it is now, with its card (what setup_intent.succeeded is checked against)."""
        setup = self._call(
            "retrieve_card_setup_intent",
            stripe_account,
            lambda: self._client.v1.setup_intents.retrieve(
                setup_intent_id,
                {"expand": ["payment_method"]},
                options=request_options(stripe_account=stripe_account),
            ),
        )
        return card_setup_view(None, setup)
