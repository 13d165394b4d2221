"""Charge leases: the worker holding a charge says every few seconds that it is still alive.

A claimed attempt names its holder (`lease_owner`: this process's host, pid and a random tag) and a
`lease_expires_at` a short while ahead. While the process works on the charge, one thread per process
renews the lease of every charge the process holds, in one UPDATE, every third of the lease. A holder
that dies stops renewing: its leases lapse within one lease length, and whoever finds a lapsed lease
(a redelivered message in shared.services.charging, the recovery sweep in shared.services.janitor) replays
the charge
under its idempotency key, which is always safe.

A lease is renewed for at most as long as the holder's Stripe call can take
(StripePort.longest_call_seconds): a call cannot outlive its timeouts, so a holder still "working"
past that is stuck, and its charge goes to recovery like a dead holder's.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session, sessionmaker

from shared.domain.models import ChargeAttempt, table_of, utcnow
from shared.domain.states import AttemptStatus

log = logging.getLogger(__name__)

_TABLE = table_of(ChargeAttempt)
_owner: tuple[int, str] | None = None


def process_owner() -> str:
    """This process as a lease holder: `host/pid/tag`. The tag tells a reused pid from its predecessor;
    a forked child (a prefork pool process) is a holder of its own."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        host = socket.gethostname()[:64]
        _owner = (pid, f"{host}/{pid}/{secrets.token_hex(4)}")
    return _owner[1]


def holder_is_gone(owner: str | None) -> bool:
    """Whether the process named by `owner` is known to have ended: it ran on this host and no process
    with its pid exists any more (or this very process holds the pid under another tag). Holders on other
    hosts, and pids taken by another process since, count as alive: their lease runs out instead."""
    if not owner:
        return False
    host, _, rest = owner.partition("/")
    pid_text, _, _tag = rest.partition("/")
    if host != socket.gethostname()[:64] or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return owner != process_owner()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # a process of another user has that pid now
    return False


def lease_lapsed(owner: str | None, expires_at: datetime | None, now: datetime) -> bool:
    """A processing attempt whose holder may no longer be working on it: lease run out, or holder gone."""
    return expires_at is None or expires_at < now or holder_is_gone(owner)


class LeaseKeeper:
    """Renews the leases this process holds. One per process; `holding()` is safe from any thread.

    `factory` gives the session factory at each renewal (a forked process builds its own engine).
    Nothing runs while nothing is held: the thread sleeps until the next hold.
    """

    def __init__(self, factory: Callable[[], sessionmaker[Session]], lease_seconds: float) -> None:
        self.factory = factory
        self.lease_seconds = lease_seconds
        self.renew_every = lease_seconds / 3
        self._start_in(os.getpid())

    def _start_in(self, pid: int) -> None:
        self._pid = pid
        self._cond = threading.Condition()
        # attempt id -> the monotonic moment its renewals stop (the longest its call may take).
        self._held: dict[str, float] = {}
        self._overdue: set[str] = set()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> str:
        return process_owner()

    def expires_at(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_seconds)

    @contextmanager
    def holding(self, attempt_ids: Iterable[str], *, at_most_seconds: float) -> Iterator[None]:
        """Keep the leases of `attempt_ids` (claimed by this process) alive while the block runs, for at
        most `at_most_seconds`. Several attempts may be held at once, by one block or many threads."""
        if os.getpid() != self._pid:
            self._start_in(os.getpid())  # forked: the parent's thread and holds did not come along
        ids = list(attempt_ids)
        until = time.monotonic() + at_most_seconds
        with self._cond:
            for attempt_id in ids:
                self._held[attempt_id] = until
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                for attempt_id in ids:
                    self._held.pop(attempt_id, None)
                    self._overdue.discard(attempt_id)

    def held(self) -> list[str]:
        with self._cond:
            return list(self._held)

    def renew(self) -> int:
        """One UPDATE for every lease held and not overdue; returns how many rows it renewed. Only this
        process's own leases of attempts still processing are touched: one taken over stays taken."""
        moment = time.monotonic()
        with self._cond:
            due = [attempt_id for attempt_id, until in self._held.items() if until > moment]
            newly_overdue = [a for a in self._held if a not in due and a not in self._overdue]
            self._overdue.update(newly_overdue)
        for attempt_id in newly_overdue:
            log.warning(
                "charge %s: its Stripe call has run longer than it can; its lease is left to run out",
                attempt_id,
            )
        if not due:
            return 0
        now = utcnow()
        with self.factory()() as session, session.begin():
            return cast("CursorResult[Any]", session.execute(
                update(_TABLE)
                .where(
                    _TABLE.c.id.in_(due),
                    _TABLE.c.lease_owner == self.owner,
                    _TABLE.c.status == AttemptStatus.PROCESSING.value,
                )
                # updated_at stays: a renewal is not a move (its column default would stamp it).
                .values(lease_expires_at=self.expires_at(now), updated_at=_TABLE.c.updated_at)
            )).rowcount

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._held:
                    self._cond.wait()  # idle: woken by the next hold
                # A round every third of the lease, however many holds begin meanwhile.
                deadline = time.monotonic() + self.renew_every
                while (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                if not self._held:
                    continue
            try:
                self.renew()
            except Exception as exc:  # the database is away: the next round tries again
                log.warning("could not renew charge leases: %s", exc)
