"""Admin pages: sign-in, invoices with the Charge buyer button, charges, settings."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time
from typing import Any

from flask import (
    Blueprint,
    abort,
    flash,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from shared.domain import ledger
from shared.domain.eligibility import charge_blockers, in_flight_attempt
from shared.domain.ledger import LedgerError
from shared.domain.models import (
    INVOICE_PAYMENT_METHODS,
    LEDGER_METHODS,
    AdminUser,
    AuditEvent,
    BatchRun,
    ChargeAttempt,
    DunningState,
    ReconciliationRun,
    WebhookEvent,
)
from shared.domain.money import MoneyError, format_money, parse_amount, to_major_string
from shared.domain.payments import GatewayError
from shared.domain.states import IN_FLIGHT, SETTLED, AttemptStatus
from shared.services import audit, charge_requests, login_throttle, payments
from shared.services.admins import AdminError, authenticate, change_password
from shared.services.batch import outcome_counts
from shared.services.charge_actions import ChargeNotCancelable, cancel_charge
from shared.services.charge_requests import ChargeRequestError, NotChargeable, load_invoice_for_charge
from shared.services.daily_reconciliation import (
    ReconciliationError,
    parse_day,
    request_reconciliation,
    yesterday_utc,
)
from shared.services.disputes import open_disputes
from shared.services.invoices import DUE_FILTERS, INVOICE_STATUSES, list_invoices
from shared.services.janitor import resolve_attempt
from shared.services.listings import numbered_page, page_number
from shared.services.login_throttle import admin_sign_in_counters
from shared.services.reconciliation_records import run_findings, runs_query
from shared.services.settings import get_settings
from web.login_limits import admin_refusal_message, client_ip, too_many_attempts
from web.pages import ADMIN_KEY, VERSION_KEY, begin_session, login_required_admin, protect_with_csrf
from web.serializers import charge_json, dispute_json
from web.services import gateway, session_scope, sessions, unit_of_work

log = logging.getLogger(__name__)
bp = Blueprint("admin", __name__, url_prefix="/admin")
protect_with_csrf(bp)

MAX_PAGE = 100_000  # keeps OFFSET a number the database takes
OPERATOR_STATUSES = ("queued", "processing", "unknown", "requires_action", "failed")
FLAGGED_EVENTS_SHOWN = 50
CHARGES_PER_PAGE = 50
BATCH_RUNS_PER_PAGE = 20


# ---- sign-in ---------------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    error = None
    if request.method == "POST":
        email = request.form.get("email", "")
        ip = client_ip()
        counters = admin_sign_in_counters(email, ip)
        # The attempt is counted before the password is checked: parallel guesses all count.
        with session_scope() as db:
            verdict = login_throttle.take(db, counters)
        if not verdict.allowed:
            log.warning("admin sign-in refused for %s by %s", ip, verdict.refused_by)
            return too_many_attempts(verdict, admin_refusal_message(verdict), "admin/login.html")
        with session_scope() as db:
            admin = authenticate(db, email, request.form.get("password", ""))
            if admin is not None:
                audit.record(db, f"admin:{admin.email}", "admin.signed_in", ip=ip)
                admin_id, version = admin.id, admin.session_version
                login_throttle.give_back(db, verdict)  # a right password is not a failure
                login_throttle.reset(db, counters[0])
            else:
                tried = email.strip().lower()[:254]
                audit.record(db, "anonymous", "admin.sign_in_failed", email=tried, ip=ip)
        if admin is not None:
            begin_session(ADMIN_KEY, admin_id, version)  # nothing carried over from before
            target = request.args.get("next", "")
            return redirect(target if target.startswith("/admin/") else url_for("admin.home"))
        error = "That email and password do not match an admin."
    return render_template("admin/login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    admin_id = session.get(ADMIN_KEY)
    if isinstance(admin_id, int):
        with session_scope() as db:
            admin = db.get(AdminUser, admin_id)
            if admin is not None and admin.session_version == session.get(VERSION_KEY):
                # Every session of this admin ends, a copied cookie's too.
                admin.session_version += 1
                audit.record(db, f"admin:{admin.email}", "admin.signed_out")
    session.clear()
    return redirect(url_for("admin.login"))


@bp.route("/password", methods=["GET", "POST"])
@login_required_admin
def password() -> ResponseReturnValue:
    """Change one's own password; every other session of this admin ends, this one goes on."""
    error = None
    if request.method == "POST":
        form = request.form
        with session_scope() as db:
            admin = db.get_one(AdminUser, g.admin_id)
            try:
                change_password(
                    db,
                    admin,
                    form.get("current_password", ""),
                    form.get("new_password", ""),
                    form.get("confirm_password", ""),
                )
                version = admin.session_version
            except AdminError as exc:
                db.rollback()
                error = str(exc)
        if error is None:
            begin_session(ADMIN_KEY, g.admin_id, version)
            flash("Password changed. Every other session of yours is signed out.", "success")
            return redirect(url_for("admin.invoices")), 303
    return render_template("admin/password.html", error=error), 422 if error else 200


# ---- invoices ----------------------------------------------------------------------------------------


@bp.get("/invoices")
@login_required_admin
def invoices() -> ResponseReturnValue:
    status = request.args.get("status") or None
    due = request.args.get("due") or None
    auto = request.args.get("auto_charge")
    auto_charge = {"yes": True, "no": False}.get(auto or "")
    search = (request.args.get("q") or "").strip()[:100]
    try:
        page_number = min(max(1, int(request.args.get("page", "1"))), MAX_PAGE)
    except ValueError:
        page_number = 1
    with session_scope() as db:
        page = list_invoices(
            db,
            status=status if status in INVOICE_STATUSES else None,
            due=due if due in DUE_FILTERS else None,
            auto_charge=auto_charge,
            search=search,
            page=page_number,
        )
        return render_template(
            "admin/invoices.html",
            page=page,
            status=status,
            due=due,
            auto=auto or "",
            q=search,
            statuses=INVOICE_STATUSES,
            dues=DUE_FILTERS,
        )


def _invoice_or_404(db: Any, invoice_id: int, *, lock: bool = False) -> Any:
    invoice = load_invoice_for_charge(db, invoice_id, lock=lock)
    if invoice is None:
        abort(404)
    return invoice


@bp.get("/invoices/<int:invoice_id>")
@login_required_admin
def invoice(invoice_id: int) -> ResponseReturnValue:
    with session_scope() as db:
        inv = _invoice_or_404(db, invoice_id)
        settings = get_settings(db)
        blockers = charge_blockers(inv, settings)
        bal = ledger.balance(inv)
        timeline = db.scalars(
            select(AuditEvent).where(AuditEvent.invoice_id == inv.id).order_by(AuditEvent.id)
        ).all()
        pi_ids = [a.payment_intent_id for a in inv.charge_attempts if a.payment_intent_id]
        events = (
            db.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.payment_intent_id.in_(pi_ids))
                .order_by(WebhookEvent.id)
            ).all()
            if pi_ids
            else []
        )
        current = in_flight_attempt(inv) or (inv.charge_attempts[-1] if inv.charge_attempts else None)
        return render_template(
            "admin/invoice.html",
            invoice=inv,
            balance=bal,
            blockers=blockers,
            dunning=db.get(DunningState, inv.id),
            timeline=timeline,
            events=events,
            current=current,
            methods=[m for m in LEDGER_METHODS if m != "card"],
            invoice_methods=INVOICE_PAYMENT_METHODS,
            due_default=to_major_string(bal.amount_due, inv.currency),
            today=date.today().isoformat(),
        )


@bp.post("/invoices/<int:invoice_id>/charge")
@login_required_admin
def charge(invoice_id: int) -> ResponseReturnValue:
    """Charge buyer: the charge is queued at once; a worker does the charging."""
    wants_json = request.accept_mimetypes.best == "application/json"
    raw_amount = (request.form.get("amount") or "").strip()
    try:
        with unit_of_work() as uow:
            inv = _invoice_or_404(uow.session, invoice_id, lock=True)
            amount = parse_amount(raw_amount, inv.currency) if raw_amount else None
            attempt = charge_requests.request_charge(
                uow, inv, source="admin", requested_by=g.actor, amount=amount
            )
            answer = charge_json(attempt)
    except (MoneyError, ChargeRequestError) as exc:
        return _refused(invoice_id, wants_json, 422, str(exc))
    except NotChargeable as exc:
        return _refused(invoice_id, wants_json, 409, str(exc), blockers=[b.as_dict() for b in exc.blockers])
    if wants_json:
        return jsonify(answer), 202
    flash(f"Charge of {answer['amount_display']} queued.", "success")
    return redirect(url_for("admin.invoice", invoice_id=invoice_id))


def _refused(
    invoice_id: int, wants_json: bool, status: int, message: str, **extra: Any
) -> ResponseReturnValue:
    if wants_json:
        return jsonify(
            {"error": "not_chargeable" if status == 409 else "invalid", "message": message, **extra}
        ), status
    flash(message, "error")
    return redirect(url_for("admin.invoice", invoice_id=invoice_id)), 303


@bp.get("/charges/<charge_id>.json")
@login_required_admin
def charge_status(charge_id: str) -> ResponseReturnValue:
    with session_scope() as db:
        attempt = db.get(ChargeAttempt, charge_id)
        if attempt is None:
            abort(404)
        inv = _invoice_or_404(db, attempt.invoice_id)
        bal = ledger.balance(inv)
        return jsonify(
            {
                "charge": charge_json(attempt),
                "invoice": {
                    "status": bal.status.value,
                    "status_label": bal.status.label,
                    "amount_paid": format_money(bal.amount_paid, inv.currency),
                    "amount_due": format_money(bal.amount_due, inv.currency),
                },
            }
        )


@bp.post("/invoices/<int:invoice_id>/payments")
@login_required_admin
def record_payment(invoice_id: int) -> ResponseReturnValue:
    form = request.form
    try:
        with session_scope() as db:
            inv = _invoice_or_404(db, invoice_id, lock=True)
            amount = parse_amount(form.get("amount", ""), inv.currency)
            received = form.get("received_at") or date.today().isoformat()
            try:
                received_at = datetime.combine(date.fromisoformat(received), time(12), tzinfo=UTC)
            except ValueError as exc:
                raise LedgerError("The date received must look like 2026-12-31.") from exc
            payments.record_payment(
                db,
                inv,
                amount=amount,
                method=form.get("method", ""),
                received_at=received_at,
                reference=form.get("reference", "")[:200],
                recorded_by=g.actor,
            )
    except MoneyError as exc:
        # Not an amount at all: the form was filled in wrong, answered on the invoice page itself.
        flash(f"Payment not recorded: {exc}", "error")
        page = make_response(invoice(invoice_id))
        page.status_code = 400
        return page
    except LedgerError as exc:
        flash(f"Payment not recorded: {exc}", "error")
        return redirect(url_for("admin.invoice", invoice_id=invoice_id) + "#payments"), 303
    flash("Payment recorded.", "success")
    return redirect(url_for("admin.invoice", invoice_id=invoice_id) + "#payments"), 303


@bp.post("/charges/<charge_id>/cancel")
@login_required_admin
def cancel(charge_id: str) -> ResponseReturnValue:
    with session_scope() as db:
        attempt = db.get(ChargeAttempt, charge_id)
        if attempt is None:
            abort(404)
        invoice_id = attempt.invoice_id
    try:
        status = cancel_charge(sessions(), gateway(), charge_id, actor=g.actor)
        flash(
            "Charge canceled." if status == "canceled" else f"The charge is {status.replace('_', ' ')}.",
            "success",
        )
    except (ChargeNotCancelable, GatewayError) as exc:
        flash(str(exc), "error")
    back = request.form.get("back", "")
    return redirect(
        back if back.startswith("/admin/") else url_for("admin.invoice", invoice_id=invoice_id)
    ), 303


@bp.post("/charges/<charge_id>/check")
@login_required_admin
def check_with_stripe(charge_id: str) -> ResponseReturnValue:
    """Check with Stripe now, for a charge whose outcome is unknown."""
    with session_scope() as db:
        attempt = db.get(ChargeAttempt, charge_id)
        if attempt is None:
            abort(404)
        audit.record(
            db, g.actor, "charge.check_requested", invoice_id=attempt.invoice_id, charge_attempt_id=attempt.id
        )
    try:
        status = resolve_attempt(sessions(), gateway(), charge_id, now=datetime.now(UTC))
        flash(f"Stripe says: {status.replace('_', ' ')}.", "success")
    except GatewayError as exc:
        flash(f"Stripe did not answer yet: {exc}", "error")
    return redirect(url_for("admin.charges", status=request.args.get("status") or None)), 303


@bp.get("/charges")
@login_required_admin
def charges() -> ResponseReturnValue:
    status = request.args.get("status")
    with session_scope() as db:
        query = select(ChargeAttempt).order_by(ChargeAttempt.updated_at, ChargeAttempt.id)
        if status in {s.value for s in AttemptStatus}:
            query = query.where(ChargeAttempt.status == status)
        else:
            status = None
            query = query.where(ChargeAttempt.status.in_(OPERATOR_STATUSES))
        page = numbered_page(db, query, page=page_number(request.args.get("page")), per_page=CHARGES_PER_PAGE)
        counts = {s: 0 for s in OPERATOR_STATUSES}
        in_sql = (
            select(ChargeAttempt.status, func.count())
            .where(ChargeAttempt.status.in_(OPERATOR_STATUSES))
            .group_by(ChargeAttempt.status)
        )
        counts.update({status: int(n) for status, n in db.execute(in_sql)})
        flagged = db.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.flagged_reason.is_not(None))
            .order_by(WebhookEvent.id.desc())
            .limit(FLAGGED_EVENTS_SHOWN)
        ).all()
        flagged_total = db.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.flagged_reason.is_not(None))
        )
        return render_template(
            "admin/charges.html",
            attempts=page.rows,
            page=page,
            status=status,
            counts=counts,
            in_flight={s.value for s in IN_FLIGHT},
            flagged=flagged,
            flagged_total=flagged_total,
            open_disputes=[dispute_json(d) for d in open_disputes(db)],
        )


# ---- batch runs ------------------------------------------------------------------------------------------

def _batch_json(db: Any, run: BatchRun) -> dict[str, Any]:
    counts = outcome_counts(db, run.id)
    settled = sum(counts.get(s.value, 0) for s in SETTLED)
    return {
        "id": run.id,
        "slot": run.slot,
        "trigger": run.trigger,
        "due_on": run.due_on.isoformat(),
        "started_at": run.started_at.isoformat(),
        "selection_finished": run.selection_finished_at is not None,
        "selected": run.selected,
        "queued": run.queued,
        "skipped": run.skipped,
        "skipped_reasons": run.skipped_reasons,
        "outcomes": counts,
        "settled": settled,
    }


@bp.get("/batches")
@login_required_admin
def batches() -> ResponseReturnValue:
    with session_scope() as db:
        page = numbered_page(
            db,
            select(BatchRun).order_by(BatchRun.id.desc()),
            page=page_number(request.args.get("page")),
            per_page=BATCH_RUNS_PER_PAGE,
        )
        return render_template("admin/batches.html", runs=[_batch_json(db, r) for r in page.rows], page=page)


@bp.get("/batches/<int:run_id>.json")
@login_required_admin
def batch_status(run_id: int) -> ResponseReturnValue:
    with session_scope() as db:
        run = db.get(BatchRun, run_id)
        if run is None:
            abort(404)
        return jsonify(_batch_json(db, run))


# ---- daily reconciliation against Stripe ----------------------------------------------------------------


@bp.get("/reconciliation")
@login_required_admin
def reconciliation() -> ResponseReturnValue:
    with session_scope() as db:
        page = numbered_page(db, runs_query(), page=page_number(request.args.get("page")))
        return render_template(
            "admin/reconciliation.html", runs=page.rows, page=page, yesterday=yesterday_utc().isoformat()
        )


@bp.get("/reconciliation/<int:run_id>")
@login_required_admin
def reconciliation_run(run_id: int) -> ResponseReturnValue:
    with session_scope() as db:
        run = db.get(ReconciliationRun, run_id)
        if run is None:
            abort(404)
        return render_template("admin/reconciliation_run.html", run=run, findings=run_findings(db, run_id))


@bp.post("/reconciliation/run")
@login_required_admin
def reconcile_now() -> ResponseReturnValue:
    """Queue a reconciliation of one UTC day (yesterday unless given) for the worker: a day's listing
    at Stripe can take longer than a web request should."""
    try:
        day = parse_day(request.form.get("day") or yesterday_utc().isoformat())
        with unit_of_work() as uow:
            request_reconciliation(uow, day, g.actor)
    except ReconciliationError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.reconciliation")), 303
    flash(f"Reconciliation of {day} queued: its results appear here within a minute or two.", "success")
    return redirect(url_for("admin.reconciliation")), 303


# ---- API documentation -----------------------------------------------------------------------------------


@bp.get("/api-docs")
@login_required_admin
def api_docs() -> ResponseReturnValue:
    """/api/openapi.json for people: the vendored Swagger UI draws it (started by web/static/api-docs.js)."""
    return render_template("admin/api_docs.html")
