"""The emulator's parameter contract (stripe_emulator/stripe_schema.json) is the stripe SDK's: generated
from the installed SDK's parameter types, at the API version the gateway pins, for every endpoint the
emulator serves; over HTTP, every endpoint refuses what Stripe refuses."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import stripe
from stripe._api_version import _ApiVersion

from shared.adapters.stripe_wire import STRIPE_API_VERSION
from stripe_emulator import oauth, schema, schema_gen
from stripe_emulator.resources import ROUTES
from stripe_emulator.wire import ApiError
from tests.support.emulator import raw


def served_endpoints() -> list[str]:
    return [contract.key for _, _, _, contract in (*ROUTES, *oauth.ROUTES)]


def test_committed_schema_is_what_the_installed_sdk_generates() -> None:
    # Fails after an SDK upgrade that changes the contract: regenerate with
    # `python -m stripe_emulator.schema_gen` and commit it with the version bump.
    assert schema_gen.SCHEMA_PATH.read_bytes() == schema_gen.render()


def test_the_schema_ships_with_the_package() -> None:
    # Read at run time: a wheel without it would start no emulator.
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]
    assert schema_gen.SCHEMA_PATH.name in package_data["stripe_emulator"]


def test_one_api_version_everywhere() -> None:
    assert schema.API_VERSION == _ApiVersion.CURRENT == STRIPE_API_VERSION


def test_every_served_endpoint_takes_exactly_the_sdk_params_of_its_service_method() -> None:
    client = stripe.StripeClient("sk_test_unit")
    by_sdk_method = {
        schema_gen.endpoint_key(*schema_gen.sdk_endpoint(client, path, name)[:2]): (path, name)
        for path, name in schema_gen.ENDPOINTS
    }
    served = served_endpoints()
    assert len(served) == len(set(served)) >= 30
    for key in served:
        assert key in by_sdk_method, f"{key} is served but not generated from the SDK"
        _, _, params_type = schema_gen.sdk_endpoint(client, *by_sdk_method[key])
        sdk_names = set(params_type.__annotations__) - set(stripe.RequestOptions.__annotations__)
        accepted = set(schema.definition(schema.endpoint(key).params)["fields"])
        assert accepted == sdk_names, key


def test_the_schema_also_covers_the_endpoints_the_product_will_need() -> None:
    keys = set(schema.endpoints())
    for key in (
        "POST /v1/checkout/sessions",
        "GET /v1/checkout/sessions/{id}",
        "POST /v1/checkout/sessions/{id}/expire",
        "GET /v1/account",
        "POST /v1/webhook_endpoints",
        "DELETE /v1/webhook_endpoints/{id}",
        "POST /v1/refunds/{id}/cancel",
        "GET /v1/disputes/{id}",
        "POST /oauth/token",
        "POST /oauth/deauthorize",
    ):
        assert key in keys


def test_nested_types_enums_and_unset_values_come_from_the_sdk() -> None:
    create = schema.definition(schema.endpoint("POST /v1/payment_intents").params)
    fields = create["fields"]
    assert "payment_method_types" not in fields  # removed in 2026-09-30.endive
    assert "card" in fields["allowed_payment_method_types"]["list"]["enum"]
    assert fields["amount"] == "int" and set(create["required"]) == {"amount", "currency"}
    assert fields["off_session"] == {"enum": ["one_off", "recurring"], "scalar": ["bool"]}
    apm = schema.definition(fields["automatic_payment_methods"]["obj"])
    assert apm == {
        "fields": {"allow_redirects": {"enum": ["always", "never"]}, "enabled": "bool"},
        "required": ["enabled"],
    }
    update = schema.definition(schema.endpoint("POST /v1/customers/{id}").params)
    assert update["fields"]["metadata"] == {"empty": True, "map": "str"}


def refused(key: str, params: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ApiError) as caught:
        schema.endpoint(key).check(params)
    assert caught.value.status == 400
    assert caught.value.error["type"] == "invalid_request_error"
    return caught.value.error


PI_CREATE = "POST /v1/payment_intents"
CHARGE = {"amount": "1000", "currency": "usd", "confirm": "true", "off_session": "true"}


def test_a_valid_request_passes() -> None:
    schema.endpoint(PI_CREATE).check(
        {**CHARGE, "allowed_payment_method_types": ["card"], "metadata": {"invoice_id": "7"}, "expand": []}
    )
    schema.endpoint("GET /v1/payment_intents").check({"created": {"gte": "1700000000"}, "limit": "100"})
    schema.endpoint("POST /v1/customers/{id}").check({"invoice_settings": {"default_payment_method": ""}})


@pytest.mark.parametrize(
    ("params", "param", "code", "message"),
    [
        ({"widget": "1"}, "widget", "parameter_unknown", "Received unknown parameter: widget"),
        (
            {"automatic_payment_methods": {"enabled": "true", "foo": "1"}},
            "automatic_payment_methods[foo]",
            "parameter_unknown",
            "Received unknown parameter: automatic_payment_methods[foo]",
        ),
        (
            {"payment_method_data": {"type": "ideal", "billing_details": {"nickname": "x"}}},
            "payment_method_data[billing_details][nickname]",
            "parameter_unknown",
            None,
        ),
        (
            {"automatic_payment_methods": {"allow_redirects": "never"}},
            "automatic_payment_methods[enabled]",
            "parameter_missing",
            "Missing required param: automatic_payment_methods[enabled].",
        ),
        ({"amount": "ten"}, "amount", "parameter_invalid_integer", "Invalid integer: ten"),
        ({"confirm": "yes"}, "confirm", None, "Invalid boolean: yes"),
        (
            {"capture_method": "later"},
            "capture_method",
            None,
            "Invalid capture_method: must be one of automatic, automatic_async, or manual",
        ),
        (
            {"off_session": "sometimes"},
            "off_session",
            None,
            "Invalid off_session: must be one of one_off, recurring, true, or false",
        ),
        ({"amount": ""}, "amount", "parameter_invalid_empty", None),
        ({"allowed_payment_method_types": ["card", "carrier_pigeon"]}, "allowed_payment_method_types[1]",
         None, None),
        ({"metadata": {"k": {"nested": "x"}}}, "metadata[k]", None, None),
    ],
)
def test_refusals_in_stripes_shape(
    params: dict[str, Any], param: str, code: str | None, message: str | None
) -> None:
    error = refused(PI_CREATE, {**CHARGE, **params})
    assert error["param"] == param
    assert error.get("code") == code
    if message is not None:
        assert error["message"] == message


def test_missing_top_level_param() -> None:
    error = refused(PI_CREATE, {"currency": "usd"})
    assert (error["param"], error["code"]) == ("amount", "parameter_missing")


@pytest.mark.parametrize(
    "key",
    [
        "POST /v1/payment_intents",
        "POST /v1/payment_intents/{id}",
        "POST /v1/payment_intents/{id}/confirm",
        "POST /v1/setup_intents",
        "POST /v1/setup_intents/{id}",
        "POST /v1/setup_intents/{id}/confirm",
    ],
)
def test_payment_method_types_is_refused_with_its_own_code(key: str) -> None:
    error = refused(key, {"payment_method_types": ["card"]})
    assert error["param"] == "payment_method_types"
    assert error["code"] == "payment_method_types_no_longer_supported"
    assert "allowed_payment_method_types" in error["message"]


def test_checkout_sessions_do_not_take_payment_method_types_either() -> None:
    error = refused("POST /v1/checkout/sessions", {"mode": "setup", "payment_method_types": ["card"]})
    assert (error["param"], error["code"]) == ("payment_method_types", "parameter_unknown")


@pytest.mark.parametrize(
    ("key", "other", "value"),
    [
        (PI_CREATE, "automatic_payment_methods", {"enabled": "true"}),
        (PI_CREATE, "excluded_payment_method_types", ["ideal"]),
        (PI_CREATE, "payment_method_configuration", "pmc_1"),
        ("POST /v1/payment_intents/{id}", "excluded_payment_method_types", ["ideal"]),
        ("POST /v1/setup_intents", "automatic_payment_methods", {"enabled": "true"}),
        ("POST /v1/checkout/sessions", "excluded_payment_method_types", ["ideal"]),
    ],
)
def test_allowed_payment_method_types_excludes_the_other_choices(key: str, other: str, value: Any) -> None:
    params = {**(CHARGE if key == PI_CREATE else {}), "allowed_payment_method_types": ["card"], other: value}
    error = refused(key, params)
    assert error["param"] == other
    assert error["message"] == (
        f"You may only specify one of these parameters: allowed_payment_method_types, {other}."
    )


def test_stripe_version() -> None:
    schema.check_version(None)
    schema.check_version(schema.API_VERSION)
    with pytest.raises(ApiError, match="Invalid Stripe API version: yesterday"):
        schema.check_version("yesterday")
    with pytest.raises(ApiError, match=r"implements Stripe API version 2026-10-28\.endive only") as caught:
        schema.check_version("2024-06-20")
    assert (caught.value.status, caught.value.error["param"]) == (400, "Stripe-Version")


def test_generator_reads_method_path_and_params_type_from_the_sdk_source() -> None:
    client = stripe.StripeClient("sk_test_unit")
    method, path, params_type = schema_gen.sdk_endpoint(client, "v1.payment_intents", "confirm")
    assert (method, path, params_type.__name__) == ("post", "/v1/payment_intents/{intent}/confirm",
                                                     "PaymentIntentConfirmParams")
    assert schema_gen.endpoint_key(method, path) == "POST /v1/payment_intents/{id}/confirm"
    assert {"return_url", "off_session", "use_stripe_sdk"} <= set(params_type.__annotations__)


# ---- over HTTP, through the stripe SDK ---------------------------------------------------------------


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
def test_every_endpoint_it_serves_checks_its_parameters(base: str) -> None:
    routes = [(method, regex.pattern) for method, regex, _, _ in ROUTES]
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


@pytest.mark.integration
def test_known_parameters_it_does_not_model_are_accepted_as_stripe_accepts_them(
    client: stripe.StripeClient,
) -> None:
    # Valid at this API version per the SDK's types, so not refused (it was, with the old hand-typed lists).
    customer = client.v1.customers.create({"email": "x@example.com", "validate": True,
                                           "invoice_prefix": "ABCD", "expand": ["invoice_settings"]})
    assert customer.email == "x@example.com"
