"""Emailed Client Zone links (sign in, update the card, authenticate a charge): opening one (GET) uses
nothing, so a mail scanner cannot spend it; a page with a button POSTs it with the browser's CSRF token,
so no other site can sign a visitor into someone else's account; it works once, for its own action,
for a short time; the newest link of a kind voids the older ones; only its hash is stored; asking for a
sign-in link never tells whether an email belongs to a client."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from shared.config import load_config
from shared.domain.link_tokens import AUTHENTICATE, LINK_LIFETIMES, SIGN_IN, LoginLinkError
from shared.domain.models import ClientLoginToken, utcnow
from shared.services.client_links import consume_link, issue_link
from shared.services.notifications import deliver_charge_notification
from tests.support.web_app import (
    Env,
    World,
    csrf_of,
    link_in,
    request_link,
    sign_in_client,
    text_of,
    use_link,
)

LINK_LIFETIME = LINK_LIFETIMES[SIGN_IN]


def _client_of(http: FlaskClient) -> int | None:
    with http.session_transaction() as s:
        value = s.get("client_id")
    return value if isinstance(value, int) else None


def _emailed_sign_in_token(env: Env, address: str) -> str:
    before = env.email_files()
    assert request_link(env.app.test_client(), address).status_code == 200
    (message,) = env.new_emails(before)
    return link_in(message)


def _charge_email_token(env: Env, charge_id: str, kind: str) -> tuple[str, str]:
    """The link of the email a worker sends about this charge: (its path, its token)."""
    before = env.email_files()
    config = load_config()
    assert deliver_charge_notification(
        env.runtime.sessions, config, env.runtime.mailer, charge_id, kind
    )
    (message,) = env.new_emails(before)
    match = re.search(r"https?://[^/\s]+(/client/\S+)\?token=(\S+)", text_of(message))
    assert match, text_of(message)
    return match.group(1), match.group(2)


# ---- a sign-in link --------------------------------------------------------------------------------------


def test_opening_the_link_twice_uses_nothing_and_the_button_uses_it_once(env: Env, world: World) -> None:
    token = _emailed_sign_in_token(env, world.a.email)
    scanner = env.app.test_client()  # a mail scanner following every link, twice
    for _ in range(2):
        page = scanner.get(f"/client/login/{token}")
        assert page.status_code == 200 and _client_of(scanner) is None
        assert "al***@example.com" in page.get_data(as_text=True)
        assert page.headers["Referrer-Policy"] == "no-referrer"
    browser = env.app.test_client()
    page = browser.get(f"/client/login/{token}")
    assert page.status_code == 200
    assert f'name="token" value="{token}"' in page.get_data(as_text=True)
    assert _client_of(browser) is None  # the page alone signs nobody in

    used = use_link(browser, token)
    assert used.status_code == 303 and used.headers["Location"].endswith("/client/invoices")
    assert _client_of(browser) == world.a.client_id
    assert browser.get("/client/invoices").status_code == 200

    # Used once, it is dead: for the page and for the button, in any browser.
    later = env.app.test_client()
    again = later.get(f"/client/login/{token}")
    assert again.status_code == 400 and "already used" in again.get_data(as_text=True)
    assert use_link(later, token).status_code == 400 and _client_of(later) is None


def test_another_site_cannot_sign_a_visitor_in_with_its_link(env: Env, world: World) -> None:
    """Login CSRF: a page elsewhere posting the attacker's link from the victim's browser. The victim's
    browser has no CSRF token for that form (SameSite cookies, and the page cannot read ours)."""
    attackers_token = _emailed_sign_in_token(env, world.b.email)
    victim = env.app.test_client()
    victim.get("/client/login")  # the victim has a session of their own with us
    forged = victim.post("/client/link", data={"token": attackers_token})
    assert forged.status_code == 400 and _client_of(victim) is None
    # With a CSRF token of another session (the attacker's own) it is refused all the same.
    attacker = env.app.test_client()
    forged = victim.post("/client/link", data={"token": attackers_token, "csrf_token": csrf_of(attacker)})
    assert forged.status_code == 400 and _client_of(victim) is None
    # Nothing was used up by the forgeries.
    assert use_link(attacker, attackers_token).status_code == 303


def test_a_newer_link_voids_the_older(env: Env, world: World) -> None:
    older = _emailed_sign_in_token(env, world.a.email)
    newer = _emailed_sign_in_token(env, world.a.email)
    http = env.app.test_client()
    page = http.get(f"/client/login/{older}")
    assert page.status_code == 400 and "newer link replaced" in page.get_data(as_text=True)
    assert use_link(http, older).status_code == 400 and _client_of(http) is None
    assert use_link(http, newer).status_code == 303 and _client_of(http) == world.a.client_id


def test_the_link_expires_after_30_minutes(env: Env, world: World) -> None:
    with env.session() as s:
        stale = issue_link(s, world.a.client_id, SIGN_IN, now=utcnow() - LINK_LIFETIME - timedelta(seconds=1))
        s.commit()
    http = env.app.test_client()
    answer = http.get(f"/client/login/{stale.token}")
    assert answer.status_code == 400 and "expired" in answer.get_data(as_text=True)
    assert use_link(http, stale.token).status_code == 400 and _client_of(http) is None
    with env.session() as s:
        fresh = issue_link(
            s, world.a.client_id, SIGN_IN, now=utcnow() - LINK_LIFETIME + timedelta(seconds=30)
        )
        s.commit()
    assert use_link(http, fresh.token).status_code == 303  # 29.5 minutes old: still good


def test_expiry_is_checked_against_the_clock_of_the_use(env: Env, world: World) -> None:
    with env.session() as s:
        link = issue_link(s, world.a.client_id, SIGN_IN)
        s.commit()
    with env.session() as s, pytest.raises(LoginLinkError, match="expired"):
        consume_link(s, link.token, now=utcnow() + LINK_LIFETIME + timedelta(seconds=1))


def test_a_wrong_token_or_the_stored_hash_signs_nobody_in(env: Env, world: World) -> None:
    with env.session() as s:
        link = issue_link(s, world.a.client_id, SIGN_IN)
        s.commit()
        stored_hash = s.scalars(select(ClientLoginToken.token_hash)).one()
    http = env.app.test_client()
    # Whoever reads the table (a backup, a replica) holds hashes only, and a hash is no link.
    for token in ("x", "A" * 43, stored_hash, link.token[:-1]):
        assert http.get(f"/client/login/{token}").status_code == 400, token
        assert use_link(http, token).status_code == 400
        assert _client_of(http) is None
    assert use_link(http, link.token).status_code == 303


def test_tokens_are_stored_only_as_hashes(env: Env, world: World) -> None:
    token = _emailed_sign_in_token(env, world.a.email)
    with env.session() as s:
        stored = s.scalars(select(ClientLoginToken.token_hash)).all()
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    # Nowhere in the database files, in any column or page of any table (the outbox included).
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


# ---- the update-card and authentication links -------------------------------------------------------------


def test_the_update_card_link_opens_the_card_page_only_and_only_once(env: Env, world: World) -> None:
    path, token = _charge_email_token(env, world.a.charge_id, "card_update_needed")
    assert path == "/client/cards"
    http = env.app.test_client()
    for _ in range(2):
        page = http.get(f"/client/cards?token={token}")
        assert page.status_code == 200 and "Update your card" in page.get_data(as_text=True)
        assert _client_of(http) is None
    used = use_link(http, token)
    assert used.status_code == 303 and used.headers["Location"].endswith("/client/cards")
    assert http.get("/client/cards").status_code == 200
    # Scoped to the cards: the invoices want a real sign-in.
    for elsewhere in ("/client/invoices", f"/client/invoices/{world.a.invoice_id}"):
        answer = http.get(elsewhere)
        assert answer.status_code == 302 and answer.headers["Location"].endswith("/client/login"), elsewhere
    assert use_link(env.app.test_client(), token).status_code == 400  # once


def test_the_authentication_link_opens_its_invoice_only(env: Env, world: World) -> None:
    path, token = _charge_email_token(env, world.a.charge_id, "authentication_needed")
    assert path == "/client/authenticate"
    http = env.app.test_client()
    assert http.get(f"/client/authenticate?token={token}").status_code == 200
    assert _client_of(http) is None
    used = use_link(http, token)
    assert used.status_code == 303
    assert used.headers["Location"].endswith(f"/client/invoices/{world.a.charged_invoice_id}")
    assert http.get(f"/client/invoices/{world.a.charged_invoice_id}").status_code == 200
    for elsewhere in (f"/client/invoices/{world.a.invoice_id}", "/client/cards", "/client/invoices"):
        assert http.get(elsewhere).headers.get("Location", "").endswith("/client/login"), elsewhere
    assert use_link(env.app.test_client(), token).status_code == 400


def test_a_newer_update_card_email_voids_the_older_link(env: Env, world: World) -> None:
    _, older = _charge_email_token(env, world.a.charge_id, "card_update_needed")
    _, bobs = _charge_email_token(env, world.b.charge_id, "card_update_needed")
    # The next email about Alice's card (a retry's decline) carries a new link of the same kind.
    _, newer = _charge_email_token(env, world.a.charge_id, "will_retry")
    http = env.app.test_client()
    page = http.get(f"/client/cards?token={older}")
    assert page.status_code == 400 and "newer link replaced" in page.get_data(as_text=True)
    assert http.get(f"/client/cards?token={bobs}").status_code == 200  # another client's: untouched
    assert use_link(http, newer).status_code == 303 and _client_of(http) == world.a.client_id


def test_a_link_is_good_only_for_its_own_action(env: Env, world: World) -> None:
    _, token = _charge_email_token(env, world.a.charge_id, "authentication_needed")
    http = env.app.test_client()
    assert http.get(f"/client/login/{token}").status_code == 400
    assert http.get(f"/client/cards?token={token}").status_code == 400
    with env.session() as s:
        sign_in = issue_link(s, world.a.client_id, SIGN_IN)
        s.commit()
    assert http.get(f"/client/authenticate?token={sign_in.token}").status_code == 400


def test_link_lifetimes_are_as_short_as_their_action_allows(env: Env, world: World) -> None:
    assert LINK_LIFETIMES[SIGN_IN] == timedelta(minutes=30)
    assert max(LINK_LIFETIMES.values()) <= timedelta(days=3)
    _, token = _charge_email_token(env, world.a.charge_id, "authentication_needed")
    with env.session() as s:
        row = s.scalars(
            select(ClientLoginToken).where(
                ClientLoginToken.token_hash == hashlib.sha256(token.encode()).hexdigest()
            )
        ).one()
        assert (row.purpose, row.subject_id) == (AUTHENTICATE, world.a.charge_id)
        assert row.expires_at - row.created_at <= LINK_LIFETIMES[AUTHENTICATE]


def test_the_emails_say_the_link_works_once(env: Env, world: World) -> None:
    before = env.email_files()
    config = load_config()
    for kind in ("card_update_needed", "authentication_needed"):
        deliver_charge_notification(
            env.runtime.sessions, config, env.runtime.mailer, world.a.charge_id, kind
        )
    request_link(env.app.test_client(), world.a.email)
    bodies = [text_of(m) for m in env.new_emails(before)]
    assert len(bodies) == 3 and all("works once" in body for body in bodies), bodies


def test_a_scoped_link_keeps_a_live_full_session_and_never_revives_an_ended_one(
    env: Env, world: World
) -> None:
    http = env.app.test_client()
    sign_in_client(http, env, world.a.email)
    _, token = _charge_email_token(env, world.a.charge_id, "card_update_needed")
    assert use_link(http, token).status_code == 303
    assert http.get("/client/invoices").status_code == 200  # still signed in fully
    # The session ends (signed out elsewhere); the browser still holds its cookie.
    name = env.app.config["SESSION_COOKIE_NAME"]
    elsewhere = env.app.test_client()
    elsewhere.set_cookie(name, http.get_cookie(name).value)  # type: ignore[union-attr]
    assert elsewhere.post("/client/logout", data={"csrf_token": csrf_of(elsewhere)}).status_code == 302
    _, newer = _charge_email_token(env, world.a.charge_id, "will_retry")
    assert use_link(http, newer).status_code == 303
    assert http.get("/client/cards").status_code == 200
    assert http.get("/client/invoices").headers["Location"].endswith("/client/login")  # scoped, not full
