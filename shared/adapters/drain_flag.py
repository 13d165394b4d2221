"""The webhook drain's "a drain is pending" flag in Redis: a burst of events costs one drain message.

The drain itself is shared.services.webhooks.drain_events; without Redis (the embedded broker) there is
no flag and every event gets a message of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from shared.config import Config

log = logging.getLogger(__name__)

# The flag says "a drain message is published and has not started yet".
DRAIN_PENDING_KEY = "offsession:webhook-drain-pending"
# Only a safety net: a flag whose message was lost stops holding back new drains after this long.
DRAIN_PENDING_TTL_SECONDS = 5


class DrainRequests:
    """The "a drain is pending" flag in Redis, so that a burst of events costs one drain message.

    Why no event is left behind (the race): the endpoint sets the flag only after its event is
    committed, and a drain clears the flag (clear()) before its first look at the table. So when the
    endpoint finds the flag already set, a drain message is published that has not started yet: its
    looks all come after this event's commit and will see it. When a drain is past its last look, it
    cleared the flag long before, so the endpoint's SET NX succeeds and publishes another drain. The
    flag expiring early (TTL) or being cleared by another drain only ever costs an extra, empty drain.
    """

    def __init__(self, client: redis.Redis | None) -> None:
        self.client = client

    @property
    def coalescing(self) -> bool:
        return self.client is not None

    def request(self, publish_drain: Callable[[], None]) -> bool:
        """Publish a drain unless one is pending; True when this call published it."""
        assert self.client is not None, "no Redis: publish one message per event"
        if not self.client.set(DRAIN_PENDING_KEY, 1, nx=True, ex=DRAIN_PENDING_TTL_SECONDS):
            return False
        try:
            publish_drain()
        except Exception:
            # Not published: a flag left set would hold back the next events' drain for the TTL.
            self.client.delete(DRAIN_PENDING_KEY)
            raise
        return True

    def clear(self) -> None:
        if self.client is None:
            return
        try:
            self.client.delete(DRAIN_PENDING_KEY)
        except redis.RedisError as exc:
            # Drain all the same: a flag left set only delays the next events' drain by its TTL, and the
            # janitor re-drives any event that waits longer.
            log.warning("webhook drain flag not cleared: %s", exc)


def drain_requests_from_config(config: Config) -> DrainRequests:
    """The flag lives in the broker when it is Redis, else in REDIS_URL's Redis; with neither (the
    embedded filesystem broker), no flag: one message per event."""
    broker = config.celery_broker_url
    url = broker if broker.startswith(("redis://", "rediss://")) else config.redis_url
    if url is None:
        return DrainRequests(None)
    # Short timeouts: a slow flag falls back to a message of its own, it must not hold up the request.
    return DrainRequests(redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0))
