"""The ChargeAttempt state machine: one small, pure table of what may follow what (README, "How a
charge moves").

Two ways in:
- `transition(current, target)` for our own decisions: an illegal move is a bug and raises.
- `observe(current, reported)` for what the outside world reports (webhooks, the janitor, a late
  worker): stale or out-of-order news is ignored, never applied backwards. Stripe's word that money
  moved always wins, so `failed` and `canceled` may still become `succeeded`.
"""

from __future__ import annotations

from enum import StrEnum


class AttemptStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    REQUIRES_ACTION = "requires_action"
    UNKNOWN = "unknown"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def label(self) -> str:
        """The words the admin sees."""
        return STATUS_LABELS[self]


TERMINAL = frozenset({AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.CANCELED})
IN_FLIGHT = frozenset(set(AttemptStatus) - TERMINAL)
# Where the charging has come to rest: final, or waiting for the client (nothing more happens until the
# client authenticates). What the admin's progress and `offsession charge-due` wait for.
SETTLED = TERMINAL | {AttemptStatus.REQUIRES_ACTION}

STATUS_LABELS: dict[AttemptStatus, str] = {
    AttemptStatus.QUEUED: "Queued",
    AttemptStatus.PROCESSING: "Processing",
    AttemptStatus.REQUIRES_ACTION: "Waiting for the client to authenticate",
    AttemptStatus.UNKNOWN: "Checking with Stripe",
    AttemptStatus.SUCCEEDED: "Succeeded",
    AttemptStatus.FAILED: "Failed",
    AttemptStatus.CANCELED: "Canceled",
}

S = AttemptStatus
ALLOWED: dict[AttemptStatus, frozenset[AttemptStatus]] = {
    # A retry waiting for its time goes processing → queued; while it waits, Stripe may still report
    # the outcome of the call whose answer was lost, and that news is the truth.
    S.QUEUED: frozenset({S.PROCESSING, S.CANCELED, S.SUCCEEDED, S.FAILED, S.REQUIRES_ACTION}),
    S.PROCESSING: frozenset({S.SUCCEEDED, S.FAILED, S.REQUIRES_ACTION, S.UNKNOWN, S.QUEUED}),
    S.REQUIRES_ACTION: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELED}),
    # The janitor may replay the create under the same key (back to processing) or learn the outcome.
    S.UNKNOWN: frozenset({S.PROCESSING, S.SUCCEEDED, S.FAILED, S.REQUIRES_ACTION, S.CANCELED}),
    # Money moved after all: Stripe's truth beats our record of a failure or a cancel.
    S.FAILED: frozenset({S.SUCCEEDED}),
    S.CANCELED: frozenset({S.SUCCEEDED}),
    S.SUCCEEDED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, current: AttemptStatus, target: AttemptStatus) -> None:
        super().__init__(f"a charge attempt cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: AttemptStatus | str, target: AttemptStatus | str) -> bool:
    return AttemptStatus(target) in ALLOWED[AttemptStatus(current)]


def transition(current: AttemptStatus | str, target: AttemptStatus | str) -> AttemptStatus:
    """Our own move: returns the new status, raises IllegalTransition when the table forbids it."""
    cur, tgt = AttemptStatus(current), AttemptStatus(target)
    if tgt not in ALLOWED[cur]:
        raise IllegalTransition(cur, tgt)
    return tgt


def observe(current: AttemptStatus | str, reported: AttemptStatus | str) -> AttemptStatus | None:
    """News from outside: the status to move to, or None when the news is stale or repeats."""
    cur, rep = AttemptStatus(current), AttemptStatus(reported)
    if rep == cur or rep not in ALLOWED[cur]:
        return None
    # Reports never send an attempt back to the queue: only the worker re-queues its own retries.
    if rep in (S.QUEUED, S.PROCESSING, S.UNKNOWN):
        return None
    return rep
