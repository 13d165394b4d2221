"""Behind a TLS reverse proxy: OFFSESSION_TRUSTED_PROXIES says how many X-Forwarded-* hops to believe, so
per-IP sign-in limits count real clients and request.is_secure is right, while a forged hop changes
nothing; HSTS is sent when PUBLIC_BASE_URL is https."""

from __future__ import annotations

import pytest
from flask import Flask, request
from sqlalchemy import select

import web
from shared.domain.models import AuditEvent
from shared.services.login_throttle import ADMIN_FAILURES_PER_EMAIL_AND_IP
from tests.support.web_app import Env, World, sign_in_admin

CLIENT_A, CLIENT_B, FORGED = "203.0.113.5", "203.0.113.6", "198.51.100.77"


def app_with(monkeypatch: pytest.MonkeyPatch, **environment: str) -> Flask:
    """The app as create_app() builds it from this environment, plus a probe of what a view sees."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    app = web.create_app()
    app.add_url_rule(
        "/_probe",
        "probe",
        lambda: {"ip": request.remote_addr, "secure": request.is_secure, "host": request.host},
    )
    return app


def via_proxy(client_ip: str, *, forged: str | None = None) -> dict[str, object]:
    """What one proxy in front sends: it appends the peer it saw to whatever the client claimed."""
    chain = f"{forged}, {client_ip}" if forged else client_ip
    return {
        "headers": {
            "X-Forwarded-For": chain,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "pay.example.com",
        },
        "environ_overrides": {"REMOTE_ADDR": "10.0.0.2"},  # the proxy itself
    }


def test_without_a_trusted_proxy_forwarded_headers_are_ignored(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OFFSESSION_TRUSTED_PROXIES", raising=False)
    seen = app_with(monkeypatch).test_client().get("/_probe", **via_proxy(CLIENT_A)).get_json()
    assert seen == {"ip": "10.0.0.2", "secure": False, "host": "localhost"}


def test_one_trusted_proxy_gives_the_client_s_address_and_scheme(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = app_with(monkeypatch, OFFSESSION_TRUSTED_PROXIES="1").test_client()
    assert http.get("/_probe", **via_proxy(CLIENT_A)).get_json() == {
        "ip": CLIENT_A,
        "secure": True,
        "host": "pay.example.com",
    }
    # What the client wrote into X-Forwarded-For itself is one hop further: not believed.
    assert http.get("/_probe", **via_proxy(CLIENT_A, forged=FORGED)).get_json()["ip"] == CLIENT_A


def test_two_trusted_proxies_believe_two_hops(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    http = app_with(monkeypatch, OFFSESSION_TRUSTED_PROXIES="2").test_client()
    # Client -> CDN (appends the client) -> load balancer (appends the CDN) -> the app.
    seen = http.get(
        "/_probe",
        headers={"X-Forwarded-For": f"{FORGED}, {CLIENT_A}, 10.0.0.9"},
        environ_overrides={"REMOTE_ADDR": "10.0.0.2"},
    ).get_json()
    assert seen["ip"] == CLIENT_A


def test_sign_in_limits_count_real_clients_behind_the_proxy(
    env: Env, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_with(monkeypatch, OFFSESSION_TRUSTED_PROXIES="1")
    attacker = app.test_client()
    for _ in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events):
        assert sign_in_admin(attacker, password="wrong", **via_proxy(CLIENT_A)).status_code == 401
    assert sign_in_admin(attacker, **via_proxy(CLIENT_A)).status_code == 429
    # A forged first hop does not make the attacker someone else...
    assert sign_in_admin(attacker, **via_proxy(CLIENT_A, forged=CLIENT_B)).status_code == 429
    # ...and the real admin behind the same proxy is not locked out with them.
    assert sign_in_admin(app.test_client(), **via_proxy(CLIENT_B)).status_code == 302
    with env.session() as s:
        failures = s.scalars(select(AuditEvent).where(AuditEvent.action == "admin.sign_in_failed")).all()
    assert {f.detail["ip"] for f in failures} == {CLIENT_A}


@pytest.mark.parametrize("path", ["/admin/login", "/client/login", "/healthz", "/api/invoices"])
def test_https_answers_carry_strict_transport_security(
    env: Env, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    https = app_with(monkeypatch, PUBLIC_BASE_URL="https://pay.example.com").test_client()
    hsts = https.get(path, base_url="https://pay.example.com").headers.get("Strict-Transport-Security", "")
    assert "max-age=31536000" in hsts
    monkeypatch.setenv("PUBLIC_BASE_URL", "http://127.0.0.1:8000")
    plain = app_with(monkeypatch).test_client()
    assert "Strict-Transport-Security" not in plain.get(path).headers
