"""API requests made safe to retry with an Idempotency-Key: the first answer is kept and replayed.

A request is known by its key and a fingerprint of what it asked; the same key with another request
is refused. The answer is written in the transaction of the change it answers for, so a replay never
tells of a change that was rolled back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.domain.models import ApiIdempotencyRecord


class IdempotencyKeyReused(Exception):
    """The key was used for a different request; the message is fit to show."""


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: dict[str, Any]


class IdempotentRequest:
    def __init__(self, key: str, request: dict[str, Any]) -> None:
        self.key = key
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
        self.fingerprint = hashlib.sha256(canonical.encode()).hexdigest()

    def earlier_answer(self, session: Session) -> StoredAnswer | None:
        """The answer given to this request before, or None; IdempotencyKeyReused when the key was used
        for another request."""
        record = session.scalar(select(ApiIdempotencyRecord).where(ApiIdempotencyRecord.key == self.key))
        if record is None:
            return None
        if record.request_fingerprint != self.fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used for a different request; use a new key."
            )
        return StoredAnswer(record.response_status, record.response_body)

    def remember(self, session: Session, status: int, body: dict[str, Any]) -> None:
        """Keep the answer in the caller's transaction (a concurrent twin's commit fails on the key)."""
        session.add(
            ApiIdempotencyRecord(
                key=self.key, request_fingerprint=self.fingerprint, response_status=status, response_body=body
            )
        )
