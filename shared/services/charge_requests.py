"""Requesting a charge: the one use case that opens a charge attempt for an invoice.

The attempt row, with its idempotency key, is written (queued) with its outbox message in one
transaction; the worker runs it (shared.services.charging). The amount is always the server's.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import Select, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.sql.dml import ReturningInsert

from shared.domain.eligibility import CHARGE_ALREADY_IN_PROGRESS, Blocker, charge_blockers, usable_card
from shared.domain.ledger import balance
from shared.domain.models import ChargeAttempt, Client, Invoice, Settings, table_of
from shared.domain.money import STRIPE_MAXIMUM_AMOUNT, format_money
from shared.domain.states import AttemptStatus
from shared.services import audit, outbox
from shared.services.ports import UnitOfWork
from shared.services.settings import SETTINGS_ROW_ID, get_settings

# Who asked for a charge: an admin (the admin page or the API), the client (the Client Zone), or the
# schedule (the batch and the automatic retries).
ChargeSource = Literal["admin", "client", "schedule"]
_ATTEMPT = table_of(ChargeAttempt)


class ChargeRequestError(ValueError):
    """The request itself is malformed (e.g. an amount above what is due): HTTP 422."""


class NotChargeable(Exception):
    """The invoice cannot be charged now: HTTP 409 with the blockers."""

    def __init__(self, blockers: list[Blocker]) -> None:
        super().__init__("; ".join(b.message for b in blockers))
        self.blockers = blockers


def idempotency_key_for(attempt_id: str) -> str:
    return f"offsession:charge:{attempt_id}"


def load_invoice_for_charge(session: Session, invoice_id: int, *, lock: bool = False) -> Invoice | None:
    query = _invoice_for_charge_query(lock)
    row = session.execute(query, {"invoice_id": invoice_id}).unique().one_or_none()
    if row is None:
        return None
    invoice, settings = row
    # The settings row rode along: get_settings() finds it in the identity map, which holds objects only
    # weakly, so the session keeps a reference to it.
    session.info["loaded_settings"] = settings
    return invoice


def load_invoices_for_charge(session: Session, invoice_ids: list[int]) -> dict[int, Invoice]:
    """load_invoice_for_charge() for several invoices in one query (unlocked), by id."""
    rows = session.execute(_invoices_for_charge_query(), {"invoice_ids": invoice_ids}).unique().all()
    if rows:
        session.info["loaded_settings"] = rows[0][1]
    return {invoice.id: invoice for invoice, _settings in rows}


@lru_cache(maxsize=1)
def _invoices_for_charge_query() -> Select[Invoice, Settings]:
    return _with_rule_needs(
        select(Invoice, Settings)
        .outerjoin(Settings, Settings.id == SETTINGS_ROW_ID)
        .where(Invoice.id.in_(bindparam("invoice_ids", expanding=True)))
    )


def _with_rule_needs(query: Select[Invoice, Settings]) -> Select[Invoice, Settings]:
    # One query for the invoice and all its rule needs: four round trips fewer on every click. The
    # collections multiply each other's rows (cards x payments x attempts), a handful each.
    return query.options(
        joinedload(Invoice.client, innerjoin=True).joinedload(Client.cards),
        joinedload(Invoice.payments),
        joinedload(Invoice.charge_attempts),
        joinedload(Invoice.disputes),
    )


@lru_cache(maxsize=2)
def _invoice_for_charge_query(lock: bool) -> Select[Invoice, Settings]:
    """Built once per process, the id a bound parameter: composing the statement was a tenth of a click's
    CPU (every option and clause is coerced and validated again on each build)."""
    query = _with_rule_needs(
        # The settings row (id 1) joined on: the rules need it, and a round trip of its own cost a tenth of
        # a click. Outer: a database built from the models has none until get_settings() adds it.
        select(Invoice, Settings)
        .outerjoin(Settings, Settings.id == SETTINGS_ROW_ID)
        .where(Invoice.id == bindparam("invoice_id"))
    )
    if lock:
        # Concurrent clicks on one invoice queue up here (PostgreSQL); SQLite serialises writers anyway.
        # NO KEY UPDATE: inserts that reference the invoice (their FK check takes KEY SHARE) do not wait.
        # OF invoice: only the invoice row is locked, not the joined client and cards.
        query = query.with_for_update(of=Invoice, key_share=True)
    return query


def request_charge(
    uow: UnitOfWork,
    invoice: Invoice,
    *,
    source: ChargeSource,
    requested_by: str,
    amount: int | None = None,
    batch_run_id: int | None = None,
    own_message: bool = True,
) -> ChargeAttempt:
    """Open a charge: the one way every entry point does it (the admin page, the API, the Client Zone,
    the batch and the automatic retries).

    `invoice` is loaded for charging (load_invoice_for_charge), locked by the caller's request. The
    queued attempt, its audit entry and its outbox message are written in the unit of work's
    transaction, and the message is published once that has committed. The amount is the server's:
    all that is due, or a part of it no larger than what is due. Raises ChargeRequestError (a malformed
    amount) or NotChargeable (charge_blockers(), or another attempt opened meanwhile).

    `own_message=False` leaves the message to the caller, which sends several attempts in one
    (shared.services.charge_batches.enqueue_grouped: the batch); a click keeps a message of its own, the
    quickest way to a worker.
    """
    session = uow.session
    if amount is not None:
        due = balance(invoice).amount_due
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise ChargeRequestError("amount must be a whole number of minor units (1000 is $10.00).")
        if amount <= 0:
            raise ChargeRequestError("amount must be positive.")
        if amount > STRIPE_MAXIMUM_AMOUNT:
            raise ChargeRequestError(f"amount may be at most {STRIPE_MAXIMUM_AMOUNT} minor units.")
        if due > 0 and amount > due:
            raise ChargeRequestError(
                f"{format_money(amount, invoice.currency)} is more than the "
                f"{format_money(due, invoice.currency)} due."
            )
    values = new_attempt_values(
        invoice,
        get_settings(session),
        source=source,
        requested_by=requested_by,
        amount=amount,
        batch_run_id=batch_run_id,
    )
    attempt = ChargeAttempt(invoice=invoice, **values)
    session.add(attempt)
    try:
        session.flush()
    except IntegrityError as exc:
        # The partial unique index: another request opened an attempt for this invoice meanwhile.
        raise NotChargeable([CHARGE_ALREADY_IN_PROGRESS]) from exc
    # The outbox and audit rows are plain INSERTs, not ORM objects (nothing reads them back here): the
    # unit of work flushes the attempt alone, and commit finds nothing left to flush.
    if own_message:
        outbox.enqueue_after_commit(uow, outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": attempt.id})
    audit.record_rows(session, [_requested_audit_row(values)])
    return attempt


def new_attempt_values(
    invoice: Invoice,
    settings: Settings,
    *,
    source: ChargeSource,
    requested_by: str,
    amount: int | None = None,
    batch_run_id: int | None = None,
) -> dict[str, Any]:
    """The columns of a queued attempt for `invoice` (loaded for charging), by the rules every opening
    goes through: charge_blockers() (NotChargeable), the amount from the ledger (all that is due unless
    a checked part is asked for), the key derived from the attempt's id, the card resolved now."""
    blockers = charge_blockers(invoice, settings, amount=amount)
    if blockers:
        raise NotChargeable(blockers)
    card = usable_card(invoice.client, settings)
    assert card is not None  # charge_blockers checked it
    attempt_id = str(uuid.uuid4())
    return {
        "id": attempt_id,
        "invoice_id": invoice.id,
        "amount": amount if amount is not None else balance(invoice).amount_due,
        "currency": invoice.currency,
        "source": source,
        "requested_by": requested_by,
        "status": AttemptStatus.QUEUED.value,
        "idempotency_key": idempotency_key_for(attempt_id),
        # Resolved now and stored, so every retry sends byte-identical parameters.
        "stripe_customer_id": card.stripe_customer_id or invoice.client.stripe_customer_id,
        "payment_method_id": card.stripe_payment_method_id,
        "stripe_account_id": settings.stripe_account_id,
        "batch_run_id": batch_run_id,
    }


def _requested_audit_row(values: dict[str, Any]) -> dict[str, Any]:
    return audit.row(
        values["requested_by"],
        "charge.requested",
        invoice_id=values["invoice_id"],
        charge_attempt_id=values["id"],
        amount=values["amount"],
        currency=values["currency"],
        source=values["source"],
    )


@dataclass
class OpenedPage:
    """What open_attempts() did with a page: the attempts opened (ids, in the page's order) and, by
    reason, the invoices it left alone."""

    attempt_ids: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def open_attempts(
    session: Session,
    invoices: Iterable[Invoice],
    *,
    source: ChargeSource,
    requested_by: str,
    batch_run_id: int | None = None,
    hold: Callable[[Invoice], str | None] | None = None,
) -> OpenedPage:
    """request_charge() for a page of invoices (loaded for charging, e.g. by the batch), all that each
    owes, in three statements: the attempts, their audit rows, and nothing else (the messages are the
    caller's: shared.services.charge_batches.enqueue_grouped).

    Each invoice goes through new_attempt_values(), the rules of every opening; `hold` may keep an
    otherwise chargeable one back (its reason counted). The attempts are one INSERT that skips a row the
    one-in-flight index refuses: an invoice given an attempt meanwhile by someone else is counted as a
    charge already in progress, and the rest of the page opens."""
    settings = get_settings(session)
    page = OpenedPage()
    rows: list[dict[str, Any]] = []
    for invoice in invoices:
        try:
            values = new_attempt_values(
                invoice, settings, source=source, requested_by=requested_by, batch_run_id=batch_run_id
            )
        except NotChargeable as exc:
            page.skipped[exc.blockers[0].code.value] += 1
            continue
        if hold is not None and (reason := hold(invoice)) is not None:
            page.skipped[reason] += 1
            continue
        rows.append(values)
    if not rows:
        return page
    inserted = set(session.scalars(_insert_skipping_conflicts(session), rows))
    if len(inserted) < len(rows):
        page.skipped[CHARGE_ALREADY_IN_PROGRESS.code.value] += len(rows) - len(inserted)
    opened = [values for values in rows if values["id"] in inserted]
    if opened:
        audit.record_rows(session, [_requested_audit_row(values) for values in opened])
    page.attempt_ids = [values["id"] for values in opened]
    return page


def _insert_skipping_conflicts(session: Session) -> ReturningInsert[tuple[str]]:
    # ON CONFLICT DO NOTHING without a target: a row refused by any unique index (here only the partial
    # one-in-flight index can refuse one: the ids are fresh) is skipped, not an error that would undo
    # the page. Both dialects have it (SQLite since 3.35, with RETURNING).
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(_ATTEMPT).on_conflict_do_nothing().returning(_ATTEMPT.c.id)
