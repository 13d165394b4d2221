"""worker.kombu_fixes on a real redis-server: a channel keeps one Redis client for its commands, and
messages still go through the delivery, the unacked bookkeeping and the ack."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection

from tests.support.services import RedisServer
from worker import kombu_fixes

pytestmark = pytest.mark.integration


def test_a_channel_sends_its_commands_through_one_client(redis_server: RedisServer) -> None:
    kombu_fixes.install()
    url = f"{redis_server.url}/14"
    with Connection(url, transport_options={"visibility_timeout": 60}) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        given = redis.Redis.from_url(url)
        with channel.conn_or_acquire(given) as passed:
            assert passed is given

        queue = connection.SimpleQueue("kombu-fixes")
        for n in range(3):
            queue.put({"n": n})
        received = [queue.get(timeout=5) for _ in range(3)]
        assert sorted(message.payload["n"] for message in received) == [0, 1, 2]
        # Delivered and not yet acknowledged: in the unacked hash, where a dead worker's messages wait.
        assert given.hlen("unacked") == 3
        for message in received:
            message.ack()
        assert given.hlen("unacked") == 0 and given.zcard("unacked_index") == 0
        queue.close()


def test_a_closed_channel_s_successor_gets_a_client_of_its_own(redis_server: RedisServer) -> None:
    kombu_fixes.install()
    url = f"{redis_server.url}/14"
    with Connection(url) as connection:
        channel = connection.channel()
        with channel.conn_or_acquire() as before:
            before.ping()
        channel.close()
        successor = connection.channel()
        with successor.conn_or_acquire() as after:
            assert after is not before
            assert after.ping()
        successor.close()
