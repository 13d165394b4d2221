"""Admin: changing an invoice's parameters from its page (payment method, auto-charge, due date, void).

The form is web/templates/admin/invoice_parameters.html, included in the invoice page; the rules and the
audit are shared.services.invoice_changes. After the change the invoice page is drawn again, so the
Charge buyer button and its tooltip follow at once.
"""

from __future__ import annotations

from datetime import date

from flask import flash, g, redirect, request, url_for
from flask.typing import ResponseReturnValue

from shared.services.invoice_changes import InvoiceChangeRefused, InvoiceChanges, change_invoice
from shared.services.invoices import InvoiceError
from web.admin import _invoice_or_404, bp
from web.pages import login_required_admin
from web.services import session_scope

CHANGED_WORDS = {
    "payment_method": "payment method",
    "auto_charge": "auto-charge",
    "due_date": "due date",
    "total": "total",
    "void": "void",
}


def _back(invoice_id: int) -> ResponseReturnValue:
    return redirect(url_for("admin.invoice", invoice_id=invoice_id) + "#invoice-parameters"), 303


def _apply(invoice_id: int, changes: InvoiceChanges) -> list[str] | None:
    """Apply the changes under the invoice's lock; flash why not when refused (then None)."""
    try:
        with session_scope() as db:
            inv = _invoice_or_404(db, invoice_id, lock=True)
            return change_invoice(db, inv, changes, actor=g.actor)
    except (InvoiceError, InvoiceChangeRefused) as exc:
        flash(f"Invoice not changed: {exc}", "error")
        return None


@bp.post("/invoices/<int:invoice_id>/parameters")
@login_required_admin
def invoice_parameters(invoice_id: int) -> ResponseReturnValue:
    form = request.form
    raw_due = (form.get("due_date") or "").strip()
    try:
        due = date.fromisoformat(raw_due) if raw_due else None
    except ValueError:
        flash("Invoice not changed: the due date must look like 2026-12-31.", "error")
        return _back(invoice_id)
    changed = _apply(
        invoice_id,
        InvoiceChanges(
            payment_method=form.get("payment_method") or None,
            auto_charge=form.get("auto_charge") == "on",
            due_date=due,
        ),
    )
    if changed == []:
        flash("Nothing to change: the invoice already reads that way.", "success")
    elif changed:
        flash(f"Invoice updated: {', '.join(CHANGED_WORDS[name] for name in changed)}.", "success")
    return _back(invoice_id)


@bp.post("/invoices/<int:invoice_id>/void")
@login_required_admin
def void_invoice(invoice_id: int) -> ResponseReturnValue:
    if _apply(invoice_id, InvoiceChanges(void=True)):
        flash("Invoice voided: it takes no more charges or payments.", "success")
    return _back(invoice_id)
