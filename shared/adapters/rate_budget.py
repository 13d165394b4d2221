"""One Stripe request budget per account, shared by every worker and web process.

Celery's `rate_limit` is per worker instance, so the budget lives where every process sees it: in Redis
(a Lua script, atomic, on the Redis server's clock) when REDIS_URL is set, else in the database (one
locked row per account). The key is the Stripe-Account id, or 'platform' for the platform itself.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one number). Per account
we store the theoretical arrival time TAT: when the next request would be due if requests had come
exactly every `interval` = 1/rate seconds. A request at `now` is granted when, counting it, the TAT is no
more than `tolerance` = burst * interval ahead of now:

    new_tat = max(tat, now) + interval;  granted  <=>  new_tat - now <= tolerance

So an idle account may send `burst` requests at once, then one per interval, and any window of W seconds
holds at most floor(rate * W) + burst grants. The default burst is max(1, floor(rate / 10)): with
STRIPE_RATE_LIMIT=20 any second sees at most 22 requests against test mode's 25/s, and 90 gives at most
99 against live mode's 100/s. A burst of rate/5 (24 and 108) would leave no room, or none at all in live
mode, for network jitter bunching requests on their way to Stripe; one or two spare tokens are enough to
make up for a slot that passed while no worker was asking.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

import redis
from sqlalchemy import make_url, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.adapters.database import make_engine, session_scope
from shared.adapters.metrics import MetricsRecorder, metrics_recorder_from_config
from shared.adapters.stripe_gateway import StripeGateway, gateway_from_config
from shared.config import Config
from shared.domain.models import RateLimitState, table_of
from shared.services.ports import RateBudgetTimeout, RateBudgetUnavailable

__all__ = [
    "DEFAULT_SLOW_DOWN_SECONDS",
    "PLATFORM_ACCOUNT",
    "DatabaseRateBudget",
    "RateBudget",
    "RedisRateBudget",
    "budget_account",
    "default_burst",
    "gateway_hooks",
    "rate_budget_from_config",
]

log = logging.getLogger(__name__)

PLATFORM_ACCOUNT = "platform"
# How long a 429 pauses an account's budget: Stripe's own advice is to back off, then retry gently.
DEFAULT_SLOW_DOWN_SECONDS = 1.0
# Waiting longer than this for a token means the budget is misconfigured or Stripe keeps saying 429.
DEFAULT_ACQUIRE_TIMEOUT_SECONDS = 60.0
REDIS_KEY_PREFIX = "offsession:stripe-rate:"

# Called with the Stripe-Account a request is made for (None = the platform); StripeGateway's callbacks.
AccountCallback = Callable[[str | None], None]


class RateBudget(Protocol):
    """What callers use; both backends below implement it."""

    def try_acquire(self, account: str | None) -> float:
        """Take a token if one is free: 0.0 when granted, else the seconds until one may be."""
        ...

    def acquire(self, account: str | None, timeout: float | None = None) -> float:
        """Block until a token is granted and return the seconds waited; RateBudgetTimeout past `timeout`."""
        ...

    def slow_down(self, account: str | None, seconds: float = DEFAULT_SLOW_DOWN_SECONDS) -> None:
        """Stripe answered 429: grant this account nothing more for `seconds`, to every process."""
        ...


def budget_account(account: str | None) -> str:
    """The budget's key for a Stripe-Account (None, or '', is the platform account)."""
    return account or PLATFORM_ACCOUNT


def default_burst(rate_per_second: float) -> float:
    return max(1.0, float(math.floor(rate_per_second / 10)))


def gcra_decision(tat: float, now: float, interval: float, tolerance: float) -> tuple[float, float]:
    """(tat to store, wait): wait 0.0 means granted and the new TAT is stored; otherwise the TAT stays."""
    new_tat = max(tat, now) + interval
    wait = new_tat - tolerance - now
    if wait > 0:
        return tat, wait
    return new_tat, 0.0


def paused_tat(tat: float, now: float, seconds: float, interval: float, tolerance: float) -> float:
    """The TAT that grants nothing before now + seconds, then one request: never earlier than `tat`.

    Taking the max rather than adding makes the 429s of one wave (every in-flight request of several
    workers) pause the account once, not once per worker."""
    return max(tat, now + seconds + tolerance - interval)


class _PollingBudget(ABC):
    """The GCRA parameters and the wait-and-retry loop; subclasses keep the TAT somewhere shared."""

    def __init__(
        self,
        rate_per_second: float,
        burst: float | None,
        *,
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be > 0")
        burst = default_burst(rate_per_second) if burst is None else burst
        if burst < 1:
            # Below one token the condition new_tat - now <= tolerance could never hold.
            raise ValueError("burst must be >= 1")
        self.rate_per_second = float(rate_per_second)
        self.burst = float(burst)
        self.interval = 1.0 / self.rate_per_second
        self.tolerance = self.burst * self.interval
        self._sleep = sleep
        self._monotonic = monotonic

    @abstractmethod
    def try_acquire(self, account: str | None) -> float: ...

    @abstractmethod
    def slow_down(self, account: str | None, seconds: float = DEFAULT_SLOW_DOWN_SECONDS) -> None: ...

    def acquire(self, account: str | None, timeout: float | None = None) -> float:
        started = self._monotonic()
        while True:
            wait = self.try_acquire(account)
            waited = self._monotonic() - started
            if wait <= 0:
                return waited
            # The TAT only moves forward, so `wait` is a lower bound: past the deadline, give up now.
            if timeout is not None and waited + wait > timeout:
                raise RateBudgetTimeout(budget_account(account), wait, timeout)
            self._sleep(wait)


# Redis: both scripts take the TAT in integer microseconds (exact in Lua's doubles until year 2255) and
# read the clock with TIME, so the clocks of the worker machines never matter. ARGV's last value is a
# caller-supplied `now` for deterministic tests only; production passes '' and the server's clock rules.
# Lua numbers returned to Redis are truncated to integers, hence microseconds and math.ceil.
_LUA_NOW = """
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
"""

# Returns {1, 0} when granted, {0, microseconds to wait} when not.
_ACQUIRE_LUA = (
    _LUA_NOW
    + """
local new_tat = math.max(tat, now) + interval
local wait = new_tat - tolerance - now
if wait > 0 then
  return {0, math.max(1, math.ceil(wait))}
end
-- Rounded up so that rounding never grants early; expires once the TAT is past and means nothing.
new_tat = math.ceil(new_tat)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', string.format('%.0f', math.max(1, math.ceil((new_tat - now) / 1000))))
return {1, 0}
"""
)

# A reservation: ARGV[4] is the furthest ahead (microseconds) a slot may be taken. The slot at the GCRA's
# next free time is taken (TAT stored) when it is no further ahead than that, and {1, wait} tells the
# caller to sleep `wait` then send: one round trip per request, however many callers queue. Further
# ahead (a 429's pause, a long queue) nothing is taken: {0, wait}, and the caller asks again later.
_RESERVE_LUA = (
    _LUA_NOW
    + """
local new_tat = math.max(tat, now) + interval
local wait = math.max(0, math.ceil(new_tat - tolerance - now))
if wait > tonumber(ARGV[4]) then
  return {0, wait}
end
new_tat = math.ceil(new_tat)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', string.format('%.0f', math.max(1, math.ceil((new_tat - now) / 1000))))
return {1, wait}
"""
)

# ARGV[4]: the pause in microseconds. Mirrors paused_tat().
_SLOW_DOWN_LUA = (
    _LUA_NOW
    + """
local paused = math.ceil(now + tonumber(ARGV[4]) + tolerance - interval)
if paused > tat then
  redis.call('SET', KEYS[1], string.format('%.0f', paused),
             'PX', string.format('%.0f', math.max(1, math.ceil((paused - now) / 1000))))
end
return 0
"""
)


# How far ahead a caller may take a slot: deep enough for a process's call threads (64 at 95/s queue about
# 0.7 s) to wait with one round trip each; callers queued further back sleep and ask again. A 429 seen by
# this process sends its callers holding a slot back to the queue; slots taken in other processes before
# it still go out, at most this long's worth.
MAX_RESERVATION_SECONDS = 1.0


class RedisRateBudget(_PollingBudget):
    """The budget in Redis: one key per account, changed only by Lua scripts (atomic, server clock).

    acquire() reserves: the script takes the next free slot and says when it starts, and the caller
    sleeps until then. Polling (ask, sleep the hinted wait, ask again) made every queued thread of a
    process wake and ask Redis again at each slot, all but one in vain: a round trip per refusal."""

    def __init__(
        self,
        redis_client: redis.Redis,
        rate_per_second: float,
        burst: float | None = None,
        *,
        key_prefix: str = REDIS_KEY_PREFIX,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (epoch seconds) replaces the Redis server's TIME: for deterministic tests only."""
        super().__init__(rate_per_second, burst, sleep=sleep, monotonic=monotonic)
        self.key_prefix = key_prefix
        self._clock = clock
        # Registered once: later calls send EVALSHA and reload the script if the server forgot it.
        self._acquire_script = redis_client.register_script(_ACQUIRE_LUA)
        self._slow_down_script = redis_client.register_script(_SLOW_DOWN_LUA)
        self._reserve_script = redis_client.register_script(_RESERVE_LUA)
        # How many 429 pauses this process has applied: a slot taken before one is given up.
        self._pauses = 0
        self._gcra_args = [f"{self.interval * 1e6:.3f}", f"{self.tolerance * 1e6:.3f}"]

    def key(self, account: str | None) -> str:
        return self.key_prefix + budget_account(account)

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(math.floor(self._clock() * 1e6))

    def try_acquire(self, account: str | None) -> float:
        granted, wait_us = self._acquire_script(
            keys=[self.key(account)], args=[*self._gcra_args, self._now_arg()]
        )
        return 0.0 if granted else int(wait_us) / 1e6

    def reserve(self, account: str | None, max_ahead: float = MAX_RESERVATION_SECONDS) -> tuple[bool, float]:
        """(taken, wait): taken, the caller's slot starts in `wait` seconds (0.0: now); not taken, the
        next slot is `wait` seconds away, further than `max_ahead`."""
        taken, wait_us = self._reserve_script(
            keys=[self.key(account)], args=[*self._gcra_args, self._now_arg(), f"{max_ahead * 1e6:.0f}"]
        )
        return bool(taken), int(wait_us) / 1e6

    def acquire(self, account: str | None, timeout: float | None = None) -> float:
        started = self._monotonic()
        while True:
            waited = self._monotonic() - started
            horizon = MAX_RESERVATION_SECONDS
            if timeout is not None:
                # Never take a slot the caller will not wait for: it would go unused.
                horizon = min(horizon, max(0.0, timeout - waited))
            pauses = self._pauses
            taken, wait = self.reserve(account, horizon)
            if taken:
                if wait > 0:
                    self._sleep(wait)
                if self._pauses == pauses:
                    return waited + wait
                continue  # Stripe said 429 while this caller slept: queue again behind the pause
            # The TAT only moves forward, so `wait` is a lower bound: past the deadline, give up now.
            if timeout is not None and waited + wait > timeout:
                raise RateBudgetTimeout(budget_account(account), wait, timeout)
            # Ask again when the slot comes within reach (a reservation then), not when it is due.
            self._sleep(max(wait - MAX_RESERVATION_SECONDS, 1e-3))

    def slow_down(self, account: str | None, seconds: float = DEFAULT_SLOW_DOWN_SECONDS) -> None:
        log.warning(
            "Stripe rate limit hit for %s: pausing its budget %.1fs", budget_account(account), seconds
        )
        self._pauses += 1
        self._slow_down_script(
            keys=[self.key(account)], args=[*self._gcra_args, self._now_arg(), f"{seconds * 1e6:.0f}"]
        )


class DatabaseRateBudget(_PollingBudget):
    """The budget in the database (REDIS_URL unset): a `rate_limit_state` row per account, locked while
    it changes (SELECT ... FOR UPDATE on PostgreSQL; on SQLite every transaction is BEGIN IMMEDIATE)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        rate_per_second: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (epoch seconds) replaces the database's clock: for deterministic tests only."""
        super().__init__(rate_per_second, burst, sleep=sleep, monotonic=monotonic)
        self._session_factory = session_factory
        self._clock = clock

    def _locked_tat(self, session: Session, account: str) -> float:
        locked = select(RateLimitState.tat).where(RateLimitState.account == account).with_for_update()
        tat = session.scalar(locked)
        if tat is None:
            # First use of this account: create the row, tolerating another process doing the same.
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            session.execute(
                dialect.insert(RateLimitState).values(account=account, tat=0.0).on_conflict_do_nothing()
            )
            tat = session.scalar(locked)
        assert tat is not None
        return float(tat)

    def _now(self, session: Session) -> float:
        # Read after the row lock, or time spent waiting for it would make `now` stale and grant early.
        if self._clock is not None:
            return self._clock()
        if session.get_bind().dialect.name == "postgresql":
            # The database's clock: workers on several machines share it, as they share Redis's TIME.
            return float(session.scalar(text("SELECT extract(epoch FROM clock_timestamp())")))
        return time.time()  # SQLite: a file on this machine, so every process reads the same clock

    def _store(self, session: Session, account: str, tat: float) -> None:
        session.execute(update(RateLimitState).where(RateLimitState.account == account).values(tat=tat))

    def try_acquire(self, account: str | None) -> float:
        key = budget_account(account)
        with session_scope(self._session_factory) as session:
            tat = self._locked_tat(session, key)
            new_tat, wait = gcra_decision(tat, self._now(session), self.interval, self.tolerance)
            if wait == 0:
                self._store(session, key, new_tat)
            return wait

    def slow_down(self, account: str | None, seconds: float = DEFAULT_SLOW_DOWN_SECONDS) -> None:
        key = budget_account(account)
        log.warning("Stripe rate limit hit for %s: pausing its budget %.1fs", key, seconds)
        with session_scope(self._session_factory) as session:
            tat = self._locked_tat(session, key)
            paused = paused_tat(tat, self._now(session), seconds, self.interval, self.tolerance)
            if paused > tat:
                self._store(session, key, paused)


def rate_budget_from_config(
    config: Config, session_factory: sessionmaker[Session]
) -> RedisRateBudget | DatabaseRateBudget:
    """Redis when REDIS_URL is set, else the database; the rate is STRIPE_RATE_LIMIT."""
    if config.redis_url:
        # Bounded socket waits: a hung Redis must surface as an error, not freeze every charge.
        client = redis.Redis.from_url(config.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
        return RedisRateBudget(client, config.stripe_rate_limit)
    if config.database_url.startswith("sqlite"):
        session_factory = _sqlite_budget_sessionmaker(config.database_url)
    return DatabaseRateBudget(session_factory, config.stripe_rate_limit)


def _sqlite_budget_sessionmaker(database_url: str) -> sessionmaker[Session]:
    """SQLite has one write lock per file. A process that holds the main database's lock while it calls
    Stripe (a web request saving a card) would wait on itself for a token, so on SQLite the budget
    lives in a file of its own beside the main one."""
    main = make_url(database_url).database
    path = f"{main}.ratelimit" if main and main != ":memory:" else ":memory:"
    engine = make_engine(f"sqlite:///{path}")
    table_of(RateLimitState).create(engine, checkfirst=True)
    return sessionmaker(bind=engine, expire_on_commit=False)


def gateway_hooks(
    budget: RateBudget,
    *,
    timeout: float | None = DEFAULT_ACQUIRE_TIMEOUT_SECONDS,
    slow_down_seconds: float = DEFAULT_SLOW_DOWN_SECONDS,
    recorder: MetricsRecorder | None = None,
) -> tuple[AccountCallback, AccountCallback]:
    """(before_request, on_rate_limited) for StripeGateway: take a token before every API call; on a 429
    pause the account for every process. before_request raises RateBudgetTimeout past `timeout`.
    `recorder` is told how long each token took, and of each timeout (metrics)."""

    def before_request(stripe_account: str | None) -> None:
        try:
            waited = budget.acquire(stripe_account, timeout)
        except RateBudgetTimeout:
            if recorder is not None:
                recorder.count_rate_timeout()
            raise
        except (redis.RedisError, OperationalError) as exc:
            # The budget's store is down: nothing was sent, so the caller may simply try again later.
            raise RateBudgetUnavailable(budget_account(stripe_account), exc) from exc
        if recorder is not None:
            recorder.observe_rate_wait(waited)

    def on_rate_limited(stripe_account: str | None) -> None:
        try:
            budget.slow_down(stripe_account, slow_down_seconds)
        except (redis.RedisError, OperationalError) as exc:  # advice only: the 429 is handled anyway
            log.warning("could not slow the Stripe budget down: %s", exc)

    return before_request, on_rate_limited


def rate_limited_gateway(config: Config, session_factory: sessionmaker[Session]) -> StripeGateway:
    """The gateway every process uses: each Stripe call takes a token from the account's shared budget,
    and its wait and the call's latency are recorded for /metrics."""
    recorder = metrics_recorder_from_config(config)
    before_request, on_rate_limited = gateway_hooks(
        rate_budget_from_config(config, session_factory),
        timeout=DEFAULT_ACQUIRE_TIMEOUT_SECONDS,
        recorder=recorder,
    )
    return gateway_from_config(
        config,
        before_request=before_request,
        # A token is waited for inside the call: it counts in how long a call can take.
        before_request_max_seconds=DEFAULT_ACQUIRE_TIMEOUT_SECONDS,
        on_rate_limited=on_rate_limited,
        on_call=recorder.observe_stripe_call if recorder.enabled else None,
    )
