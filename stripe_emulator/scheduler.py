"""What happens later by itself: a pending refund settling, a dispute under review being decided, an
open Checkout Session expiring.

Each such change is a plan kept with the object's account (``AccountData.plans``, saved in the state
file) and timed here; a test hook runs a plan at once instead (``/_emulator/.../settle``). The timer
only says "now": the emulator runs the plan under its store lock, if it is still there.
"""

from __future__ import annotations

import heapq
import itertools
import sys
import threading
import time
from collections.abc import Callable


class Scheduler:
    def __init__(self, run: Callable[[str, str], None]) -> None:
        self._run = run  # (account, object id) -> runs that object's plan if it is still due
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="emulator-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()

    def at(self, due: float, account: str, obj_id: str) -> None:
        """Run the plan of ``obj_id`` at ``due`` (epoch seconds)."""
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), account, obj_id))
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0][0] > time.time()):
                    self._cond.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.time()))
                if self._stopping:
                    return
                _, _, account, obj_id = heapq.heappop(self._heap)
            try:
                self._run(account, obj_id)
            except Exception as exc:  # a bug in one plan must not stop the others
                print(f"stripe_emulator: running the plan of {obj_id} failed: {exc!r}", file=sys.stderr)
