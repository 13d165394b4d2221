"""Sessions end when they should, on the server's word: signing out and a new password end every copy
of the cookie (a session version on the admin and the client), and a session left idle for 30 minutes
is refused even when someone kept its cookie."""

from __future__ import annotations

import time

from flask.testing import FlaskClient

from shared.services.admins import create_admin
from tests.support.web_app import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Env,
    World,
    csrf_of,
    sign_in_admin,
    sign_in_client,
)
from web.pages import ADMIN_IDLE_SECONDS, CLIENT_IDLE_SECONDS, SEEN_KEY

NEW_PASSWORD = "a-new-admin-password-Qw8"


def _copy_cookie(env: Env, source: FlaskClient) -> FlaskClient:
    """Another browser holding a copy of the session cookie (stolen, or a second device)."""
    name = env.app.config["SESSION_COOKIE_NAME"]
    cookie = source.get_cookie(name)
    assert cookie is not None
    thief = env.app.test_client()
    thief.set_cookie(name, cookie.value)
    return thief


def _admin_in(http: FlaskClient) -> bool:
    answer = http.get("/admin/invoices")
    if answer.status_code == 200:
        return True
    assert answer.status_code == 302 and "/admin/login" in answer.headers["Location"]
    return False


def _client_in(http: FlaskClient) -> bool:
    answer = http.get("/client/invoices")
    if answer.status_code == 200:
        return True
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/client/login")
    return False


def _age_session(http: FlaskClient, seconds: int) -> None:
    with http.session_transaction() as s:
        s[SEEN_KEY] = int(time.time()) - seconds


def test_signing_out_ends_a_copied_admin_cookie(env: Env, world: World) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    copy = _copy_cookie(env, admin)
    assert _admin_in(copy)
    assert admin.post("/admin/logout", data={"csrf_token": csrf_of(admin)}).status_code == 302
    assert not _admin_in(admin)
    assert not _admin_in(copy)
    # Signing in again starts a new session; the copy stays dead.
    assert sign_in_admin(admin).status_code == 302 and _admin_in(admin)
    assert not _admin_in(copy)


def test_a_password_change_ends_every_other_admin_session(env: Env, world: World) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    copy = _copy_cookie(env, admin)
    assert admin.get("/admin/password").status_code == 200
    wrong = admin.post(
        "/admin/password",
        data={
            "csrf_token": csrf_of(admin),
            "current_password": "not-the-password",
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
    )
    assert wrong.status_code == 422 and _admin_in(copy)  # nothing changed
    changed = admin.post(
        "/admin/password",
        data={
            "csrf_token": csrf_of(admin),
            "current_password": ADMIN_PASSWORD,
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
    )
    assert changed.status_code == 303
    assert _admin_in(admin)  # the session that changed it goes on
    assert not _admin_in(copy)
    assert sign_in_admin(env.app.test_client()).status_code == 401
    assert sign_in_admin(env.app.test_client(), password=NEW_PASSWORD).status_code == 302


def test_a_password_set_from_the_command_line_ends_the_admins_sessions(env: Env, world: World) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    with env.session() as s:  # offsession create-admin EMAIL --password P, for an existing admin
        create_admin(s, ADMIN_EMAIL, NEW_PASSWORD)
        s.commit()
    assert not _admin_in(admin)


def test_signing_out_ends_a_copied_client_cookie(env: Env, world: World) -> None:
    client = env.app.test_client()
    sign_in_client(client, env, world.a.email)
    copy = _copy_cookie(env, client)
    assert _client_in(copy)
    assert client.post("/client/logout", data={"csrf_token": csrf_of(client)}).status_code == 302
    assert not _client_in(client)
    assert not _client_in(copy)


def test_an_idle_admin_session_is_refused_after_30_minutes(env: Env, world: World) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    _age_session(admin, ADMIN_IDLE_SECONDS - 60)
    assert _admin_in(admin)  # 29 minutes: still there, and the use counts as activity
    _age_session(admin, ADMIN_IDLE_SECONDS + 1)
    copy = _copy_cookie(env, admin)
    answer = admin.get("/admin/invoices", follow_redirects=True)
    assert "30 minutes without activity" in answer.get_data(as_text=True)
    assert not _admin_in(admin) and not _admin_in(copy)


def test_an_idle_client_session_is_refused_after_30_minutes(env: Env, world: World) -> None:
    client = env.app.test_client()
    sign_in_client(client, env, world.a.email)
    _age_session(client, CLIENT_IDLE_SECONDS + 1)
    copy = _copy_cookie(env, client)
    assert not _client_in(copy)
    assert not _client_in(client)


def test_a_page_polling_on_its_own_does_not_keep_a_session_alive(env: Env, world: World) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    _age_session(admin, ADMIN_IDLE_SECONDS - 120)
    assert admin.get(f"/admin/charges/{world.a.charge_id}.json").status_code == 200
    with admin.session_transaction() as s:
        assert int(time.time()) - s[SEEN_KEY] >= ADMIN_IDLE_SECONDS - 120  # not counted as activity
