"""The audit trail: who did what, when, for every admin action and every attempt transition."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from shared.domain.models import AuditEvent, table_of

# The Table, not the mapped class: a Core INSERT skips the ORM's bulk-insert machinery. Built once, the
# values bound at each call: composing it with .values() each time cost as much CPU as running it.
_INSERT = insert(table_of(AuditEvent))


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


def record_row(
    session: Session,
    actor: str,
    action: str,
    *,
    invoice_id: int | None = None,
    charge_attempt_id: str | None = None,
    **detail: Any,
) -> None:
    """record() as one INSERT, without an ORM object: for a hot path that never reads the entry back."""
    session.execute(
        _INSERT, row(actor, action, invoice_id=invoice_id, charge_attempt_id=charge_attempt_id, **detail)
    )


def row(
    actor: str,
    action: str,
    *,
    invoice_id: int | None = None,
    charge_attempt_id: str | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """An entry's values, for record_rows()."""
    return {
        "actor": actor,
        "action": action,
        "invoice_id": invoice_id,
        "charge_attempt_id": charge_attempt_id,
        "detail": {k: v for k, v in detail.items() if v is not None},
    }


def record_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Several entries (audit.row() each) in one INSERT."""
    session.execute(_INSERT, rows)
