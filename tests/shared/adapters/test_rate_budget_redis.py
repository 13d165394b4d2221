"""The Redis rate budget on a real redis-server, shared by several OS processes as workers share it."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from multiprocessing.queues import Queue

import pytest
import redis

from shared.adapters.rate_budget import RedisRateBudget
from shared.services.ports import RateBudgetTimeout
from tests.support.services import RedisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

RATE = 40.0
BURST = 4.0
PROCESSES = 4
WINDOW_SECONDS = 2.0


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    # Its own database number; every test also uses its own account, so nothing needs flushing.
    return f"{redis_server.url}/15"


def spend_budget(url: str, account: str, start_at: float, end_at: float, results: Queue) -> None:
    """One worker process: take tokens as fast as the shared budget allows until `end_at`."""
    budget = RedisRateBudget(redis.Redis.from_url(url), RATE, BURST)
    time.sleep(max(0.0, start_at - time.time()))
    first_call = time.time()
    grants = 0
    last_return = first_call
    while (remaining := end_at - time.time()) > 0:
        try:
            budget.acquire(account, timeout=remaining)
        except RateBudgetTimeout:
            break
        grants += 1
        last_return = time.time()
    results.put((grants, first_call, last_return))


def test_processes_sharing_one_budget_never_exceed_rate_times_window_plus_burst(redis_url: str) -> None:
    context = multiprocessing.get_context("fork")
    results: Queue = context.Queue()
    account = f"acct_{uuid.uuid4().hex[:12]}"
    start_at = time.time() + 0.3  # every process is up and connected before the first token
    processes = [
        context.Process(
            target=spend_budget, args=(redis_url, account, start_at, start_at + WINDOW_SECONDS, results)
        )
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=15) for _ in processes]
    for process in processes:
        process.join(5)
        assert process.exitcode == 0

    total = sum(grants for grants, _, _ in reports)
    # Redis TIME and time.time() read the same clock here, so every grant falls inside this span.
    span = max(last for _, _, last in reports) - min(first for _, first, _ in reports)
    assert span < WINDOW_SECONDS + 0.5
    assert total <= int(RATE * span) + BURST
    # Shared, not per process: alone each could have taken it all; together they get the rate, no more.
    # (Who wins each token is a race, so the split between processes is not asserted, only that it is one.)
    assert sum(1 for grants, _, _ in reports if grants > 0) >= 2
    assert total >= 0.85 * RATE * WINDOW_SECONDS


def test_a_429_seen_by_one_process_pauses_the_others(redis_url: str) -> None:
    account = f"acct_{uuid.uuid4().hex[:12]}"
    # Separate clients and connections, as in separate worker processes.
    throttled = RedisRateBudget(redis.Redis.from_url(redis_url), RATE, BURST)
    other = RedisRateBudget(redis.Redis.from_url(redis_url), RATE, BURST)
    assert other.try_acquire(account) == 0.0
    throttled.slow_down(account, 1.0)
    assert 0.9 < other.try_acquire(account) <= 1.0
    started = time.monotonic()
    other.acquire(account, timeout=2.0)
    assert 0.9 < time.monotonic() - started < 1.5


def test_the_key_expires_once_the_account_is_idle(redis_url: str) -> None:
    account = f"acct_{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_url)
    budget = RedisRateBudget(client, RATE, BURST)
    assert budget.try_acquire(account) == 0.0
    assert 0 < client.pttl(budget.key(account)) <= 1000 / RATE
    started = time.monotonic()
    wait_until(lambda: client.exists(budget.key(account)) == 0, timeout=5, what="the idle key expiring")
    assert time.monotonic() - started <= 2 / RATE + 1  # it lives as long as a token takes, no longer
    assert budget.try_acquire(account) == 0.0


class CountingBudget(RedisRateBudget):
    """Counts the budget's Redis round trips (every one is a script call through reserve())."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls = 0
        self._count_lock = threading.Lock()

    def reserve(self, account: str | None, max_ahead: float = 1.0) -> tuple[bool, float]:
        with self._count_lock:
            self.calls += 1
        return super().reserve(account, max_ahead)


def test_threads_queued_on_the_budget_ask_redis_about_once_per_grant(redis_url: str) -> None:
    """32 threads of one process waiting on a 40/s budget: each takes its slot and sleeps until it, so a
    grant costs one round trip (polling woke every waiter at each slot to ask again, all but one in vain)."""
    account = f"acct_{uuid.uuid4().hex[:12]}"
    budget = CountingBudget(redis.Redis.from_url(redis_url), RATE, BURST)
    started = time.time()
    deadline = started + WINDOW_SECONDS
    granted: list[float] = []
    lock = threading.Lock()

    def call_thread() -> None:
        while (remaining := deadline - time.time()) > 0:
            try:
                budget.acquire(account, timeout=remaining)
            except RateBudgetTimeout:
                return
            with lock:
                granted.append(time.time())

    threads = [threading.Thread(target=call_thread) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    elapsed = max(granted) - started
    assert len(granted) <= int(RATE * elapsed) + BURST  # the rate still holds
    assert len(granted) >= 0.85 * RATE * WINDOW_SECONDS
    # The timeouts at the end ask once each without a grant: 32 at most.
    assert budget.calls <= len(granted) + 32
    assert budget.calls / len(granted) < 1.5


def test_a_429_in_this_process_sends_callers_holding_a_slot_back_behind_the_pause(redis_url: str) -> None:
    account = f"acct_{uuid.uuid4().hex[:12]}"
    budget = CountingBudget(redis.Redis.from_url(redis_url), RATE, BURST)
    for _ in range(int(BURST) + 10):
        assert budget.reserve(account)[0]  # slots taken up to 250 ms ahead
    # The next caller takes the slot about 275 ms ahead and sleeps; a 429 arrives meanwhile.
    result: list[float] = []
    waiter = threading.Thread(target=lambda: result.append(budget.acquire(account, timeout=3.0)))
    waiter.start()
    wait_until(lambda: budget.calls > int(BURST) + 10, timeout=5, what="the waiter taking its slot")
    budget.slow_down(account, 1.0)
    waiter.join(5)
    assert result and 0.95 < result[0] < 1.6  # it went after the pause, not in its slot at 275 ms
