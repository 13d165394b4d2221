"""Security headers on pages, API answers and errors alike; the session cookie's flags."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie

import pytest
from werkzeug.test import TestResponse

import web
from tests.support.web_app import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Env,
    World,
    bearer,
    sign_in_admin,
    sign_in_client,
)

SAFE_REFERRER_POLICIES = {"no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"}


def _csp(answer: TestResponse) -> dict[str, list[str]]:
    header = answer.headers.get("Content-Security-Policy", "")
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


def _check_headers(what: str, answer: TestResponse) -> None:
    csp = _csp(answer)
    scripts = csp.get("script-src", csp.get("default-src"))
    assert scripts, f"{what}: no script-src nor default-src"
    assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"} & set(scripts), what
    assert csp.get("frame-ancestors") == ["'none'"], what
    assert csp.get("object-src") == ["'none'"], what
    assert csp.get("base-uri") in (["'none'"], ["'self'"]), what
    assert answer.headers.get("X-Content-Type-Options") == "nosniff", what
    assert answer.headers.get("Referrer-Policy") in SAFE_REFERRER_POLICIES, what
    assert answer.headers.get("X-Frame-Options") == "DENY", what


def test_every_kind_of_answer_carries_the_security_headers(env: Env, world: World) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    client = env.app.test_client()
    sign_in_client(client, env, world.a.email)
    anonymous = env.app.test_client()
    answers = {
        "admin sign-in page": anonymous.get("/admin/login"),
        "client sign-in page": anonymous.get("/client/login"),
        "admin page": admin.get(f"/admin/invoices/{world.a.invoice_id}"),
        "admin JSON": admin.get(f"/admin/charges/{world.a.charge_id}.json"),
        "client page": client.get("/client/invoices"),
        "client JSON": client.get(f"/client/charges/{world.a.charge_id}.json"),
        "API answer": anonymous.get(f"/api/invoices/{world.a.invoice_id}", headers=bearer()),
        "API 401": anonymous.get(f"/api/invoices/{world.a.invoice_id}"),
        "API 404": anonymous.get("/api/invoices/987654", headers=bearer()),
        "API 405": anonymous.delete("/api/invoices/1", headers=bearer()),
        "API 413": anonymous.post("/api/clients", data=b"x" * (1024 * 1024 + 1), headers=bearer()),
        "webhook 400": anonymous.post(
            "/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}
        ),
        "unknown page": anonymous.get("/no/such/page"),
        "health": anonymous.get("/healthz"),
        "CSRF 400": client.post("/client/logout"),
    }
    for what, answer in answers.items():
        _check_headers(what, answer)
    for what in ("admin page", "client page", "API answer", "admin JSON"):
        assert "no-store" in answers[what].headers.get("Cache-Control", ""), what
    assert answers["API 413"].status_code == 413 and answers["webhook 400"].status_code == 400


def test_pages_need_no_inline_script(env: Env, world: World) -> None:
    """The CSP forbids inline script; the pages must not rely on any, or they would break."""
    admin = env.app.test_client()
    sign_in_admin(admin)
    pages = [
        admin.get("/admin/invoices"),
        admin.get(f"/admin/invoices/{world.a.charged_invoice_id}"),
        admin.get("/admin/charges"),
        admin.get("/admin/settings"),
        env.app.test_client().get("/client/login"),
    ]
    for page in pages:
        html = page.get_data(as_text=True)
        assert page.status_code == 200
        for tag in re.findall(r"<script\b[^>]*>", html, flags=re.I):
            assert re.search(r"\bsrc=", tag), tag
        bodies = re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.I | re.S)
        assert all(not body.strip() for body in bodies), bodies
        assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I)  # no onclick= and the like
        assert "javascript:" not in html.lower()


def _session_cookie(answer: TestResponse, name: str = "session") -> SimpleCookie:
    (header,) = [h for h in answer.headers.getlist("Set-Cookie") if h.startswith(f"{name}=")]
    cookie = SimpleCookie()
    cookie.load(header)
    return cookie


def test_the_session_cookie_is_httponly_and_samesite(env: Env, world: World) -> None:
    answer = sign_in_admin(env.app.test_client())
    morsel = _session_cookie(answer)["session"]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() in ("lax", "strict")
    assert not morsel["secure"]  # PUBLIC_BASE_URL is http here; a Secure cookie would never come back


def test_the_session_cookie_is_secure_behind_https(
    env: Env, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://billing.example.com")
    app = web.create_app()
    http, https = app.test_client(), {"base_url": "https://billing.example.com"}
    http.get("/admin/login", **https)
    with http.session_transaction(**https) as s:
        token = s["csrf_token"]
    answer = http.post(
        "/admin/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token}, **https
    )
    assert answer.status_code == 302
    # __Host-: the browser keeps it only if Secure, for this host alone and path / (no Domain).
    morsel = _session_cookie(answer, "__Host-session")["__Host-session"]
    assert morsel["secure"] is True and morsel["httponly"] is True
    assert morsel["path"] == "/" and not morsel["domain"]
    assert morsel["samesite"].lower() in ("lax", "strict")
