"""Customers and their saved cards at Stripe: the calls the Client Zone and the API make to keep them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.adapters.stripe_calls import StripeCalls
from shared.adapters.stripe_wire import (
    CARD_ONLY,
    CardErrorSignal,
    card_details,
    request_options,
)
from shared.domain.payments import (
    CardDetails,
    CardSetupDeclined,
    CardSetupRequiresAction,
    PermanentStripeError,
    id_of,
)

__all__ = ["CardCalls"]


class CardCalls(StripeCalls):
    """Customers, PaymentMethods and the SetupIntents that save a card for off-session use."""

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
        off-session charge. No product path calls it today (the Client Zone uses Checkout, the API
        attaches); the contract suite keeps it and the emulator's SetupIntent card checks honest.
        Raises CardSetupDeclined, or CardSetupRequiresAction when the cardholder must
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
        customer, without a SetupIntent's card check. The API's and seed-demo's path
        (shared.services.clients.add_card): whoever collected the card ran the cardholder through its
        setup. The Client Zone saves cards on Stripe's Checkout page (shared.services.card_setup)."""
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
