"""The account this business charges on, its webhook endpoint and Connect OAuth: the calls Settings makes
when an admin connects or disconnects Stripe.

Read at the pinned version (shared.adapters.stripe_wire.STRIPE_API_VERSION): docs.stripe.com/api/accounts/
retrieve (GET /v1/account: business_profile.name, settings.dashboard.display_name, charges_enabled,
capabilities.card_payments), docs.stripe.com/api/webhook_endpoints/create and /delete (url,
enabled_events, api_version, connect, description; the secret is in create's answer only),
docs.stripe.com/connect/oauth-reference (/oauth/authorize, /oauth/token, /oauth/deauthorize on the
connect base address, through the SDK's `StripeClient.oauth`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.adapters.stripe_calls import StripeCalls
from shared.adapters.stripe_wire import STRIPE_API_VERSION, request_options
from shared.domain.payments import PermanentStripeError, StripeAccountView, WebhookEndpointView

__all__ = ["AccountCalls"]


def account_view(account: dict[str, Any], livemode: bool) -> StripeAccountView:
    profile = account.get("business_profile") or {}
    dashboard = (account.get("settings") or {}).get("dashboard") or {}
    capabilities = account.get("capabilities") or {}
    return StripeAccountView(
        id=str(account["id"]),
        name=profile.get("name") or dashboard.get("display_name") or None,
        charges_enabled=bool(account.get("charges_enabled")),
        card_payments=capabilities.get("card_payments"),
        livemode=livemode,
    )


class AccountCalls(StripeCalls):
    """GET /v1/account, the webhook endpoint Connect registers, and Connect OAuth."""

    def retrieve_account(self, *, stripe_account: str | None = None) -> StripeAccountView:
        """The account the key (or the Stripe-Account) acts for. A refused key raises a permanent
        `authentication` error (401), a refused account a `permission` one (403)."""
        account = self._call(
            "retrieve_account",
            stripe_account,
            lambda: self._client.v1.accounts.retrieve_current(
                options=request_options(stripe_account=stripe_account)
            ),
        )
        return account_view(account, self.livemode)

    def create_webhook_endpoint(
        self,
        url: str,
        enabled_events: Sequence[str],
        *,
        idempotency_key: str,
        connect: bool = False,
        description: str | None = None,
    ) -> WebhookEndpointView:
        """Register an endpoint on the key's own account (`connect`: one that receives the connected
        accounts' events instead), its events rendered at the pinned API version."""
        params: dict[str, Any] = {
            "url": url,
            "enabled_events": list(enabled_events),
            "api_version": STRIPE_API_VERSION,
        }
        if connect:
            params["connect"] = True
        if description:
            params["description"] = description
        created = self._call(
            "create_webhook_endpoint",
            None,
            lambda: self._client.v1.webhook_endpoints.create(
                params,  # type: ignore[arg-type]  # a dict built for the SDK's TypedDict
                options=request_options(idempotency_key),
            ),
        )
        return WebhookEndpointView(
            id=str(created["id"]),
            url=str(created["url"]),
            enabled_events=tuple(created.get("enabled_events") or ()),
            secret=created.get("secret"),
        )

    def list_webhook_endpoints(self) -> list[WebhookEndpointView]:
        """Every webhook endpoint of the key's own account (Stripe keeps at most 16 per mode)."""
        page = self._call(
            "list_webhook_endpoints",
            None,
            lambda: self._client.v1.webhook_endpoints.list({"limit": 100}, options=request_options()),
        )
        return [
            WebhookEndpointView(
                id=str(row["id"]),
                url=str(row["url"]),
                enabled_events=tuple(row.get("enabled_events") or ()),
                secret=None,
            )
            for row in page.get("data") or ()
        ]

    def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        """Delete an endpoint of the key's own account; one already gone counts as deleted."""
        try:
            self._call(
                "delete_webhook_endpoint",
                None,
                lambda: self._client.v1.webhook_endpoints.delete(endpoint_id, options=request_options()),
            )
        except PermanentStripeError as exc:
            if exc.code != "resource_missing":
                raise

    def oauth_authorize_url(self, client_id: str, state: str, redirect_uri: str) -> str:
        """Where the admin signs in to Stripe (Standard accounts, scope read_write); no request is made."""
        return self._client.oauth.authorize_url(
            {
                "client_id": client_id,
                "response_type": "code",
                "scope": "read_write",
                "state": state,
                "redirect_uri": redirect_uri,
            }
        )

    def oauth_exchange_code(self, code: str) -> str:
        """POST /oauth/token: the code the callback received, for the connected account's id
        (stripe_user_id). A reused or unknown code raises a permanent error with code invalid_grant."""
        token = self._call(
            "oauth_exchange_code",
            None,
            lambda: self._client.oauth.token({"grant_type": "authorization_code", "code": code}),
        )
        return str(token["stripe_user_id"])

    def oauth_deauthorize(self, client_id: str, account_id: str) -> None:
        """POST /oauth/deauthorize: the platform lets go of the account."""
        self._call(
            "oauth_deauthorize",
            None,
            lambda: self._client.oauth.deauthorize({"client_id": client_id, "stripe_user_id": account_id}),
        )
