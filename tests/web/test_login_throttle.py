"""Sign-in attempts are rate-limited (shared.services.login_throttle): admin passwords per email and IP and
per
IP, emailed sign-in links per email and per IP; counted in the database, so every process shares them."""

from __future__ import annotations

import threading
from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import AuditEvent, LoginAttempt, utcnow
from shared.services import login_throttle
from shared.services.admins import create_admin
from shared.services.login_throttle import (
    ADMIN_FAILURES_PER_EMAIL_AND_IP,
    ADMIN_FAILURES_PER_IP,
    LOGIN_LINKS_PER_EMAIL_AND_IP,
    LOGIN_LINKS_PER_IP,
    admin_sign_in_counters,
)
from tests.support.web_app import ADMIN_EMAIL, Env, World, request_link, sign_in_admin

WRONG = "not-the-password"
WINDOW_SECONDS = int(ADMIN_FAILURES_PER_EMAIL_AND_IP.window.total_seconds())


def _from(ip: str) -> dict[str, dict[str, str]]:
    return {"environ_overrides": {"REMOTE_ADDR": ip}}


def _age_events(env: Env, by: timedelta) -> None:
    """Time passes for the throttle: every counted event becomes `by` older."""
    with env.session() as s:
        for row in s.scalars(select(LoginAttempt)):
            row.at = row.at - by
        s.commit()


def _signed_in(http: FlaskClient) -> bool:
    return http.get("/admin/invoices").status_code == 200


# ---- admin sign-in ---------------------------------------------------------------------------------------


def test_the_sixth_failed_sign_in_is_refused_even_with_the_right_password(env: Env, world: World) -> None:
    http = env.app.test_client()
    for _ in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events):
        assert sign_in_admin(http, password=WRONG).status_code == 401
    refused = sign_in_admin(http)
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert WINDOW_SECONDS - 60 < retry_after <= WINDOW_SECONDS
    page = refused.get_data(as_text=True)
    assert "Too many failed sign-ins for this email" in page and "15 minutes" in page
    assert not _signed_in(http)

    # Each failure is in the audit trail, with the email and the address, never the password.
    with env.session() as s:
        failures = s.scalars(select(AuditEvent).where(AuditEvent.action == "admin.sign_in_failed")).all()
    assert len(failures) == ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events
    assert {(f.actor, f.detail["email"], f.detail["ip"]) for f in failures} == {
        ("anonymous", ADMIN_EMAIL, "127.0.0.1")
    }
    assert all(WRONG not in str(f.detail) for f in failures)


def test_the_limit_is_per_email_and_ip(env: Env, world: World) -> None:
    with env.session() as s:
        create_admin(s, "second@example.com", "second-admin-password")
        s.commit()
    http = env.app.test_client()
    for _ in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events):
        sign_in_admin(http, password=WRONG)
    assert sign_in_admin(http).status_code == 429
    # Another email from the same address, and the same email from another address, still get in.
    assert (
        sign_in_admin(env.app.test_client(), "second@example.com", "second-admin-password").status_code == 302
    )
    elsewhere = env.app.test_client()
    assert sign_in_admin(elsewhere, **_from("203.0.113.9")).status_code == 302
    assert elsewhere.get("/admin/invoices", **_from("203.0.113.9")).status_code == 200


def test_the_window_slides_and_retry_after_is_exact(env: Env, world: World) -> None:
    http = env.app.test_client()
    for _ in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events):
        sign_in_admin(http, password=WRONG)
    _age_events(env, timedelta(minutes=10))
    refused = sign_in_admin(http)
    assert refused.status_code == 429
    assert 5 * 60 - 30 <= int(refused.headers["Retry-After"]) <= 5 * 60
    _age_events(env, timedelta(minutes=5, seconds=1))
    assert sign_in_admin(http).status_code == 302


def test_a_successful_sign_in_clears_that_emails_earlier_failures(env: Env, world: World) -> None:
    http = env.app.test_client()
    for _ in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events - 1):
        assert sign_in_admin(http, password=WRONG).status_code == 401
    assert sign_in_admin(http).status_code == 302
    again = env.app.test_client()
    for _ in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events):
        assert sign_in_admin(again, password=WRONG).status_code == 401
    assert sign_in_admin(again, password=WRONG).status_code == 429


def test_one_address_cannot_try_many_emails(env: Env, world: World) -> None:
    http = env.app.test_client()
    for n in range(ADMIN_FAILURES_PER_IP.max_events):
        assert sign_in_admin(http, f"guess{n}@example.com", WRONG).status_code == 401
    refused = sign_in_admin(http)
    assert refused.status_code == 429 and "from your network" in refused.get_data(as_text=True)
    assert sign_in_admin(env.app.test_client(), **_from("198.51.100.7")).status_code == 302


def test_programs_get_the_429_as_json(env: Env, world: World) -> None:
    http = env.app.test_client()
    for _ in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events):
        sign_in_admin(http, password=WRONG)
    refused = sign_in_admin(http, headers={"Accept": "application/json"})
    assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
    assert (
        refused.json["error"] == "too_many_requests" and "Too many failed sign-ins" in refused.json["message"]
    )


def test_refused_attempts_do_not_extend_the_lockout(env: Env, world: World) -> None:
    http = env.app.test_client()
    for _ in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events):
        sign_in_admin(http, password=WRONG)
    with env.session() as s:
        counted = s.scalar(select(func.count()).select_from(LoginAttempt))
    for _ in range(5):
        assert sign_in_admin(http, password=WRONG).status_code == 429
    with env.session() as s:
        assert s.scalar(select(func.count()).select_from(LoginAttempt)) == counted


# ---- Client Zone sign-in links --------------------------------------------------------------------------


def test_links_per_email_and_address_stop_after_the_limit_with_the_same_neutral_page(
    env: Env, world: World
) -> None:
    http = env.app.test_client()
    before = env.email_files()
    pages = [request_link(http, world.a.email) for _ in range(LOGIN_LINKS_PER_EMAIL_AND_IP.max_events + 2)]
    assert {p.status_code for p in pages} == {200}
    assert len({p.data for p in pages}) == 1  # past the limit the answer is the very same page
    assert len(env.new_emails(before)) == LOGIN_LINKS_PER_EMAIL_AND_IP.max_events
    # Another client's email still gets its link, from the same address.
    before = env.email_files()
    request_link(http, world.b.email)
    assert [m["To"] for m in env.new_emails(before)] == [world.b.email]


def test_someone_asking_for_a_clients_links_elsewhere_does_not_lock_the_client_out(
    env: Env, world: World
) -> None:
    # Someone keeps asking for Alice's link from their own address, over and over.
    pester = env.app.test_client()
    for _ in range(3 * LOGIN_LINKS_PER_EMAIL_AND_IP.max_events):
        request_link(pester, world.a.email, **_from("198.51.100.66"))
    # Alice, from her own address, still gets hers.
    before = env.email_files()
    assert request_link(env.app.test_client(), world.a.email, **_from("203.0.113.5")).status_code == 200
    assert [m["To"] for m in env.new_emails(before)] == [world.a.email]


def test_links_per_address_stop_after_the_limit(env: Env, world: World) -> None:
    http = env.app.test_client()
    # Unknown emails count too: the limit must not depend on who is a client.
    for n in range(LOGIN_LINKS_PER_IP.max_events):
        assert request_link(http, f"stranger{n}@example.com").status_code == 200
    before = env.email_files()
    assert request_link(http, world.a.email).status_code == 200
    assert env.new_emails(before) == []
    assert request_link(env.app.test_client(), world.a.email, **_from("192.0.2.44")).status_code == 200
    assert [m["To"] for m in env.new_emails(before)] == [world.a.email]


# ---- the counter itself, on SQLite and PostgreSQL ------------------------------------------------------


def test_take_counts_per_key_and_prunes_what_no_window_sees(session_factory: sessionmaker[Session]) -> None:
    now = utcnow()
    counters = admin_sign_in_counters("Ops@Example.com ", "10.0.0.1")
    assert counters == admin_sign_in_counters("ops@example.com", "10.0.0.1")  # the same person
    with session_factory() as s:
        s.add(LoginAttempt(key="admin-ip:old", at=now - login_throttle.RETENTION - timedelta(seconds=1)))
        s.commit()
        for n in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events):
            assert login_throttle.take(s, counters, now=now + timedelta(seconds=n)).allowed
        s.commit()
        refused = login_throttle.take(s, counters, now=now + timedelta(minutes=1))
        assert not refused.allowed and refused.refused_by == ADMIN_FAILURES_PER_EMAIL_AND_IP
        assert refused.retry_after == WINDOW_SECONDS - 60
        keys = set(s.scalars(select(LoginAttempt.key)))
        assert keys == {c.key for c in counters}  # the old row is gone; no address is stored
        assert all("10.0.0.1" not in k and "ops@" not in k for k in keys)
        later = now + ADMIN_FAILURES_PER_EMAIL_AND_IP.window + timedelta(seconds=0.5)
        assert login_throttle.take(s, counters, now=later).allowed  # the first event left the window
        s.commit()


def test_concurrent_takers_never_exceed_the_limit(session_factory: sessionmaker[Session]) -> None:
    # As many gunicorn workers guessing at once: the count is serialized in the database.
    counters = admin_sign_in_counters("ops@example.com", "10.0.0.2")
    takers = 12
    barrier = threading.Barrier(takers)
    allowed: list[bool] = []

    def guess() -> None:
        with session_factory() as s:
            barrier.wait()
            verdict = login_throttle.take(s, counters)
            s.commit()
        allowed.append(verdict.allowed)

    threads = [threading.Thread(target=guess) for _ in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(allowed) == takers
    assert allowed.count(True) == ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events
    with session_factory() as s:
        for row in s.scalars(select(LoginAttempt)):
            row.at = row.at - timedelta(hours=1)
        s.commit()
        assert login_throttle.take(s, counters).allowed  # and an hour later all is forgotten
        s.commit()
        assert s.scalar(select(func.count()).select_from(LoginAttempt)) == len(counters)


def test_an_ipv6_subscriber_counts_as_one_address(env: Env, world: World) -> None:
    # One subscriber holds a whole /64: walking through its addresses must not buy new guesses.
    for n in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events):
        answer = sign_in_admin(env.app.test_client(), password=WRONG, **_from(f"2001:db8:1:2::{n + 1:x}"))
        assert answer.status_code == 401
    assert sign_in_admin(env.app.test_client(), **_from("2001:db8:1:2:ffff::9")).status_code == 429
    assert sign_in_admin(env.app.test_client(), **_from("2001:db8:1:3::1")).status_code == 302
    with env.session() as s:
        ips = {
            e.detail["ip"]
            for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "admin.sign_in_failed"))
        }
    assert ips == {f"2001:db8:1:2::{n + 1:x}" for n in range(ADMIN_FAILURES_PER_EMAIL_AND_IP.max_events)}
