"""The audit trail: who did what, when, for every admin action and every attempt transition."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from shared.models import AuditEvent


def record(
    session: Session,
    actor: str,
    action: str,
    *,
    invoice_id: int | None = None,
    charge_attempt_id: str | None = None,
    **detail: Any,
) -> AuditEvent:
    entry = AuditEvent(
        actor=actor,
        action=action,
        invoice_id=invoice_id,
        charge_attempt_id=charge_attempt_id,
        detail={k: v for k, v in detail.items() if v is not None},
    )
    session.add(entry)
    return entry
