"""kombu's Redis transport with two fixes, as a transport class: Celery names it by import path
(`broker_transport` in shared.adapters.celeryconfig), so it applies exactly where the Redis broker is
used (the web's publisher and the workers) and nowhere else; nothing is patched process-wide.

Written for kombu 5.7 (README, Operations, "kombu's Redis transport"); importing it under another
kombu minor version fails, so whoever upgrades kombu checks whether the two bugs are still there:

1. A guard around one kombu 5.7 Redis bug that would otherwise kill the whole worker. When the broker
   connection drops while the worker holds unacknowledged messages, kombu later works on them through
   the channel that died with the connection — restoring them while the channel closes, or
   acknowledging a task that finished meanwhile — and raises AttributeError ('NoneType' object has no
   attribute 'hostname' / 'client'). That error escapes as "Unrecoverable" and the worker stops for
   good (the celery#9250 / kombu#582 family). Skipping that one step loses nothing: the message stays
   in Redis's `unacked` hash until the visibility-timeout sweep puts it back, and every task is safe to
   run twice.

2. The cost of a client per command. kombu's Redis channel builds a new `redis.Redis` object for every
   command it sends outside the BRPOP loop (`conn_or_acquire()` without a client): twice per task (the
   delivery's unacked bookkeeping, then the ack) and once per publish. The object holds no connection
   of its own, it borrows one from the channel's pool per command, but building one costs ~0.08 ms of
   CPU (py-spy put ~8% of the charge worker's time under the GIL there; ~1 ms per publish in the web).
   One per channel is enough: a `redis.Redis` over a connection pool may be shared between threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import QoS as VirtualQoS

log = logging.getLogger(__name__)

# The kombu release line these fixes were written against and tested with (pyproject.toml bounds it).
WRITTEN_FOR_KOMBU = (5, 7)


class KombuVersionError(RuntimeError):
    """kombu moved past the release this transport was written for."""


def check_kombu_version(version: tuple[int, ...]) -> None:
    if tuple(version[:2]) != WRITTEN_FOR_KOMBU:
        written = ".".join(map(str, WRITTEN_FOR_KOMBU))
        raise KombuVersionError(
            f"shared.adapters.kombu_redis was written for kombu {written}.x but kombu "
            f"{'.'.join(map(str, version[:3]))} is installed: check whether the two kombu bugs it works "
            "around (README, Operations, kombu's Redis transport) are still there, adapt it, then move "
            "WRITTEN_FOR_KOMBU and the kombu bound in pyproject.toml"
        )


check_kombu_version(tuple(kombu.VERSION[:3]))


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except AttributeError as exc:
            log.warning("broker connection gone; unacked messages left for the visibility sweep (%s)", exc)
            self._delivered.clear()

    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        except AttributeError as exc:
            log.warning(
                "cannot ack on a channel whose connection is gone; the visibility sweep will "
                "redeliver the message (%s)",
                exc,
            )
            # Forget the delivery locally, as a successful ack would: Redis keeps it for the sweep.
            VirtualQoS.ack(self, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    # The client conn_or_acquire built last, kept for the channel's next command.
    _reused_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        reused = self._reused_client
        # A new pool (kombu builds one again after the channel's was closed) gets a client of its own.
        if reused is None or reused.connection_pool is not self.pool:
            reused = self._create_client()
            self._reused_client = reused
        yield reused


class Transport(kombu_redis.Transport):
    Channel = Channel
