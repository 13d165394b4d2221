"""Connect OAuth (stripe_emulator/oauth.py) through the stripe SDK's client.oauth with the emulator as
its connect base: the authorize page (sign in, create an account, deny), the code exchange, reuse
refused, deauthorization from either side and its event on the platform's Connect endpoint."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import stripe

from stripe_emulator.accounts import DEFAULT_ACCOUNT
from tests.support.emulator import (
    Receiver,
    admin,
    create_account,
    emulator_state,
    visit,
    wait_until,
)

pytestmark = pytest.mark.integration

CALLBACK = "https://platform.example/stripe/callback"


def platform(base: str, client_id: str = "ca_emulator") -> stripe.StripeClient:
    return stripe.StripeClient("sk_test_emulator", base_addresses={"api": base, "connect": base},
                               client_id=client_id, max_network_retries=0)


def authorize(client: stripe.StripeClient, state: str = "st-1", **params: Any) -> str:
    return client.oauth.authorize_url({"scope": "read_write", "state": state, "redirect_uri": CALLBACK,
                                       **params})


def submit(url: str, action: str, **fields: str) -> tuple[int, str | None, str]:
    """Post one of the authorize page's forms, as its buttons do."""
    query = dict(parse_qsl(urlsplit(url).query))
    base = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
    form = {f"req_{k}": v for k, v in query.items()}
    return visit(base + "/oauth/authorize", {**form, "action": action, **fields})


def callback_params(location: str | None) -> dict[str, str]:
    assert location is not None and location.startswith(CALLBACK + "?")
    return dict(parse_qsl(urlsplit(location).query))


def test_sign_in_to_an_existing_account_then_exchange_the_code(base: str) -> None:
    create_account(base, id="acct_1Existing", business_name="Existing Ltd", email="owner@existing.example",
                   password="correct-horse", connect=False)
    client = platform(base)
    url = authorize(client)
    assert url.startswith(f"{base}/oauth/authorize?") and "client_id=ca_emulator" in url
    status, _, page = visit(url)
    assert status == 200 and "Sign in to your Stripe account" in page and "<script" not in page
    # A wrong password is said on the page; nothing is connected.
    status, location, page = submit(url, "sign_in", email="owner@existing.example", password="wrong")
    assert (status, location) == (200, None) and "Incorrect email or password." in page
    status, location, _ = submit(url, "sign_in", email="owner@existing.example", password="correct-horse")
    assert status == 303
    back = callback_params(location)
    assert back["scope"] == "read_write" and back["state"] == "st-1" and back["code"].startswith("ac_")
    # Not connected until the platform exchanges the code.
    with pytest.raises(stripe.PermissionError):
        client.v1.customers.list(options={"stripe_account": "acct_1Existing"})
    token = client.oauth.token({"grant_type": "authorization_code", "code": back["code"]})
    assert (token.stripe_user_id, token.scope, token.livemode, token.token_type) == (
        "acct_1Existing", "read_write", False, "bearer")
    assert token.stripe_publishable_key.startswith("pk_test_") and token.refresh_token.startswith("rt_")
    account = client.v1.accounts.retrieve_current(options={"stripe_account": token.stripe_user_id})
    assert account.business_profile.name == "Existing Ltd"
    # The access token is a secret key of the connected account.
    as_account = stripe.StripeClient(token.access_token, base_addresses={"api": base})
    assert as_account.v1.accounts.retrieve_current().id == "acct_1Existing"
    # A code works once; an unknown one never.
    for code in (back["code"], "ac_doesNotExist"):
        with pytest.raises(stripe.oauth_error.InvalidGrantError) as caught:
            client.oauth.token({"grant_type": "authorization_code", "code": code})
        assert caught.value.http_status == 400 and caught.value.code == "invalid_grant"
    refreshed = client.oauth.token({"grant_type": "refresh_token", "refresh_token": token.refresh_token})
    assert refreshed.stripe_user_id == "acct_1Existing" and refreshed.access_token != token.access_token


def test_create_an_account_on_the_page(base: str) -> None:
    client = platform(base)
    url = authorize(client, state="new")
    status, _, page = submit(url, "create", business_name="", email="x", password="short")
    assert status == 200 and "Enter your business name." in page
    status, location, _ = submit(url, "create", business_name="Fresh Co", email="fresh@example.com",
                                 password="long enough")
    assert status == 303
    code = callback_params(location)["code"]
    token = client.oauth.token({"grant_type": "authorization_code", "code": code})
    created = client.v1.accounts.retrieve_current(options={"stripe_account": token.stripe_user_id})
    assert (created.business_profile.name, created.email) == ("Fresh Co", "fresh@example.com")
    # The same email cannot make a second account; it signs in.
    status, _, page = submit(url, "create", business_name="Again", email="fresh@example.com",
                             password="long enough")
    assert status == 200 and "sign in instead" in page


def test_deny_sends_access_denied_back(base: str) -> None:
    status, location, _ = submit(authorize(platform(base), state="s-deny"), "deny")
    assert status == 303
    assert callback_params(location) == {"error": "access_denied",
                                         "error_description": "The user denied your request",
                                         "state": "s-deny"}


def test_the_authorize_page_refuses_unknown_applications_and_unregistered_redirects(base: str) -> None:
    status, _, page = visit(authorize(platform(base, client_id="ca_unknown")))
    assert status == 400 and "No such application" in page
    status, registered = admin(base, "POST", "/_emulator/oauth_clients",
                               {"name": "Strict platform", "redirect_uris": [CALLBACK]})
    assert status == 200 and registered["client_id"].startswith("ca_")
    strict = platform(base, client_id=registered["client_id"])
    status, _, page = visit(authorize(strict, redirect_uri="https://evil.example/cb"))
    assert status == 400 and "Invalid redirect URI" in page
    assert visit(authorize(strict))[0] == 200
    status, location, _ = visit(authorize(strict, scope="everything"))
    assert status == 302 and callback_params(location)["error"] == "invalid_scope"


def test_a_code_of_another_platform_is_not_yours(base: str) -> None:
    other = create_account(base, id="acct_1OtherPlatform", connect=False)
    create_account(base, id="acct_1Biz", email="biz@example.com", password="password-1", connect=False)
    _, location, _ = submit(authorize(platform(base)), "sign_in", email="biz@example.com",
                            password="password-1")
    code = callback_params(location)["code"]
    thief = stripe.StripeClient(other["secret_keys"][0], base_addresses={"api": base, "connect": base})
    with pytest.raises(stripe.oauth_error.InvalidGrantError, match="does not belong to you"):
        thief.oauth.token({"grant_type": "authorization_code", "code": code})


def connected(base: str, email: str) -> tuple[stripe.StripeClient, Any]:
    create_account(base, email=email, password="password-1", connect=False)
    client = platform(base)
    _, location, _ = submit(authorize(client), "sign_in", email=email, password="password-1")
    return client, client.oauth.token({"grant_type": "authorization_code",
                                       "code": callback_params(location)["code"]})


@pytest.mark.parametrize("side", ["platform", "account"])
def test_deauthorization_from_either_side(base: str, receiver: Receiver, side: str) -> None:
    client, token = connected(base, f"{side}@example.com")
    hook = client.v1.webhook_endpoints.create(
        {"url": receiver.url, "enabled_events": ["account.application.deauthorized"], "connect": True}
    )
    account = token.stripe_user_id
    if side == "platform":
        answer = client.oauth.deauthorize({"stripe_user_id": account})
        assert answer.stripe_user_id == account
        with pytest.raises(stripe.oauth_error.InvalidClientError, match="not connected"):
            client.oauth.deauthorize({"stripe_user_id": account})
    else:
        assert admin(base, "POST", f"/_emulator/accounts/{account}/deauthorize", {})[0] == 200
    with pytest.raises(stripe.PermissionError):
        client.v1.customers.list(options={"stripe_account": account})
    with pytest.raises(stripe.AuthenticationError, match="Expired API Key"):
        stripe.StripeClient(token.access_token, base_addresses={"api": base}).v1.customers.list()
    assert wait_until(lambda: len(receiver.ok()) == 1)
    _, _, signature, body = receiver.ok()[0]
    event = stripe.Webhook.construct_event(body, signature, hook.secret)
    assert event.type == "account.application.deauthorized"
    assert event.account == account
    assert (event.data.object.object, event.data.object.id) == ("application", "ca_emulator")
    assert next(a for a in emulator_state(base)["accounts"] if a["id"] == account)["connected_to"] == {}


def test_oauth_errors_have_oauth_s_shape(base: str) -> None:
    client = platform(base)
    with pytest.raises(stripe.oauth_error.InvalidRequestError):
        params: Any = {"grant_type": "authorization_code", "code": "ac_x", "nope": "1"}
        client.oauth.token(params)
    with pytest.raises(stripe.oauth_error.InvalidClientError):
        client.oauth.deauthorize({"client_id": "ca_someoneElse", "stripe_user_id": DEFAULT_ACCOUNT})
    bad_key = stripe.StripeClient("sk_test_nobody", base_addresses={"api": base, "connect": base})
    with pytest.raises(stripe.oauth_error.InvalidClientError) as caught:
        bad_key.oauth.token({"grant_type": "authorization_code", "code": "ac_x"})
    assert caught.value.http_status == 401
    assert re.search(r"Invalid API Key", str(caught.value.user_message))


def test_a_platform_cannot_connect_its_own_account(base: str) -> None:
    own = create_account(base, id="acct_1Platform", email="me@platform.example", password="password-1",
                         connect=False)
    status, registered = admin(base, "POST", "/_emulator/oauth_clients", {"platform": own["id"]})
    client = stripe.StripeClient(own["secret_keys"][0], base_addresses={"api": base, "connect": base},
                                 client_id=registered["client_id"])
    status, location, page = submit(authorize(client), "sign_in", email="me@platform.example",
                                    password="password-1")
    assert (status, location) == (200, None) and "platform&#x27;s own account" in page
