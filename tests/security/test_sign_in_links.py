"""The Client Zone's emailed sign-in link: it works once, for 30 minutes, is kept only as a hash, and
asking for one never tells whether an email belongs to a client."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from shared.client_auth import LINK_LIFETIME, LoginLinkError, consume_login_link, issue_login_link
from shared.models import ClientLoginToken, utcnow
from tests.security.conftest import Env, World, csrf_of, link_in, request_link


def _signed_in_as(http: FlaskClient, client_id: int) -> bool:
    with http.session_transaction() as s:
        return bool(s.get("client_id") == client_id)


def test_the_link_works_once(env: Env, world: World) -> None:
    http = env.app.test_client()
    before = env.email_files()
    request_link(http, world.a.email)
    (message,) = env.new_emails(before)
    token = link_in(message)

    first = http.get(f"/client/login/{token}")
    assert first.status_code == 302 and _signed_in_as(http, world.a.client_id)

    again = env.app.test_client()  # someone who found the link later, in another browser
    second = again.get(f"/client/login/{token}")
    assert second.status_code == 400
    assert "already used" in second.get_data(as_text=True)
    assert not _signed_in_as(again, world.a.client_id)
    assert again.get("/client/invoices").status_code == 302


def test_the_link_expires_after_30_minutes(env: Env, world: World) -> None:
    with env.session() as s:
        stale = issue_login_link(s, world.a.email, now=utcnow() - LINK_LIFETIME - timedelta(seconds=1))
        fresh = issue_login_link(s, world.a.email, now=utcnow() - LINK_LIFETIME + timedelta(seconds=30))
        s.commit()
    assert stale is not None and fresh is not None
    http = env.app.test_client()
    answer = http.get(f"/client/login/{stale.token}")
    assert answer.status_code == 400 and "expired" in answer.get_data(as_text=True)
    assert not _signed_in_as(http, world.a.client_id)
    assert http.get(f"/client/login/{fresh.token}").status_code == 302  # 29.5 minutes old: still good


def test_expiry_is_checked_against_the_clock_of_the_use(env: Env, world: World) -> None:
    with env.session() as s:
        link = issue_login_link(s, world.a.email)
        s.commit()
    assert link is not None
    with env.session() as s, pytest.raises(LoginLinkError, match="expired"):
        consume_login_link(s, link.token, now=utcnow() + LINK_LIFETIME + timedelta(seconds=1))


def test_a_wrong_token_or_the_stored_hash_signs_nobody_in(env: Env, world: World) -> None:
    with env.session() as s:
        link = issue_login_link(s, world.a.email)
        s.commit()
        stored_hash = s.scalars(select(ClientLoginToken.token_hash)).one()
    assert link is not None
    http = env.app.test_client()
    # Whoever reads the table (a backup, a replica) holds hashes only, and a hash is no link.
    for token in ("x", "A" * 43, stored_hash, link.token[:-1]):
        answer = http.get(f"/client/login/{token}")
        assert answer.status_code == 400, token
        assert not _signed_in_as(http, world.a.client_id)
    assert http.get(f"/client/login/{link.token}").status_code == 302


def test_tokens_are_stored_only_as_hashes(env: Env, world: World) -> None:
    http = env.app.test_client()
    before = env.email_files()
    request_link(http, world.a.email)
    (message,) = env.new_emails(before)
    token = link_in(message)
    with env.session() as s:
        stored = s.scalars(select(ClientLoginToken.token_hash)).all()
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    # Nowhere in the database files, in any column or page of any table.
    for path in env.db_path.parent.glob(env.db_path.name + "*"):
        assert token.encode() not in path.read_bytes(), path.name


def test_asking_for_a_link_does_not_tell_who_is_a_client(env: Env, world: World) -> None:
    http = env.app.test_client()
    csrf_of(http)
    before = env.email_files()
    known = request_link(http, world.a.email)
    unknown = request_link(http, "nobody@example.com")
    malformed = request_link(http, "not an email")
    assert known.status_code == unknown.status_code == malformed.status_code == 200
    # Same session, same CSRF token: the pages must be byte for byte the same.
    assert known.data == unknown.data == malformed.data
    assert "If that email belongs to a client" in known.get_data(as_text=True)
    assert [m["To"] for m in env.new_emails(before)] == [world.a.email]
