"""Admin: CSV downloads of the invoice list (its current filters), of charges and of payments over a
date range, streamed as they are read (shared.services.exports)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from flask import Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from shared.services import exports
from shared.services.exports import ExportError
from shared.services.invoices import DUE_FILTERS, INVOICE_STATUSES
from web.admin import bp
from web.pages import login_required_admin
from web.services import sessions


def _csv(
    filename: str, header: Sequence[str], rows: Callable[[Session], Iterable[Sequence[Any]]]
) -> Response:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    response = Response(exports.stream_csv(sessions(), header, rows), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}-{stamp}.csv"'
    return response


@bp.get("/exports")
@login_required_admin
def exports_page() -> ResponseReturnValue:
    start, end = exports.parse_range(None, None)
    return render_template("admin/exports.html", start=start.isoformat(), end=end.isoformat())


@bp.get("/exports/invoices.csv")
@login_required_admin
def export_invoices() -> ResponseReturnValue:
    """The invoice list as filtered on /admin/invoices (the same query parameters)."""
    status = request.args.get("status") or None
    due = request.args.get("due") or None
    auto_charge = {"yes": True, "no": False}.get(request.args.get("auto_charge") or "")
    search = (request.args.get("q") or "").strip()[:100]
    filters = {
        "status": status if status in INVOICE_STATUSES else None,
        "due": due if due in DUE_FILTERS else None,
        "auto_charge": auto_charge,
        "search": search,
    }
    return _csv("invoices", exports.INVOICE_HEADER, lambda s: exports.invoice_rows(s, **filters))


def _ranged(filename: str, header: Sequence[str], rows: Any) -> ResponseReturnValue:
    try:
        start, end = exports.parse_range(request.args.get("from"), request.args.get("to"))
    except ExportError as exc:
        flash(f"Nothing exported: {exc}", "error")
        return redirect(url_for("admin.exports_page")), 303
    return _csv(f"{filename}-{start}-to-{end}", header, lambda s: rows(s, start, end))


@bp.get("/exports/charges.csv")
@login_required_admin
def export_charges() -> ResponseReturnValue:
    return _ranged("charges", exports.CHARGE_HEADER, exports.charge_rows)


@bp.get("/exports/payments.csv")
@login_required_admin
def export_payments() -> ResponseReturnValue:
    return _ranged("payments", exports.PAYMENT_HEADER, exports.payment_rows)
