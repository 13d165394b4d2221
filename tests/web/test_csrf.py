"""CSRF: every form of the admin pages and the Client Zone refuses a POST without the session's token,
or with any other token, even from a signed-in browser; and nothing changes."""

from __future__ import annotations

from flask.testing import FlaskClient
from werkzeug.routing import Rule

from tests.support.web_app import (
    CSRF_MESSAGE,
    Env,
    Party,
    World,
    csrf_of,
    rules,
    sign_in_admin,
    sign_in_client,
    url_for_rule,
)

# Signing out last: it ends the session the other checks need.
LAST = ("admin.logout", "client.logout")


def _post_rules(env: Env, prefix: str) -> list[Rule]:
    found = [r for r in rules(env.app, prefix) if "POST" in (r.methods or set())]
    return sorted(found, key=lambda r: r.endpoint in LAST)


def _forged_tokens(http: FlaskClient, env: Env) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    other = env.app.test_client()
    someone_elses = csrf_of(other)  # a real token, of another session
    assert someone_elses != csrf_of(http)
    return [
        ("no token", {}, {}),
        ("an empty token", {"csrf_token": ""}, {}),
        ("a made-up token", {"csrf_token": "forged-token"}, {}),
        ("another session's token", {"csrf_token": someone_elses}, {}),
        ("a made-up token in the header", {}, {"X-CSRF-Token": "forged-token"}),
    ]


def _check_blueprint(env: Env, http: FlaskClient, prefix: str, party: Party, minimum: int) -> None:
    form = {"email": "ops@example.com", "password": "whatever-it-is", "amount": "1.00", "method": "cash"}
    before = env.snapshot()
    post_rules = _post_rules(env, prefix)
    assert len(post_rules) >= minimum, [r.rule for r in post_rules]
    for rule in post_rules:
        url = url_for_rule(rule, party)
        for what, token, headers in _forged_tokens(http, env):
            answer = http.post(url, data={**form, **token}, headers=headers)
            assert answer.status_code == 400, f"POST {url} with {what}: {answer.status_code}"
            assert CSRF_MESSAGE in answer.get_data(as_text=True)
    assert env.snapshot() == before
    # The control: with the session's own token the same posts get past the check.
    for rule in post_rules:
        url = url_for_rule(rule, party)
        answer = http.post(url, data={**form, "csrf_token": csrf_of(http)})
        assert CSRF_MESSAGE not in answer.get_data(as_text=True), url


def test_admin_forms_refuse_a_missing_or_wrong_csrf_token(env: Env, world: World) -> None:
    http = env.app.test_client()
    assert sign_in_admin(http).status_code == 302
    # login, logout, charge, payments, cancel, check, settings
    _check_blueprint(env, http, "/admin", world.b, minimum=7)


def test_client_zone_forms_refuse_a_missing_or_wrong_csrf_token(env: Env, world: World) -> None:
    http = env.app.test_client()
    sign_in_client(http, env, world.a.email)
    # login, logout, pay, authenticate, add card, default card, delete card
    _check_blueprint(env, http, "/client", world.a, minimum=7)


def test_the_json_charge_button_needs_the_token_too(env: Env, world: World) -> None:
    # The Charge buyer button posts with fetch and the X-CSRF-Token header: a JSON accept is no way around.
    http = env.app.test_client()
    assert sign_in_admin(http).status_code == 302
    before = env.snapshot()
    url = f"/admin/invoices/{world.a.invoice_id}/charge"
    answer = http.post(url, headers={"Accept": "application/json"})
    assert answer.status_code == 400 and answer.json["error"] == "bad_request"
    assert env.snapshot() == before
    ok = http.post(url, headers={"Accept": "application/json", "X-CSRF-Token": csrf_of(http)})
    assert ok.status_code == 202 and ok.json["status"] == "queued"
