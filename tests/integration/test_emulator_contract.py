"""The emulator, over HTTP through the unmodified stripe SDK, is as strict as Stripe at the API version it
announces: Stripe-Version honoured, every endpoint's parameters checked against the SDK's own types."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import stripe
from shared.gateway import STRIPE_API_VERSION, payment_intent_view

from stripe_emulator import API_VERSION
from stripe_emulator.resources import Resources
from tests.integration.emulator_fixture import emulator_state, running_emulator, sdk_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_emulator() as url:
        yield url


@pytest.fixture
def client(base: str) -> stripe.StripeClient:
    return sdk_client(base)


def raw(base: str, method: str, path: str, body: str = "", headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, Any], Any]:
    request = urllib.request.Request(
        base + path,
        data=body.encode() if method == "POST" else None,
        method=method,
        headers={"Authorization": "Bearer sk_test_emulator", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def test_the_emulator_announces_the_version_the_gateway_pins(client: stripe.StripeClient, base: str) -> None:
    assert API_VERSION == STRIPE_API_VERSION
    customer = client.v1.customers.create({"email": "version@example.com"})
    assert customer.last_response.headers["Stripe-Version"] == STRIPE_API_VERSION
    # No Stripe-Version header: the account's default, which is the same version.
    status, _, headers = raw(base, "GET", f"/v1/customers/{customer.id}")
    assert (status, headers["Stripe-Version"]) == (200, STRIPE_API_VERSION)
    # Events are rendered at that version.
    assert {event["api_version"] for event in emulator_state(base)["events"]} == {STRIPE_API_VERSION}


@pytest.mark.parametrize("version", ["2024-06-20", "2026-09-30.endive", "2099-01-01.zucchini", "latest"])
def test_a_version_it_does_not_implement_is_refused_loudly(base: str, version: str) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        sdk_client(base, stripe_version=version).v1.customers.create({"email": "old@example.com"})
    assert caught.value.http_status == 400
    assert caught.value.param == "Stripe-Version"
    assert version in str(caught.value.user_message)
    # Refused before anything ran.
    assert all(c["email"] != "old@example.com" for c in emulator_state(base)["customers"])


def test_unknown_parameters_are_refused_by_name(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create({})
    params: Any = {
        "amount": 1000,
        "currency": "usd",
        "customer": customer.id,
        "payment_method": "pm_card_visa",
        "confirm": True,
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never", "foo": "bar"},
    }
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(params)
    assert caught.value.http_status == 400
    assert (caught.value.code, caught.value.param) == ("parameter_unknown", "automatic_payment_methods[foo]")
    assert caught.value.user_message == "Received unknown parameter: automatic_payment_methods[foo]"
    assert caught.value.error is not None and caught.value.error.type == "invalid_request_error"


def test_payment_method_types_is_no_longer_supported(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create({})
    with pytest.raises(stripe.InvalidRequestError) as on_create:
        client.v1.payment_intents.create(
            {"amount": 1000, "currency": "usd", "customer": customer.id, "payment_method_types": ["card"]}
        )
    assert (on_create.value.code, on_create.value.param) == (
        "payment_method_types_no_longer_supported",
        "payment_method_types",
    )
    with pytest.raises(stripe.InvalidRequestError) as on_setup:
        client.v1.setup_intents.create({"customer": customer.id, "payment_method_types": ["card"]})
    assert on_setup.value.code == "payment_method_types_no_longer_supported"
    intent = client.v1.payment_intents.create(
        {"amount": 1000, "currency": "usd", "allowed_payment_method_types": ["card"]}
    )
    assert (intent.payment_method_types, intent.allowed_payment_method_types) == (["card"], ["card"])
    assert intent.automatic_payment_methods is None
    for call in (client.v1.payment_intents.update, client.v1.payment_intents.confirm):
        with pytest.raises(stripe.InvalidRequestError) as later:
            call(intent.id, {"payment_method_types": ["card"]})
        assert later.value.code == "payment_method_types_no_longer_supported"


def test_allowed_and_automatic_payment_methods_are_mutually_exclusive(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.setup_intents.create(
            {
                "allowed_payment_method_types": ["card"],
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            }
        )
    assert caught.value.param == "automatic_payment_methods"
    assert "only specify one of these parameters" in str(caught.value.user_message)


def test_confirming_dynamic_payment_methods_without_return_url_is_refused(
    client: stripe.StripeClient,
) -> None:
    customer = client.v1.customers.create({})
    for create in (
        lambda: client.v1.payment_intents.create(
            {"amount": 1000, "currency": "usd", "customer": customer.id, "payment_method": "pm_card_visa",
             "confirm": True}
        ),
        lambda: client.v1.setup_intents.create(
            {"customer": customer.id, "payment_method": "pm_card_visa", "confirm": True}
        ),
    ):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            create()
        assert str(caught.value.user_message).startswith("A return_url must be specified")
    # Card only, or no redirecting methods, or a return_url: then it confirms.
    for extra in (
        {"allowed_payment_method_types": ["card"]},
        {"automatic_payment_methods": {"enabled": True, "allow_redirects": "never"}},
        {"return_url": "https://shop.example/back"},
    ):
        intent = client.v1.setup_intents.create(
            {"customer": customer.id, "payment_method": "pm_card_visa", "confirm": True, **extra}
        )
        assert intent.status == "succeeded", extra


def test_every_endpoint_it_serves_checks_its_parameters(base: str) -> None:
    routes = [(method, regex.pattern) for method, regex, _, _ in Resources(lambda *a: None).routes]
    assert len(routes) >= 30
    for method, pattern in routes:
        path = pattern.strip("^$").replace("([^/]+)", "x_1")
        if method == "POST":
            status, body, _ = raw(base, method, path, "zz_not_a_stripe_param=1")
        else:
            status, body, _ = raw(base, method, path + "?zz_not_a_stripe_param=1")
        assert status == 400, (method, path, body)
        assert body["error"]["code"] == "parameter_unknown", (method, path, body)
        assert body["error"]["param"] == "zz_not_a_stripe_param"


def test_known_parameters_it_does_not_model_are_accepted_as_stripe_accepts_them(
    client: stripe.StripeClient,
) -> None:
    # Valid at this API version per the SDK's types, so not refused (it was, with the old hand-typed lists).
    customer = client.v1.customers.create({"email": "x@example.com", "validate": True,
                                           "invoice_prefix": "ABCD", "expand": ["invoice_settings"]})
    assert customer.email == "x@example.com"


def test_the_bank_page_is_reached_whichever_next_action_the_confirm_answers(
    client: stripe.StripeClient, base: str
) -> None:
    customer = client.v1.customers.create({})
    pages = []
    for sdk in (False, True):
        intent = client.v1.payment_intents.create(
            {"amount": 1500, "currency": "usd", "customer": customer.id,
             "payment_method": "pm_card_authenticationRequired", "allowed_payment_method_types": ["card"],
             "confirm": True, "return_url": "https://shop.example/back", "use_stripe_sdk": sdk}
        )
        view = payment_intent_view(intent.to_dict())
        assert view.next_action_type == ("use_stripe_sdk" if sdk else "redirect_to_url")
        assert view.next_action_redirect_url == f"{base}/_emulator/3ds/{intent.id}"
        with urllib.request.urlopen(view.next_action_redirect_url, timeout=10) as page:
            pages.append(page.status)
        # Completing it sends the browser back to the return_url, as the Client Zone expects.
        connection = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=10)
        connection.request("GET", f"/_emulator/3ds/{intent.id}?outcome=succeed")
        answer = connection.getresponse()
        answer.read()
        connection.close()
        assert answer.status == 302
        assert (answer.getheader("Location") or "").startswith(
            f"https://shop.example/back?payment_intent={intent.id}&"
        )
        assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    assert pages == [200, 200]
