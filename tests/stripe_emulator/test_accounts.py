"""The registry of accounts and keys (stripe_emulator/accounts.py) and GET /v1/account
(stripe_emulator/resources/accounts.py): keys the registry does not hold get Stripe's 401, accounts it
does not hold (or that left their platform) Stripe's 403, and nothing is created on first use."""

from __future__ import annotations

import pytest
import stripe

from stripe_emulator.accounts import DEFAULT_ACCOUNT
from tests.support.emulator import (
    admin,
    create_account,
    emulator_state,
    raw,
    running_emulator,
    sdk_client,
)

pytestmark = pytest.mark.integration


def test_the_default_account_answers_get_account(client: stripe.StripeClient) -> None:
    account = client.v1.accounts.retrieve_current()
    assert (account.id, account.object, account.type) == (DEFAULT_ACCOUNT, "account", "standard")
    assert account.business_profile.name == "Emulator Test Business"
    assert account.settings.dashboard.display_name == "Emulator Test Business"
    assert account.charges_enabled is True and account.payouts_enabled is True
    assert account.capabilities.card_payments == "active"
    assert account.default_currency == "usd" and account.country == "US"
    # Stripe's Account has no livemode: the mode is the key's (sk_test_...).
    assert "livemode" not in account.to_dict()


def test_an_unknown_or_revoked_key_gets_401(base: str) -> None:
    with pytest.raises(stripe.AuthenticationError) as unknown:
        stripe.StripeClient("sk_test_madeUpKey1234", base_addresses={"api": base}).v1.customers.list()
    assert unknown.value.http_status == 401
    assert unknown.value.user_message == "Invalid API Key provided: sk_test_*********1234"
    status, body, _ = raw(base, "GET", "/v1/customers", key="sk_live_something")
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    # A publishable key cannot make this call either.
    status, body, _ = raw(base, "GET", "/v1/customers", key="pk_test_emulator")
    assert status == 401 and "publishable API key" in body["error"]["message"]
    # Another key of the same account works until it is revoked.
    status, created = admin(base, "POST", f"/_emulator/accounts/{DEFAULT_ACCOUNT}/keys", {})
    key = created["secret_key"]
    second = stripe.StripeClient(key, base_addresses={"api": base}, max_network_retries=0)
    assert second.v1.accounts.retrieve_current().id == DEFAULT_ACCOUNT
    assert admin(base, "POST", "/_emulator/keys/revoke", {"key": key}) == (200, {"revoked": True})
    with pytest.raises(stripe.AuthenticationError) as revoked:
        second.v1.customers.list()
    assert str(revoked.value.user_message).startswith("Expired API Key provided: sk_test_")
    assert admin(base, "POST", "/_emulator/keys/revoke", {"key": key})[0] == 404


def test_more_keys_of_the_default_account_from_the_command_line() -> None:
    with running_emulator(api_keys=("sk_test_deployKey42",)) as url:
        other = stripe.StripeClient("sk_test_deployKey42", base_addresses={"api": url})
        made = other.v1.customers.create({"email": "k@example.com"})
        # The same account as sk_test_emulator: it sees the customer.
        assert sdk_client(url).v1.customers.retrieve(made.id).email == "k@example.com"


def test_a_stripe_account_the_emulator_does_not_know_gets_403_and_is_not_created(
    client: stripe.StripeClient, base: str
) -> None:
    for account in ("acct_1Unknown", "not-an-account"):
        with pytest.raises(stripe.PermissionError) as caught:
            client.v1.customers.create({"name": "x"}, options={"stripe_account": account})
        assert caught.value.http_status == 403
        assert caught.value.error.code == "account_invalid"
        assert f"does not have access to account '{account}'" in str(caught.value.user_message)
    state = emulator_state(base)
    assert [a["id"] for a in state["accounts"]] == [DEFAULT_ACCOUNT]
    assert state["customers"] == []


def test_a_connected_account_is_reached_with_stripe_account_until_it_leaves(
    client: stripe.StripeClient, base: str
) -> None:
    shop = create_account(base, id="acct_1Shop", business_name="The Shop", email="shop@example.com")
    assert shop["connected_to"] == {DEFAULT_ACCOUNT: {"client_id": "ca_emulator", "scope": "read_write"}}
    on_shop = {"stripe_account": "acct_1Shop"}
    account = client.v1.accounts.retrieve_current(options=on_shop)  # type: ignore[arg-type]
    assert (account.id, account.business_profile.name, account.email) == ("acct_1Shop", "The Shop",
                                                                           "shop@example.com")
    customer = client.v1.customers.create({"name": "on shop"}, options=on_shop)  # type: ignore[arg-type]
    # The account's own key reaches the same objects without Stripe-Account...
    own = stripe.StripeClient(shop["secret_keys"][0], base_addresses={"api": base}, max_network_retries=0)
    assert own.v1.customers.retrieve(customer.id).name == "on shop"
    # ...but may not act for the platform, nor for an account it has no connection with.
    alone = create_account(base, id="acct_1Alone", connect=False)
    for target in (DEFAULT_ACCOUNT, "acct_1Alone"):
        with pytest.raises(stripe.PermissionError):
            own.v1.customers.list(options={"stripe_account": target})
    with pytest.raises(stripe.PermissionError):
        client.v1.customers.list(options={"stripe_account": alone["id"]})
    # The account disconnects (its dashboard): the platform's key is refused from then on.
    status, after = admin(base, "POST", "/_emulator/accounts/acct_1Shop/deauthorize", {})
    assert (status, after["connected_to"]) == (200, {})
    with pytest.raises(stripe.PermissionError):
        client.v1.customers.retrieve(customer.id, options=on_shop)  # type: ignore[arg-type]
    assert own.v1.customers.retrieve(customer.id).id == customer.id  # its own key still works


def test_an_account_that_cannot_take_card_payments(client: stripe.StripeClient, base: str) -> None:
    create_account(base, id="acct_1Limited")
    status, _ = admin(base, "POST", "/_emulator/accounts/acct_1Limited", {"charges_enabled": False})
    assert status == 200
    on = {"stripe_account": "acct_1Limited"}
    account = client.v1.accounts.retrieve_current(options=on)  # type: ignore[arg-type]
    assert account.charges_enabled is False
    assert account.capabilities.card_payments == "inactive"
    assert account.requirements.disabled_reason == "requirements.past_due"
    updated = client.v1.events.list({"type": "account.updated"}, options=on).data  # type: ignore[arg-type]
    assert updated[0].data.previous_attributes.charges_enabled is True
    assert updated[0].account == "acct_1Limited"
    for bad in ({"charges_enabled": "no"}, {"id": "acct_other"}):
        assert admin(base, "POST", "/_emulator/accounts/acct_1Limited", bad)[0] == 400


def test_account_hook_refuses_what_stripe_would_not_have(base: str) -> None:
    create_account(base, id="acct_1Taken", email="taken@example.com")
    for fields in ({"id": "acct_1Taken"}, {"id": "acct_bad-id"}, {"email": "TAKEN@example.com"},
                   {"secret_key": "sk_test_emulator"}, {"platform": "acct_1Nobody"}):
        status, body = admin(base, "POST", "/_emulator/accounts", fields)
        assert status == 400, fields
        assert body["error"]["type"] == "invalid_request_error"
    assert admin(base, "GET", "/_emulator/accounts/acct_1Nobody")[0] == 404
    listed = admin(base, "GET", "/_emulator/accounts")[1]["data"]
    assert [a["id"] for a in listed] == [DEFAULT_ACCOUNT, "acct_1Taken"]
