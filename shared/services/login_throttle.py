"""Sign-in throttling: at most N counted events per key in a sliding window, kept in the
database so that every gunicorn worker and every process shares one count.

What is counted (the limits below):

- Admin sign-in: each *failed* password, per (email, client IP) and per client IP over all emails. An
  attempt takes its place in both counts before the password is checked, so parallel guesses cannot all
  slip in under the limit while Argon2 runs, and gives it back when the password was right.
- Client Zone "email me a link": every request, per (email, client IP) and per client IP. Whether the
  email belongs to a client plays no part. Not per email alone: anyone could then keep a client from
  ever getting a link by asking for theirs five times every quarter of an hour, from anywhere.

Each event is a `login_attempt` row (key, at); a key's count is its rows younger than the window, so the
window slides and the wait announced (Retry-After) is exact. Every write prunes the rows older than the
longest window. Counting and writing are serialized per key: on PostgreSQL by a transaction-scoped
advisory lock, on SQLite by BEGIN IMMEDIATE (shared.adapters.database), which holds the file's write lock
throughout.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, text
from sqlalchemy.orm import Session

from shared.domain.models import LoginAttempt, utcnow


@dataclass(frozen=True)
class Limit:
    name: str
    max_events: int
    window: timedelta

    def counter(self, *who: str) -> Counter:
        # A digest, not the address: the table only needs to tell keys apart.
        digest = hashlib.sha256("\x1f".join((self.name, *who)).encode()).hexdigest()
        return Counter(self, f"{self.name}:{digest[:40]}")


@dataclass(frozen=True)
class Counter:
    limit: Limit
    key: str


ADMIN_FAILURES_PER_EMAIL_AND_IP = Limit("admin-email-ip", 5, timedelta(minutes=15))
# Higher than the per-email limit (an office behind one address has several admins), low enough that
# one address cannot try many emails.
ADMIN_FAILURES_PER_IP = Limit("admin-ip", 20, timedelta(minutes=15))
LOGIN_LINKS_PER_EMAIL_AND_IP = Limit("link-email-ip", 5, timedelta(minutes=15))
LOGIN_LINKS_PER_IP = Limit("link-ip", 20, timedelta(minutes=15))
LIMITS = (
    ADMIN_FAILURES_PER_EMAIL_AND_IP,
    ADMIN_FAILURES_PER_IP,
    LOGIN_LINKS_PER_EMAIL_AND_IP,
    LOGIN_LINKS_PER_IP,
)
RETENTION = max(limit.window for limit in LIMITS)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    # Whole seconds until the refusing count has room again (0 when allowed).
    retry_after: int = 0
    refused_by: Limit | None = None
    # The rows this event wrote, for give_back().
    event_ids: tuple[int, ...] = ()


def _email(email: str) -> str:
    return (email or "").strip().lower()[:254]


def _origin(ip: str) -> str:
    """Who a client address stands for: itself, or its /64 for IPv6 (one subscriber holds a whole /64
    and would otherwise get a fresh count with every address of it)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)  # ::ffff:192.0.2.1 is that IPv4 client
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def admin_sign_in_counters(email: str, ip: str) -> tuple[Counter, Counter]:
    """(per email and IP, per IP): the first is the one a successful sign-in resets."""
    origin = _origin(ip)
    per_email = ADMIN_FAILURES_PER_EMAIL_AND_IP.counter(_email(email), origin)
    return per_email, ADMIN_FAILURES_PER_IP.counter(origin)


def login_link_counters(email: str, ip: str) -> tuple[Counter, Counter]:
    origin = _origin(ip)
    return LOGIN_LINKS_PER_EMAIL_AND_IP.counter(_email(email), origin), LOGIN_LINKS_PER_IP.counter(origin)


def _lock(session: Session, counters: Sequence[Counter]) -> None:
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE already made this transaction the only writer
    for key in sorted({c.key for c in counters}):  # one order everywhere: no deadlock between two takers
        lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})


def prune(session: Session, now: datetime | None = None) -> int:
    """Forget the events no window can see any more; returns how many rows went."""
    cutoff = (now or utcnow()) - RETENTION
    deleted = session.execute(delete(LoginAttempt).where(LoginAttempt.at <= cutoff))
    return cast("CursorResult[Any]", deleted).rowcount or 0


def take(session: Session, counters: Sequence[Counter], *, now: datetime | None = None) -> Verdict:
    """Count one event against every counter, or against none when any of them is full.

    Commit the session soon after: the lock (PostgreSQL) or the write lock (SQLite) lasts until then."""
    moment = now or utcnow()
    _lock(session, counters)
    prune(session, moment)
    refused: tuple[float, Limit] | None = None
    for c in counters:
        times = session.scalars(
            select(LoginAttempt.at)
            .where(LoginAttempt.key == c.key, LoginAttempt.at > moment - c.limit.window)
            .order_by(LoginAttempt.at)
        ).all()
        if len(times) >= c.limit.max_events:
            # Room comes back when the event that would be one too many leaves the window.
            frees_at = times[len(times) - c.limit.max_events] + c.limit.window
            wait = (frees_at - moment).total_seconds()
            if refused is None or wait > refused[0]:
                refused = (wait, c.limit)
    if refused is not None:
        return Verdict(False, retry_after=max(1, math.ceil(refused[0])), refused_by=refused[1])
    rows = [LoginAttempt(key=c.key, at=moment) for c in counters]
    session.add_all(rows)
    session.flush()
    return Verdict(True, event_ids=tuple(row.id for row in rows))


def give_back(session: Session, verdict: Verdict) -> None:
    """Uncount the events of `take` (a right password is not a failure)."""
    if verdict.event_ids:
        session.execute(delete(LoginAttempt).where(LoginAttempt.id.in_(verdict.event_ids)))


def reset(session: Session, counter: Counter) -> None:
    """Forget a counter's events (a successful sign-in clears that email's earlier typos from that IP)."""
    session.execute(delete(LoginAttempt).where(LoginAttempt.key == counter.key))
