"""Admin: the client list (searchable, a page at a time) and a client's page with their saved cards,
invoices, recent charges and "Send sign-in link"."""

from __future__ import annotations

from flask import abort, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from shared.domain.models import Client
from shared.services import audit
from shared.services.client_links import request_login_link
from shared.services.invoices import list_invoices
from shared.services.listings import clients_page, page_number, recent_charges_of_client
from shared.services.settings import get_settings
from web.admin import bp
from web.pages import login_required_admin
from web.services import session_scope, unit_of_work

CLIENT_INVOICES_PER_PAGE = 25


@bp.get("/clients")
@login_required_admin
def clients() -> ResponseReturnValue:
    search = (request.args.get("q") or "").strip()[:100]
    with session_scope() as db:
        return render_template(
            "admin/clients.html",
            page=clients_page(db, search=search, page=page_number(request.args.get("page"))),
            q=search,
        )


@bp.get("/clients/<int:client_id>")
@login_required_admin
def client(client_id: int) -> ResponseReturnValue:
    with session_scope() as db:
        found = db.scalars(
            select(Client).where(Client.id == client_id).options(selectinload(Client.cards))
        ).one_or_none()
        if found is None:
            abort(404)
        return render_template(
            "admin/client.html",
            client=found,
            cards=sorted(found.cards, key=lambda c: (not c.is_default, -c.id)),
            invoices=list_invoices(
                db,
                client_id=found.id,
                page=page_number(request.args.get("page")),
                per_page=CLIENT_INVOICES_PER_PAGE,
            ),
            charges=recent_charges_of_client(db, found.id),
            # Where charges go now: a card saved under another account or mode cannot be charged.
            place=get_settings(db).verified_place,
        )


@bp.post("/clients/<int:client_id>/sign-in-link")
@login_required_admin
def send_sign_in_link(client_id: int) -> ResponseReturnValue:
    """Email the client a one-time sign-in link to the Client Zone, through the outbox like the link a
    client asks for on the sign-in page (shared.services.client_links)."""
    with unit_of_work() as uow:
        found = uow.session.get(Client, client_id)
        if found is None:
            abort(404)
        email = found.email
        audit.record(uow.session, g.actor, "client.sign_in_link_sent", client_id=client_id, email=email)
        request_login_link(uow, email)
    flash(f"Sign-in link sent to {email}.", "success")
    return redirect(url_for("admin.client", client_id=client_id)), 303
