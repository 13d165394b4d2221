"""Idempotency keys as Stripe's v1 API keeps them.

A key is scoped to (account, Idempotency-Key). The first request claims it; once it has executed its
status and body are saved and every later request with the same key and the same parameters gets them
back unchanged. Requests that fail before execution (validation, injected faults) release the claim.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

# Stripe prunes keys "at least 24 hours old"; the emulator forgets them after exactly that.
KEY_TTL_S = 24 * 3600.0


def fingerprint(pairs: list[tuple[str, str]]) -> str:
    """Order-independent digest of the request's parameters."""
    h = hashlib.sha256()
    for key, value in sorted(pairs):
        h.update(key.encode())
        h.update(b"\x00")
        h.update(value.encode())
        h.update(b"\x01")
    return h.hexdigest()


@dataclass
class Record:
    method: str
    path: str
    fingerprint: str
    created: float
    # None while the first request with this key is still executing.
    status: int | None = None
    body: bytes = b""
    request_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "status": self.status,
            "body": self.body.decode(),
            "request_id": self.request_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(
            method=data["method"],
            path=data["path"],
            fingerprint=data["fingerprint"],
            created=data["created"],
            status=data["status"],
            body=data["body"].encode(),
            request_id=data["request_id"],
        )


class Claim(Enum):
    NEW = "new"
    REPLAY = "replay"
    IN_USE = "in_use"
    OTHER_ENDPOINT = "other_endpoint"
    OTHER_PARAMS = "other_params"


class IdempotencyStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], Record] = {}

    def claim(
        self, account: str, key: str, method: str, path: str, digest: str
    ) -> tuple[Claim, Record | None]:
        now = time.time()
        with self._lock:
            rec = self._records.get((account, key))
            if rec is not None and rec.status is not None and now - rec.created > KEY_TTL_S:
                rec = None
            if rec is None:
                self._records[(account, key)] = Record(method, path, digest, now)
                return Claim.NEW, None
            if rec.status is None:
                return Claim.IN_USE, rec
            if (rec.method, rec.path) != (method, path):
                return Claim.OTHER_ENDPOINT, rec
            if rec.fingerprint != digest:
                return Claim.OTHER_PARAMS, rec
            return Claim.REPLAY, rec

    def complete(self, account: str, key: str, status: int, body: bytes, request_id: str) -> None:
        with self._lock:
            rec = self._records.get((account, key))
            if rec is not None:
                rec.status = status
                rec.body = body
                rec.request_id = request_id

    def release(self, account: str, key: str) -> None:
        """Forget an in-progress claim whose request did not execute."""
        with self._lock:
            rec = self._records.get((account, key))
            if rec is not None and rec.status is None:
                del self._records[(account, key)]

    def prune(self) -> None:
        cutoff = time.time() - KEY_TTL_S
        with self._lock:
            stale = [k for k, r in self._records.items() if r.status is not None and r.created < cutoff]
            for k in stale:
                del self._records[k]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def to_json(self) -> list[dict[str, Any]]:
        with self._lock:
            # In-progress claims are not persisted: after a restart the request never finished.
            return [
                {"account": acct, "key": key, **rec.to_json()}
                for (acct, key), rec in self._records.items()
                if rec.status is not None
            ]

    def load_json(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._records = {(row["account"], row["key"]): Record.from_json(row) for row in rows}
