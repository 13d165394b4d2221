"""The sign-in email goes out from a worker (the outbox), never from the request: with the mail server
down, asking for a link answers the same page, in the same time, for a client's address and for anyone
else's; the worker retries until the server takes it."""

from __future__ import annotations

import socket
import statistics
import time

import pytest
from sqlalchemy import func, select

from shared.adapters.mail import FileMailer
from shared.domain.models import NotificationLog, OutboxMessage
from shared.services.notifications import deliver_login_link
from shared.services.outbox import TASK_SEND_LOGIN_LINK
from tests.support.web_app import Env, World, csrf_of

ROUNDS = 25


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: connections are refused


@pytest.fixture
def smtp_down(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setenv("MAIL_URL", f"smtp://127.0.0.1:{_closed_port()}")
    env.rebuild()
    return env


def test_known_and_unknown_addresses_get_the_same_answer_in_the_same_time(
    smtp_down: Env, world: World
) -> None:
    http = smtp_down.app.test_client()
    token = csrf_of(http)
    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    pages: dict[str, set[bytes]] = {"known": set(), "unknown": set()}
    for n in range(ROUNDS):
        # Interleaved, so that load on the machine falls on both alike; each from its own address, so
        # that the throttle treats every request the same.
        for who, address in (("known", world.a.email), ("unknown", f"nobody{n}@example.com")):
            started = time.perf_counter()
            answer = http.post(
                "/client/login",
                data={"email": address, "csrf_token": token},
                environ_overrides={"REMOTE_ADDR": f"10.{n}.{len(who)}.1"},
            )
            timings[who].append(time.perf_counter() - started)
            assert answer.status_code == 200, (who, answer.status_code)
            pages[who].add(answer.data)
    assert len(pages["known"] | pages["unknown"]) == 1  # byte for byte the same page
    known, unknown = (statistics.median(timings[w]) for w in ("known", "unknown"))
    # Within noise (the machine is shared): no mail server is waited for either way, and the web does
    # the same work for both (it does not even look the address up).
    assert abs(known - unknown) <= max(0.005, 0.4 * max(known, unknown)), (known, unknown)
    # Both queued the same message for the worker.
    with smtp_down.session() as s:
        queued = s.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.task_name == TASK_SEND_LOGIN_LINK)
        )
    assert queued == 2 * ROUNDS


def test_the_worker_retries_a_refused_email_until_the_server_takes_it(smtp_down: Env, world: World) -> None:
    http = smtp_down.app.test_client()
    http.post("/client/login", data={"email": world.a.email, "csrf_token": csrf_of(http)})
    with smtp_down.session() as s:
        (payload,) = [
            m.payload
            for m in s.scalars(select(OutboxMessage).where(OutboxMessage.task_name == TASK_SEND_LOGIN_LINK))
        ]
    runtime = smtp_down.runtime
    config, sessions = runtime.config, runtime.sessions
    with pytest.raises(OSError):
        deliver_login_link(sessions, config, runtime.mailer, **payload)
    with smtp_down.session() as s:
        assert s.scalar(select(func.count()).select_from(NotificationLog)) == 0  # given back
    mailer = FileMailer(smtp_down.outbox)  # the server is back
    assert deliver_login_link(sessions, config, mailer, **payload) is True
    assert deliver_login_link(sessions, config, mailer, **payload) is False  # once
    assert [m["To"] for m in smtp_down.new_emails(set())] == [world.a.email]
