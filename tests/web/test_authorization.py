"""Who may use what: every admin page wants an admin, every Client Zone page a client, every API route
the bearer token. The routes come from the app's own URL map, so a route added later is checked too."""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

from flask.testing import FlaskClient

from tests.support.web_app import (
    API_TOKEN,
    Env,
    World,
    bearer,
    csrf_of,
    methods,
    rules,
    sign_in_admin,
    sign_in_client,
    url_for_rule,
)

# Signing in and out is open to all; everything else under /admin needs an admin.
ADMIN_OPEN = {"admin.login", "admin.logout"}
# The sign-in pages, the emailed-link landing and its button (the token is the credential) are open.
CLIENT_OPEN = {"client.login", "client.open_link", "client.use_link", "client.logout"}
API_OPEN = {"/api/openapi.json"}

# A body that would be valid for most routes: only the missing credential may be why they refuse.
PLAUSIBLE_BODY = {
    "name": "Mallory",
    "email": "mallory@example.com",
    "payment_method": "pm_card_visa",
    "stripe_connected": False,
    "amount": 100,
    "method": "cash",
}


def _sessions(env: Env, world: World) -> dict[str, FlaskClient]:
    anonymous = env.app.test_client()
    csrf_of(anonymous)  # an anonymous session with a CSRF token: the sign-in guard must answer, not CSRF
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    client = env.app.test_client()
    sign_in_client(client, env, world.a.email)
    return {"anonymous": anonymous, "admin": admin, "client": client}


def _refused_to_sign_in(answer_status: int, location: str | None, login_path: str) -> bool:
    if answer_status in (401, 403):
        return True
    return answer_status in (302, 303) and urlsplit(location or "").path == login_path


def test_every_admin_route_refuses_anonymous_users_and_client_sessions(env: Env, world: World) -> None:
    sessions = _sessions(env, world)
    before = env.snapshot()
    checked = 0
    for who in ("anonymous", "client"):
        http = sessions[who]
        token = csrf_of(http)
        for rule in rules(env.app, "/admin"):
            if rule.endpoint in ADMIN_OPEN:
                continue
            url = url_for_rule(rule, world.b)
            for method in methods(rule):
                data = None if method == "GET" else {"csrf_token": token, "amount": "1.00", "method": "cash"}
                answer = http.open(url, method=method, data=data)
                assert _refused_to_sign_in(
                    answer.status_code, answer.headers.get("Location"), "/admin/login"
                ), f"{who} {method} {url}: {answer.status_code}"
                assert b"Bob B" not in answer.data and b"BOB-" not in answer.data
                checked += 1
    # Every admin page and form, twice (13 routes today): a shrinking map would be a broken test.
    assert checked >= 2 * 13
    assert env.snapshot() == before


def test_every_client_zone_route_refuses_anonymous_users_and_admin_sessions(env: Env, world: World) -> None:
    sessions = _sessions(env, world)
    before = env.snapshot()
    checked = 0
    for who in ("anonymous", "admin"):
        http = sessions[who]
        token = csrf_of(http)
        for rule in rules(env.app, "/client"):
            if rule.endpoint in CLIENT_OPEN:
                continue
            url = url_for_rule(rule, world.a)
            for method in methods(rule):
                data = None if method == "GET" else {"csrf_token": token, "payment_method": "pm_card_visa"}
                answer = http.open(url, method=method, data=data)
                assert _refused_to_sign_in(
                    answer.status_code, answer.headers.get("Location"), "/client/login"
                ), f"{who} {method} {url}: {answer.status_code}"
                checked += 1
    assert checked >= 2 * 10
    assert env.snapshot() == before


def _api_attempts(sessions: dict[str, FlaskClient]) -> list[tuple[str, FlaskClient, dict[str, str]]]:
    anonymous = sessions["anonymous"]
    return [
        ("no credentials", anonymous, {}),
        ("a wrong token", anonymous, bearer("os_not-the-token")),
        ("the token minus its last character", anonymous, bearer(API_TOKEN[:-1])),
        ("the token plus a character", anonymous, bearer(API_TOKEN + "x")),
        ("an empty bearer", anonymous, {"Authorization": "Bearer "}),
        ("the token without a scheme", anonymous, {"Authorization": API_TOKEN}),
        (
            "the token as Basic auth",
            anonymous,
            {"Authorization": "Basic " + base64.b64encode(f"api:{API_TOKEN}".encode()).decode()},
        ),
        ("the token in another header", anonymous, {"X-Api-Token": API_TOKEN}),
        ("an admin session cookie", sessions["admin"], {}),
        ("a client session cookie", sessions["client"], {}),
    ]


def test_every_api_route_answers_401_json_without_the_bearer_token(env: Env, world: World) -> None:
    sessions = _sessions(env, world)
    before = env.snapshot()
    checked = 0
    for rule in rules(env.app, "/api/"):
        if rule.rule in API_OPEN:
            continue
        url = url_for_rule(rule, world.b)
        for method in methods(rule):
            for what, http, headers in _api_attempts(sessions):
                body = PLAUSIBLE_BODY if method in ("POST", "PUT", "PATCH") else None
                # The token in the query string must not count either.
                answer = http.open(
                    f"{url}?access_token={API_TOKEN}", method=method, headers=headers, json=body
                )
                assert answer.status_code == 401, f"{method} {url} with {what}: {answer.status_code}"
                assert answer.is_json and answer.json["error"] == "unauthorized", (method, url, what)
                assert answer.json["message"]
                checked += 1
    assert checked >= 10 * 14
    assert env.snapshot() == before


def test_the_api_token_alone_is_enough(env: Env, world: World) -> None:
    # The control for the test above: the same kind of request with the token is let in.
    answer = env.app.test_client().get(f"/api/invoices/{world.b.invoice_id}", headers=bearer())
    assert answer.status_code == 200 and answer.json["id"] == world.b.invoice_id


# Outside /admin, /client and /api: what is open and why. The webhook proves itself with Stripe's
# signature, /healthz says only ok/unavailable, / redirects to the sign-in page, /static is the CSS and JS.
OTHER_OPEN = {"/", "/healthz", "/webhooks/stripe", "/static/<path:filename>"}
# Prometheus scrapes with a bearer token: OFFSESSION_METRICS_TOKEN when set, or the API token.
TOKEN_ONLY = {"/metrics"}


def test_every_other_route_is_known_and_metrics_wants_the_token(env: Env, world: World) -> None:
    others = {
        r.rule for r in env.app.url_map.iter_rules() if not r.rule.startswith(("/admin", "/client", "/api/"))
    }
    # A new route outside the three areas must be added to one of the lists, with its reason.
    assert others == OTHER_OPEN | TOKEN_ONLY
    sessions = _sessions(env, world)
    for what, http, headers in _api_attempts(sessions):
        answer = http.get(f"/metrics?access_token={API_TOKEN}", headers=headers)
        assert answer.status_code == 401, f"/metrics with {what}: {answer.status_code}"
        assert b"offsession_" not in answer.data
    answer = sessions["anonymous"].get("/metrics", headers=bearer())
    assert answer.status_code == 200 and b"offsession_charge_attempts" in answer.data
