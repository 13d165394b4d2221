"""shared.adapters.kombu_redis on a real redis-server: the transport the broker settings name, in the web's
publisher and in the workers; a channel keeps one Redis client for its commands; messages still go
through the delivery, the unacked bookkeeping and the ack; a connection gone mid-ack or mid-restore does
not kill the worker; and the class refuses a kombu it was not written for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from shared.adapters import kombu_redis
from tests.support.services import RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
TRANSPORT = "shared.adapters.kombu_redis:Transport"


def test_a_channel_sends_its_commands_through_one_client(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}/14"
    with Connection(url, transport=TRANSPORT, transport_options={"visibility_timeout": 60}) as connection:
        channel = connection.default_channel
        assert isinstance(channel, kombu_redis.Channel)
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
    with Connection(f"{redis_server.url}/14", transport=TRANSPORT) as connection:
        channel = connection.channel()
        with channel.conn_or_acquire() as before:
            before.ping()
        channel.close()
        successor = connection.channel()
        with successor.conn_or_acquire() as after:
            assert after is not before
            assert after.ping()
        successor.close()


def test_an_ack_or_restore_on_a_dead_connection_leaves_the_message_for_the_sweep(
    redis_server: RedisServer,
) -> None:
    """kombu 5.7 raises AttributeError here (the worker would stop for good); the subclass logs and
    leaves the messages in Redis's unacked hash, where the visibility sweep finds them."""
    from kombu.transport import redis as stock

    url = f"{redis_server.url}/13"
    redis.Redis.from_url(url).flushdb()  # nothing left of another test: the unacked hash is counted below
    with Connection(url, transport=TRANSPORT, transport_options={"visibility_timeout": 60}) as connection:
        queue = connection.SimpleQueue("kombu-dead-ack")
        queue.put({"n": 1})
        queue.put({"n": 2})
        first, second = queue.get(timeout=5), queue.get(timeout=5)
        channel = first.channel
        qos = channel.qos
        # What a dropped connection leaves behind: the channel's pools gone, and its connection with them.
        channel._disconnect_pools()
        alive, channel.connection = channel.connection, None
        try:
            with pytest.raises(AttributeError):
                stock.QoS.ack(qos, first.delivery_tag)  # the bug, in this very state
            qos.ack(first.delivery_tag)
            assert first.delivery_tag in qos._dirty  # marked done here, as a successful ack would
            qos.restore_unacked()
            assert not qos._delivered
        finally:
            channel.connection = alive
        assert redis.Redis.from_url(url).hlen("unacked") == 2  # both kept for the sweep
        assert second.delivery_tag
        queue.close()


def test_the_version_guard_refuses_another_kombu_minor() -> None:
    kombu_redis.check_kombu_version((5, 7, 0))
    kombu_redis.check_kombu_version((5, 7, 9))
    for moved in ((5, 8, 0), (6, 0, 0), (5, 6, 3)):
        with pytest.raises(kombu_redis.KombuVersionError, match=r"written for kombu 5\.7\.x.*README"):
            kombu_redis.check_kombu_version(moved)


def _transport_class_in(code: str, broker_url: str, home: Path) -> dict[str, Any]:
    # A fresh interpreter per process kind: the Celery settings read the environment once, at import.
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "OFFSESSION_HOME": str(home),
        "DATABASE_URL": f"sqlite:///{home / 'db.sqlite'}",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=home, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


PUBLISH_AND_REPORT = """
import json
from kombu.transport import redis as stock
{make_app}
with app.connection_for_write() as conn:
    conn.ensure_connection(max_retries=1)
    channel = conn.default_channel
    print(json.dumps({{
        "transport": type(conn.transport).__module__ + ":" + type(conn.transport).__name__,
        "channel": type(channel).__module__ + ":" + type(channel).__name__,
        "stock_channel_untouched": stock.Channel.conn_or_acquire.__module__ == "kombu.transport.redis",
    }}))
"""


@pytest.mark.parametrize(
    "make_app",
    [
        # The publisher the web app and the CLI build (shared.bootstrap), and the workers' own app.
        "from shared.bootstrap import bootstrap; app = bootstrap().publisher.app",
        "from worker import app",
    ],
    ids=["web", "worker"],
)
def test_the_web_publisher_and_the_workers_use_the_transport(
    make_app: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    code = PUBLISH_AND_REPORT.format(make_app=make_app)
    seen = _transport_class_in(code, f"{redis_server.url}/12", tmp_path)
    assert seen["transport"] == TRANSPORT
    assert seen["channel"] == "shared.adapters.kombu_redis:Channel"
    assert seen["stock_channel_untouched"]  # nothing is patched process-wide
