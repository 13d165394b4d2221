"""The OpenAPI description at /api/openapi.json, held to the app by schemathesis.

The app runs in-process (Flask's WSGI, no server), on a migrated SQLite database in a temporary
OFFSESSION_HOME, against the Stripe emulator in a thread, with a memory:// broker, so publishing a
charge succeeds without Redis. Client 1 with a card and invoice 1 exist, and Stripe is connected,
so the generated requests reach the code behind the 404s and 409s.

Every generated request must get no 5xx, a documented status, a body that matches the documented
schema, acceptance when the input is schema-valid (bar the business rules answered 402/404/409/422),
refusal with a 4xx when it is not, and every 4xx in the Error shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from schemathesis.core.result import Err
from sqlalchemy import select, update

import web
from shared.adapters.database import session_scope
from shared.adapters.migrate import upgrade
from shared.bootstrap import Runtime, bootstrap
from shared.domain.models import Card, Settings
from tests.support.emulator import running_emulator
from web.openapi import document

pytestmark = pytest.mark.integration

API_TOKEN = "os_openapi-test-token"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}
# Schema-valid requests may still meet a business rule: a declined card (402), an id that names no row
# (404), an invoice that cannot be charged now (409), a used invoice number or an amount above what is
# due (422). What they must never get is a 400/413/415: the schema promised the shape was fine.
POSITIVE_STATUSES = ["2xx", "402", "404", "409", "422"]


@dataclass
class World:
    runtime: Runtime
    app: Flask
    client: FlaskClient

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = self.client.open(path, method=method, json=body, headers=BEARER)
        assert response.status_code < 300, (path, response.status_code, response.get_data(as_text=True))
        return response.get_json()

    def restore(self) -> None:
        """Undo what a generated request may have changed that other operations depend on: Stripe
        connected on the platform account with card payments on, and client 1 with a card."""
        with session_scope(self.runtime.sessions) as session:
            session.execute(
                update(Settings)
                .where(Settings.id == 1)
                .values(stripe_connected=True, stripe_account_id=None, online_card_payments_enabled=True)
            )
            has_card = session.scalar(select(Card.id).where(Card.client_id == 1).limit(1)) is not None
        if not has_card:
            self.api("POST", "/api/clients/1/cards", {"payment_method": "pm_card_visa"})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("openapi")
    database_url = f"sqlite:///{home / 'offsession.db'}"
    upgrade(database_url)
    with running_emulator() as emulator, pytest.MonkeyPatch.context() as mp:
        for name in ("REDIS_URL", "MAIL_URL", "PUBLIC_BASE_URL", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"):
            mp.delenv(name, raising=False)
        for name, value in {
            "OFFSESSION_HOME": str(home),
            "DATABASE_URL": database_url,
            "OFFSESSION_API_TOKEN": API_TOKEN,
            "SECRET_KEY": "openapi-test-secret",
            "CELERY_BROKER_URL": "memory://",
            "STRIPE_API_BASE": emulator,
            "STRIPE_RATE_LIMIT": "1000",
        }.items():
            mp.setenv(name, value)
        runtime = bootstrap()
        try:
            app = web.create_app(runtime=runtime)
            world = World(runtime, app, app.test_client())
            world.api("PUT", "/api/settings", {"stripe_connected": True})
            client = world.api("POST", "/api/clients", {"name": "Ada Lovelace", "email": "ada@example.com"})
            world.api("POST", f"/api/clients/{client['id']}/cards", {"payment_method": "pm_card_visa"})
            invoice = world.api(
                "POST",
                "/api/invoices",
                {
                    "client_id": client["id"],
                    "number": "INV-1",
                    "currency": "usd",
                    "total": 10_000,
                    "due_date": "2026-12-31",
                },
            )
            assert client["id"] == invoice["id"] == 1
            yield world
        finally:
            runtime.close()


# ---- the document ----------------------------------------------------------------------------------


def test_the_document_is_valid_openapi(world: World) -> None:
    response = world.client.get("/api/openapi.json")  # no token: it is public
    assert response.status_code == 200
    assert response.get_json() == json.loads(json.dumps(document()))
    schema = schemathesis.openapi.from_dict(response.get_json())
    schema.validate()  # raises jsonschema_rs.ValidationError against the OpenAPI 3.0 meta-schema
    # Every operation loads: its references resolve and its parameters make sense to schemathesis.
    operations = list(schema.get_all_operations())
    assert not [op.err() for op in operations if isinstance(op, Err)]
    assert len(operations) == sum(len(item) for item in document()["paths"].values())
    # Every pattern compiles for the validators (Rust) and for the generators (Python).
    for pattern in _patterns(document()):
        jsonschema_rs.validator_for({"pattern": pattern})
        re.compile(pattern)


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield node["pattern"]
        for value in node.values():
            yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_the_document_describes_every_route(world: World) -> None:
    documented = {(method.upper(), path) for path, item in document()["paths"].items() for method in item}
    routed = set()
    for rule in world.app.url_map.iter_rules():
        if not rule.rule.startswith(("/api/", "/webhooks/", "/healthz")):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routed |= {(m, path) for m in rule.methods or () if m not in {"HEAD", "OPTIONS"}}
    assert documented == routed


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {API_TOKEN}"}],
    ids=["no token", "wrong token", "not bearer"],
)
def test_every_api_route_but_the_document_wants_the_token(world: World, headers: dict[str, str]) -> None:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            url = re.sub(r"\{charge_id\}", "00000000-0000-4000-8000-000000000000", path)
            url = re.sub(r"\{\w+\}", "1", url)
            response = world.client.open(url, method=method.upper(), json={}, headers=headers)
            if operation.get("security") == []:
                assert response.status_code != 401, (method, path)
                continue
            assert response.status_code == 401, (method, path, response.status_code)
            body = response.get_json()
            assert body["error"] == "unauthorized" and body["message"], (method, path, body)


# ---- schemathesis ------------------------------------------------------------------------------------


class _LateApp:
    """The WSGI app schemathesis sends to (its checks' probes included), bound once `world` has built it."""

    app: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        assert self.app is not None, "the world fixture builds the app"
        return self.app(environ, start_response)


LATE_APP = _LateApp()

# Loaded from the same dict the app serves (the first test proves they are equal) rather than through
# the app: the app needs this module's environment, which only exists once the `world` fixture runs,
# and schemathesis's lazy fixture loader does not work with pytest 9.2.
schema = schemathesis.openapi.from_dict(
    json.loads(json.dumps(document())),  # a copy: schemathesis may write inferred links into it
    config=schemathesis.Config.from_dict(
        {
            "headers": BEARER,
            "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES}},
            # No generated event carries a valid Stripe-Signature: every one is rightly refused.
            "operations": [
                {
                    "include-path": "/webhooks/stripe",
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                }
            ],
        }
    ),
)
schema.app = LATE_APP


def error_shape(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """Every 4xx and 5xx is the JSON Error shape, whatever the status."""
    if response.status_code < 400:
        return
    content_type = ",".join(response.headers.get("content-type", []))
    assert content_type.startswith("application/json"), f"{response.status_code} answered {content_type}"
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str) and body["message"], body


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_answers_as_documented(case: schemathesis.Case, world: World) -> None:
    LATE_APP.app = world.app
    world.restore()
    case.call_and_validate(additional_checks=[error_shape])
