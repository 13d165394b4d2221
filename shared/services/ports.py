"""What the use cases need from the outside world, as Protocols: Stripe, the task publisher, the mailer.

shared.adapters implements them (StripeGateway, the Celery publisher, FileMailer / SmtpMailer);
shared.bootstrap picks the implementations; tests pass their own (tests/support).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Protocol

from sqlalchemy.orm import Session

from shared.domain.payments import (
    WEBHOOK_TOLERANCE_SECONDS,
    CardDetails,
    CardSetupView,
    ChargeOutcome,
    ChargeRequest,
    PaymentIntentView,
    RefundView,
    StripeAccountView,
    WebhookEndpointView,
)

__all__ = [
    "Mailer",
    "PendingMessage",
    "Publisher",
    "RateBudgetTimeout",
    "RateBudgetUnavailable",
    "SecretBox",
    "SecretUnreadable",
    "SessionFactory",
    "StripePort",
    "UnitOfWork",
    "UnitOfWorkFactory",
]

# What makes a Session: a sessionmaker, or shared.adapters.database.one_checkout()'s sessions on one
# connection.
SessionFactory = Callable[[], Session]


@dataclass(frozen=True)
class PendingMessage:
    """An outbox row written in a transaction, to publish once that transaction has committed."""

    id: int
    task_name: str
    payload: dict[str, Any]


class UnitOfWork(Protocol):
    """One transaction (`session`), committed when its block ends normally and rolled back when it
    raises; the messages handed to `publish_after_commit` are published once it has committed (a
    failure to publish leaves them to the outbox relay). shared.adapters.database.UnitOfWork is the
    real one."""

    session: Session

    def publish_after_commit(self, message: PendingMessage) -> None: ...


# Opens a new unit of work: `with units() as uow: ...`.
UnitOfWorkFactory = Callable[[], AbstractContextManager[UnitOfWork]]

# publish(task_name, payload, countdown_seconds): hands one message to the broker; raises on failure.
Publisher = Callable[[str, dict[str, Any], float | None], None]


class StripePort(Protocol):
    """Stripe, as the product needs it (shared.adapters.stripe_gateway.StripeGateway is the real one).

    Every method that touches account objects takes `stripe_account` (a Connect account id sent as
    Stripe-Account; None = the platform account itself). Methods answer with the values of
    shared.domain.payments and raise its errors: TransientStripeError (no trustworthy answer: retry
    with the same key and parameters), PermanentStripeError (Stripe refused the request itself),
    CardSetupDeclined / CardSetupRequiresAction (a card being saved), WebhookSignatureError /
    WebhookPayloadError (a webhook that is not Stripe's); and, before anything is sent, the rate
    budget's RateBudgetTimeout / RateBudgetUnavailable below.
    """

    # True for a live key: a webhook event of the other mode is not ours.
    livemode: bool

    @property
    def longest_call_seconds(self) -> float:
        """The longest one call can take before it returns or raises (bounds a charge's lease)."""
        ...

    def ensure_customer(
        self,
        name: str,
        email: str,
        *,
        idempotency_key: str,
        existing_id: str | None = None,
        stripe_account: str | None = None,
    ) -> str:
        """The id of a live customer for this client: `existing_id` while it exists, else a new one."""
        ...

    def attach_card(
        self,
        customer_id: str,
        payment_method_token: str,
        *,
        idempotency_key: str,
        make_default: bool = True,
        stripe_account: str | None = None,
    ) -> CardDetails:
        """Save a card for off-session use through a confirmed SetupIntent."""
        ...

    def attach_payment_method(
        self,
        customer_id: str,
        payment_method: str,
        *,
        idempotency_key: str,
        make_default: bool = True,
        stripe_account: str | None = None,
    ) -> CardDetails:
        """Attach a PaymentMethod set up elsewhere to the customer, without a SetupIntent's check."""
        ...

    def card_from_setup_intent(
        self, setup_intent_id: str, *, make_default: bool = True, stripe_account: str | None = None
    ) -> CardDetails:
        """The saved card of a SetupIntent the cardholder has since authenticated."""
        ...

    def set_default_card(
        self, customer_id: str, payment_method_id: str, *, stripe_account: str | None = None
    ) -> None: ...

    def detach_card(self, payment_method_id: str, *, stripe_account: str | None = None) -> None:
        """Detach a saved card; one already detached counts as done."""
        ...

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
        """A Checkout Session in setup mode saving a card to the customer; its `url` is Stripe's page."""
        ...

    def retrieve_card_setup_session(
        self, session_id: str, *, stripe_account: str | None = None
    ) -> CardSetupView:
        """A Checkout Session as it is now, with its SetupIntent's card."""
        ...

    def retrieve_card_setup_intent(
        self, setup_intent_id: str, *, stripe_account: str | None = None
    ) -> CardSetupView:
        """A SetupIntent as it is now, with its card."""
        ...

    def create_offsession_payment_intent(self, request: ChargeRequest) -> ChargeOutcome:
        """Create and confirm an off-session PaymentIntent; a replay of the same request (same key,
        same parameters) answers the first outcome."""
        ...

    def retrieve_payment_intent(
        self, payment_intent_id: str, *, stripe_account: str | None = None
    ) -> PaymentIntentView: ...

    def confirm_on_session(
        self,
        payment_intent_id: str,
        payment_method_id: str,
        return_url: str,
        *,
        idempotency_key: str | None = None,
        stripe_account: str | None = None,
    ) -> ChargeOutcome:
        """Confirm again with the client present; RequiresAction carries the bank's page."""
        ...

    def cancel_payment_intent(
        self,
        payment_intent_id: str,
        *,
        idempotency_key: str | None = None,
        stripe_account: str | None = None,
    ) -> PaymentIntentView: ...

    def find_attempt_payment_intents(
        self,
        customer_id: str,
        charge_attempt_id: str,
        *,
        created_gte: datetime,
        stripe_account: str | None = None,
    ) -> list[PaymentIntentView]:
        """The customer's PaymentIntents whose metadata.charge_attempt_id is this attempt's."""
        ...

    def list_payment_intents_created(
        self, created_gte: datetime, created_lt: datetime, *, stripe_account: str | None = None
    ) -> Iterator[PaymentIntentView]:
        """Every PaymentIntent created in [created_gte, created_lt), newest first."""
        ...

    def create_refund(
        self,
        payment_intent_id: str,
        *,
        idempotency_key: str,
        amount: int | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        stripe_account: str | None = None,
    ) -> RefundView:
        """Refund all (amount=None) or part of a succeeded PaymentIntent; a replay of the same request
        (same key, same parameters) answers the first refund."""
        ...

    def retrieve_refund(self, refund_id: str, *, stripe_account: str | None = None) -> RefundView: ...

    def find_refunds(
        self, payment_intent_id: str, metadata_key: str, value: str, *, stripe_account: str | None = None
    ) -> list[RefundView]:
        """The PaymentIntent's refunds whose metadata[metadata_key] is `value`."""
        ...

    def verify_webhook(
        self,
        payload: bytes,
        sig_header: str | None,
        *,
        tolerance: int = WEBHOOK_TOLERANCE_SECONDS,
        also: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Check Stripe-Signature over the raw body and return the event as a plain dict. The configured
        secrets are tried first, then `also` (the secret stored when Connect registered the endpoint)."""
        ...

    # ---- the account, its webhook endpoint, Connect OAuth (shared.adapters.stripe_accounts) ----------

    def retrieve_account(self, *, stripe_account: str | None = None) -> StripeAccountView: ...

    def create_webhook_endpoint(
        self,
        url: str,
        enabled_events: Sequence[str],
        *,
        idempotency_key: str,
        connect: bool = False,
        description: str | None = None,
    ) -> WebhookEndpointView: ...

    def list_webhook_endpoints(self) -> list[WebhookEndpointView]: ...

    def delete_webhook_endpoint(self, endpoint_id: str) -> None: ...

    def oauth_authorize_url(self, client_id: str, state: str, redirect_uri: str) -> str: ...

    def oauth_exchange_code(self, code: str) -> str: ...

    def oauth_deauthorize(self, client_id: str, account_id: str) -> None: ...


class SecretUnreadable(Exception):
    """A stored secret that the current SECRET_KEY cannot decrypt."""


class SecretBox(Protocol):
    """Encrypts what must be stored secret (shared.adapters.secret_box.FernetSecretBox)."""

    def seal(self, plaintext: str) -> str: ...

    def open(self, sealed: str) -> str:
        """The plaintext; raises SecretUnreadable."""
        ...

    def __hash__(self) -> int: ...  # a key of the decryptions kept (stripe_connection.stored_webhook_secrets)


class Mailer(Protocol):
    """Delivers a composed message. `sender` is the From address the messages should carry."""

    @property
    def sender(self) -> str: ...

    def send(self, message: EmailMessage) -> None: ...


class RateBudgetUnavailable(TimeoutError):
    """The Stripe rate budget's store (Redis or the database) did not answer. The request was not sent."""

    def __init__(self, account: str, cause: Exception) -> None:
        super().__init__(f"Stripe rate budget of {account!r} unavailable: {cause}")
        self.account = account


class RateBudgetTimeout(TimeoutError):
    """No Stripe rate token within the timeout. The request was not sent: retry later, same key."""

    def __init__(self, account: str, needed_wait: float, timeout: float) -> None:
        super().__init__(
            f"Stripe rate budget of {account!r}: the next token is {needed_wait:.3f}s away, "
            f"beyond the {timeout:.3f}s this caller may wait"
        )
        self.account = account
        self.needed_wait = needed_wait
        self.timeout = timeout
