"""A guard around one kombu 5.7 Redis bug that would otherwise kill the whole worker.

When the broker connection drops while the worker holds unacknowledged messages, kombu later works
on them through the channel that died with the connection — restoring them while the channel
closes, or acknowledging a task that finished meanwhile — and raises AttributeError ('NoneType'
object has no attribute 'hostname' / 'client'). That error escapes as "Unrecoverable" and the worker
stops for good (the celery#9250 / kombu#582 family). Skipping that one step loses nothing: the
message stays in Redis's `unacked` hash until the visibility-timeout sweep puts it back, and every
task is safe to run twice.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as VirtualQoS

log = logging.getLogger(__name__)
_original_restore_unacked = kombu_redis.QoS.restore_unacked
_original_ack = kombu_redis.QoS.ack


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


def install() -> None:
    kombu_redis.QoS.restore_unacked = _restore_unacked
    kombu_redis.QoS.ack = _ack
