"""The declarative base, the column types and the helpers every record module shares."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    MetaData,
    Table,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

from shared.domain.states import IN_FLIGHT

# Constraint names are fixed so that migrations on SQLite (batch mode) and PostgreSQL agree.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

INVOICE_PAYMENT_METHODS = ("online_card", "bank_transfer", "cash", "cheque", "other")
LEDGER_METHODS = ("card", "cash", "bank_transfer", "cheque", "other")
ATTEMPT_SOURCES = ("admin", "schedule", "client")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are refused: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def in_list(values: tuple[str, ...] | frozenset[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))


IN_FLIGHT_SQL = f"status IN ({in_list(frozenset(s.value for s in IN_FLIGHT))})"


def table_of(model: type[Base]) -> Table:
    """The Core Table of a mapped class: for the plain INSERTs and UPDATEs of the hot paths, which skip
    the ORM's unit of work."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}
