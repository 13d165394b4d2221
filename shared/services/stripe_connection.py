"""Connecting the business's Stripe account: verify it (GET /v1/account), register the webhook endpoint
and keep its secret (encrypted), disconnect, Connect OAuth, and the account.application.deauthorized
event. Settings shows what this found; shared.domain.eligibility blocks charges with its words.

Every Stripe call happens outside a database transaction, as in shared.services.clients.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.eligibility import BlockerCode
from shared.domain.models import Card, Client, Settings, utcnow
from shared.domain.payments import GatewayError, PermanentStripeError, StripeAccountView
from shared.services import audit
from shared.services.ports import SecretBox, SecretUnreadable, StripePort
from shared.services.settings import get_settings

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/stripe"
DEAUTHORIZED_EVENT = "account.application.deauthorized"


class ConnectionRefused(Exception):
    """Stripe refused the connection; `code` is a BlockerCode value, the message is fit to show."""

    def __init__(self, code: BlockerCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class OAuthSettings:
    """A Connect platform's OAuth client (STRIPE_CONNECT_CLIENT_ID)."""

    client_id: str


def webhook_url(public_base_url: str) -> str:
    return public_base_url.rstrip("/") + WEBHOOK_PATH


def registered_events() -> tuple[str, ...]:
    """Exactly the events Offsession acts on (shared.services.webhooks.EVENTS_WITH_WORK)."""
    from shared.services.webhooks import EVENTS_WITH_WORK

    return tuple(sorted(EVENTS_WITH_WORK))


def refusal_of(exc: GatewayError, stripe_account: str | None) -> ConnectionRefused:
    """Stripe's refusal of GET /v1/account, in words a person acts on."""
    if isinstance(exc, PermanentStripeError) and exc.kind == "authentication":
        return ConnectionRefused(
            BlockerCode.STRIPE_CONNECTION_REFUSED,
            f"Stripe refused the API key (401): {exc}. Set STRIPE_API_KEY to a key of this account and "
            "connect again.",
        )
    if isinstance(exc, PermanentStripeError) and exc.kind == "permission":
        return ConnectionRefused(
            BlockerCode.STRIPE_CONNECTION_REFUSED,
            f"Stripe refused access to the account {stripe_account or ''} (403): {exc}. Connect again "
            "(Connect with Stripe) or correct the account id.",
        )
    return ConnectionRefused(
        BlockerCode.STRIPE_NOT_CONNECTED, f"Stripe could not be asked about the account: {exc}. Try again."
    )


def connect(
    factory: sessionmaker[Session],
    gateway: StripePort,
    box: SecretBox,
    *,
    actor: str,
    public_base_url: str,
    stripe_account: str | None = None,
    method: str = "api_key",
) -> None:
    """Verify the account and register the webhook endpoint; raises ConnectionRefused (recorded, so the
    blockers say why) when Stripe refuses. `stripe_account`: the connected account (Stripe-Account)."""
    try:
        account = gateway.retrieve_account(stripe_account=stripe_account)
    except GatewayError as exc:
        refusal = refusal_of(exc, stripe_account)
        if refusal.code is BlockerCode.STRIPE_CONNECTION_REFUSED:
            _record_problem(factory, actor, refusal.code, refusal.message, connected=False)
        raise refusal from exc
    with factory() as session:
        old_endpoint = get_settings(session).webhook_endpoint_id
        session.rollback()
    url = webhook_url(public_base_url)
    try:
        endpoint = gateway.create_webhook_endpoint(
            url,
            registered_events(),
            idempotency_key=f"offsession:webhook_endpoint:{uuid.uuid4()}",
            connect=method == "oauth",
            description="Offsession: charges, refunds and the connection",
        )
    except GatewayError as exc:
        # E.g. a restricted key without Webhook Endpoints write access, or Stripe's 16 endpoints.
        refusal = ConnectionRefused(
            BlockerCode.STRIPE_CONNECTION_REFUSED,
            f"Stripe verified the account but refused to register the webhook endpoint: {exc}",
        )
        if isinstance(exc, PermanentStripeError):
            _record_problem(factory, actor, refusal.code, refusal.message, connected=False)
        raise refusal from exc
    if not endpoint.secret:
        raise ConnectionRefused(
            BlockerCode.STRIPE_NOT_CONNECTED, "Stripe registered the webhook endpoint but gave no secret."
        )
    with factory() as session, session.begin():
        settings = get_settings(session)
        _store_verified(session, settings, account, method=method, stripe_account=stripe_account)
        settings.webhook_endpoint_id = endpoint.id
        settings.webhook_secret_encrypted = box.seal(endpoint.secret)
        claimed = _claim_unplaced(session, account)
        audit.record(
            session,
            actor,
            "stripe.connected",
            account=account.id,
            livemode=account.livemode,
            charges_enabled=account.charges_enabled,
            method=method,
            webhook_endpoint=endpoint.id,
            cards_claimed=claimed,
        )
    # One endpoint for this deployment, made before the old ones go (an event is delivered twice
    # meanwhile, and stored once, rather than lost): the one registered before, and any other at our URL
    # (left by a connection whose database was restored or lost).
    stale = {old_endpoint} if old_endpoint else set()
    try:
        stale |= {e.id for e in gateway.list_webhook_endpoints() if e.url == url}
    except GatewayError as exc:
        log.warning("webhook endpoints not listed at Stripe: %s", exc)
    for endpoint_id in sorted(stale - {endpoint.id}):
        _delete_endpoint(gateway, endpoint_id)


def connect_again(
    factory: sessionmaker[Session], gateway: StripePort, box: SecretBox, *, actor: str, public_base_url: str
) -> None:
    """Connect as the business is connected now: through OAuth, the same connected account again; else
    the key's own account (or the account id given through the API)."""
    with factory() as session:
        settings = get_settings(session)
        account, method = settings.stripe_account_id, settings.stripe_connection_method
        session.rollback()
    connect(
        factory,
        gateway,
        box,
        actor=actor,
        public_base_url=public_base_url,
        stripe_account=account,
        method="oauth" if account and method == "oauth" else "api_key",
    )


def _store_verified(
    session: Session,
    settings: Settings,
    account: StripeAccountView,
    *,
    method: str,
    stripe_account: str | None,
) -> None:
    settings.stripe_connected = True
    settings.stripe_account_id = stripe_account
    settings.stripe_connection_method = method
    settings.stripe_verified_account_id = account.id
    settings.stripe_account_name = (account.name or "")[:200] or None
    settings.stripe_livemode = account.livemode
    settings.stripe_charges_enabled = account.charges_enabled
    settings.stripe_verified_at = utcnow()
    settings.stripe_problem_code = None
    settings.stripe_problem = None
    session.flush()


def _claim_unplaced(session: Session, account: StripeAccountView) -> int:
    """Cards and customers saved before accounts were recorded (the upgrade) live where the deployment
    was charging then: the first verified connection stamps them with its account and mode."""
    cards = cast(
        CursorResult[Any],
        session.execute(
            update(Card)
            .where(Card.stripe_account_id.is_(None))
            .values(stripe_account_id=account.id, livemode=account.livemode)
            .execution_options(synchronize_session=False)
        ),
    ).rowcount
    session.execute(
        update(Client)
        .where(Client.stripe_customer_account_id.is_(None), Client.stripe_customer_id.is_not(None))
        .values(stripe_customer_account_id=account.id, stripe_customer_livemode=account.livemode)
        .execution_options(synchronize_session=False)
    )
    return int(cards or 0)


def _delete_endpoint(gateway: StripePort, endpoint_id: str) -> None:
    try:
        gateway.delete_webhook_endpoint(endpoint_id)
    except GatewayError as exc:
        # An endpoint left at Stripe only receives events nobody verifies any more (its secret is gone).
        log.warning("webhook endpoint %s not deleted at Stripe: %s", endpoint_id, exc)


def _record_problem(
    factory: sessionmaker[Session], actor: str, code: BlockerCode, message: str, *, connected: bool
) -> None:
    with factory() as session, session.begin():
        _set_problem(session, get_settings(session), actor, code, message, connected=connected)


def _set_problem(
    session: Session, settings: Settings, actor: str, code: BlockerCode, message: str, *, connected: bool
) -> None:
    settings.stripe_connected = connected
    settings.stripe_problem_code = code.value
    settings.stripe_problem = message[:500]
    session.flush()
    audit.record(session, actor, "stripe.connection_problem", code=code.value, message=message[:500])


def record_refusal(session: Session, exc: PermanentStripeError, stripe_account: str | None) -> bool:
    """A call made for the current connection met a refused key (401) or account (403): the connection
    is no longer good, so charges are blocked with the reason until an admin connects again. Returns
    whether it was recorded (not for a call made for another account)."""
    if exc.kind not in ("authentication", "permission"):
        return False
    settings = get_settings(session)
    if (settings.stripe_account_id or None) != (stripe_account or None) or not settings.stripe_connected:
        return False
    refusal = refusal_of(exc, stripe_account)
    _set_problem(session, settings, "worker", refusal.code, refusal.message, connected=False)
    return True


def disconnect(
    factory: sessionmaker[Session],
    gateway: StripePort,
    *,
    actor: str,
    oauth: OAuthSettings | None = None,
) -> None:
    """Delete the webhook endpoint (and, connected through OAuth, let go of the account), then block
    charges: Stripe is not connected until an admin connects again."""
    with factory() as session:
        settings = get_settings(session)
        endpoint, method, account = (
            settings.webhook_endpoint_id,
            settings.stripe_connection_method,
            settings.stripe_account_id,
        )
        session.rollback()
    if endpoint:
        _delete_endpoint(gateway, endpoint)
    if method == "oauth" and account and oauth is not None:
        try:
            gateway.oauth_deauthorize(oauth.client_id, account)
        except GatewayError as exc:
            log.warning("Connect account %s not deauthorized at Stripe: %s", account, exc)
    with factory() as session, session.begin():
        settings = get_settings(session)
        _forget_endpoint(settings)
        _set_problem(
            session,
            settings,
            actor,
            BlockerCode.STRIPE_NOT_CONNECTED,
            f"Stripe was disconnected in Settings by {actor}: connect it again before charging cards.",
            connected=False,
        )
        audit.record(session, actor, "stripe.disconnected", account=settings.stripe_verified_account_id)


def _forget_endpoint(settings: Settings) -> None:
    settings.webhook_endpoint_id = None
    settings.webhook_secret_encrypted = None
    if settings.stripe_connection_method == "oauth":
        # The platform no longer acts for that account: a later Connect starts from the key's own account
        # or a new Connect with Stripe (the account stays shown as the last verified one).
        settings.stripe_account_id = None
        settings.stripe_connection_method = None


_SEALED_WEBHOOK_SECRET = select(Settings.webhook_secret_encrypted).where(Settings.id == 1)


def stored_webhook_secrets(session: Session, box: SecretBox) -> tuple[str, ...]:
    """The signing secret of the endpoint Connect registered, decrypted; () when none or unreadable.

    The sealed value is read on every call (one column), so a secret replaced or removed (reconnect,
    disconnect, deauthorization) is refused from the next request on; only its decryption is kept, by
    sealed value (sealing the same secret again gives another value)."""
    sealed = session.scalar(_SEALED_WEBHOOK_SECRET)
    if not sealed:
        return ()
    try:
        return (_opened(box, sealed),)
    except SecretUnreadable as exc:
        log.error("webhook secret stored at Connect: %s", exc)
        return ()


@lru_cache(maxsize=4)
def _opened(box: SecretBox, sealed: str) -> str:
    return box.open(sealed)  # an unreadable value raises, and is not cached


def apply_deauthorization(factory: sessionmaker[Session], gateway: StripePort, event: dict[str, Any]) -> str:
    """account.application.deauthorized: the business disconnected the platform at Stripe. When it is
    the connected account, charges are blocked with the reason; an event of another account changes
    nothing."""
    account = event.get("account") or None
    with factory() as session, session.begin():
        settings = get_settings(session)
        if settings.stripe_connection_method != "oauth" or account != settings.stripe_account_id:
            return f"{DEAUTHORIZED_EVENT}: not the connected account ({account}), nothing to do"
        endpoint = settings.webhook_endpoint_id
        _forget_endpoint(settings)
        _set_problem(
            session,
            settings,
            f"webhook:{event.get('id')}",
            BlockerCode.STRIPE_NOT_CONNECTED,
            f"The Stripe account {account} disconnected Offsession (deauthorized at Stripe): connect "
            "again with Stripe before charging cards.",
            connected=False,
        )
    if endpoint:
        _delete_endpoint(gateway, endpoint)
    return f"{DEAUTHORIZED_EVENT}: {account} disconnected, charges blocked"


def start_oauth(gateway: StripePort, oauth: OAuthSettings, *, state: str, redirect_uri: str) -> str:
    """Where to send the admin: Stripe's authorize page (Standard accounts, scope read_write)."""
    return gateway.oauth_authorize_url(oauth.client_id, state, redirect_uri)


def finish_oauth(
    factory: sessionmaker[Session],
    gateway: StripePort,
    box: SecretBox,
    *,
    code: str,
    actor: str,
    public_base_url: str,
) -> str:
    """Exchange the callback's code (POST /oauth/token) and connect the account it names; returns its
    id. A reused or unknown code raises ConnectionRefused (Stripe's invalid_grant)."""
    try:
        account_id = gateway.oauth_exchange_code(code)
    except GatewayError as exc:
        raise ConnectionRefused(
            BlockerCode.STRIPE_NOT_CONNECTED, f"Stripe did not accept the authorization: {exc}"
        ) from exc
    connect(
        factory,
        gateway,
        box,
        actor=actor,
        public_base_url=public_base_url,
        stripe_account=account_id,
        method="oauth",
    )
    return account_id
