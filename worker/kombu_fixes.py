"""A guard around one kombu 5.7 Redis bug that would otherwise kill the whole worker, and one fix of its
cost per message.

When the broker connection drops while the worker holds unacknowledged messages, kombu later works
on them through the channel that died with the connection — restoring them while the channel
closes, or acknowledging a task that finished meanwhile — and raises AttributeError ('NoneType'
object has no attribute 'hostname' / 'client'). That error escapes as "Unrecoverable" and the worker
stops for good (the celery#9250 / kombu#582 family). Skipping that one step loses nothing: the
message stays in Redis's `unacked` hash until the visibility-timeout sweep puts it back, and every
task is safe to run twice.

kombu's Redis channel builds a new `redis.Redis` object for every command it sends outside the BRPOP
loop (`conn_or_acquire()` without a client): twice per task (the delivery's unacked bookkeeping, then
the ack) and once per publish. The object holds no connection of its own, it borrows one from the
channel's pool per command, but building one costs ~0.08 ms of CPU (py-spy put ~8% of the charge
worker's time under the GIL there). One per channel is enough: a `redis.Redis` over a connection pool may
be shared between threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as VirtualQoS

log = logging.getLogger(__name__)
_original_restore_unacked = kombu_redis.QoS.restore_unacked
_original_ack = kombu_redis.QoS.ack
# Where a channel keeps its reusable client (an attribute kombu does not use).
_REUSED_CLIENT = "_offsession_reused_client"


def _restore_unacked(self: Any, client: Any = None) -> None:
    try:
        _original_restore_unacked(self, client)
    except AttributeError as exc:
        log.warning("broker connection gone; unacked messages left for the visibility sweep (%s)", exc)
        self._delivered.clear()


def _ack(self: Any, delivery_tag: Any) -> None:
    try:
        _original_ack(self, delivery_tag)
    except AttributeError as exc:
        log.warning(
            "cannot ack on a channel whose connection is gone; the visibility sweep will "
            "redeliver the message (%s)",
            exc,
        )
        VirtualQoS.ack(self, delivery_tag)


@contextmanager
def _conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    """kombu's Channel.conn_or_acquire, with the client it builds kept for the channel's next command."""
    if client:
        yield client
        return
    reused = getattr(self, _REUSED_CLIENT, None)
    # A new pool (kombu builds one again after the channel's was closed) gets a client of its own.
    if reused is None or reused.connection_pool is not self.pool:
        reused = self._create_client()
        setattr(self, _REUSED_CLIENT, reused)
    yield reused


def install() -> None:
    kombu_redis.QoS.restore_unacked = _restore_unacked
    kombu_redis.QoS.ack = _ack
    kombu_redis.Channel.conn_or_acquire = _conn_or_acquire
