"""The Client Zone: sign-in by one-time link, own invoices, saved cards, pay now,
complete authentication. A client sees their own things only: anything else answers 404."""

from __future__ import annotations

import logging
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
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
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from shared.domain.eligibility import charge_blockers, in_flight_attempt
from shared.domain.ledger import balance
from shared.domain.link_tokens import AUTHENTICATE, SIGN_IN, UPDATE_CARD, LoginLinkError
from shared.domain.models import Card, ChargeAttempt, Client
from shared.domain.payments import CardSetupDeclined, CardSetupRequiresAction, GatewayError
from shared.domain.states import AttemptStatus
from shared.services import charge_requests, clients, login_throttle
from shared.services.charge_actions import (
    NotAwaitingAuthentication,
    settle_from_stripe,
    start_on_session_authentication,
)
from shared.services.charge_requests import NotChargeable, load_invoice_for_charge
from shared.services.client_links import consume_link, peek_link, request_login_link
from shared.services.invoices import list_invoices
from shared.services.login_throttle import login_link_counters
from shared.services.settings import get_settings
from web.login_limits import client_ip
from web.pages import (
    CLIENT_KEY,
    VERSION_KEY,
    begin_session,
    login_required_client,
    protect_with_csrf,
    signed_in_fully_as_client,
)
from web.serializers import client_charge_json
from web.services import gateway, session_scope, sessions, unit_of_work

log = logging.getLogger(__name__)
bp = Blueprint("client", __name__, url_prefix="/client")
protect_with_csrf(bp)

# The emulator's test cards a client may pick from (with real Stripe, Stripe Elements collects the card).
TEST_CARDS = (
    ("pm_card_visa", "Visa 4242 — succeeds"),
    ("pm_card_mastercard", "Mastercard 4444 — succeeds"),
    ("pm_card_chargeCustomerFail", "Visa 0341 — saves, then every charge is declined"),
    ("pm_card_authenticationRequiredSetupForOffSession", "Visa 0446 — authenticates on-session only"),
    ("pm_card_chargeDeclined", "Visa 0002 — declined"),
)


# ---- sign-in ---------------------------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    sent = False
    if request.method == "POST":
        email, ip = request.form.get("email", ""), client_ip()
        with unit_of_work() as uow:
            # Every request counts, known email or not; past the limit the page stays the same (it
            # must not tell whether the email is a client's) but no email goes out. Known or not, the
            # request queues the same message: a worker looks the address up and sends the link.
            verdict = login_throttle.take(uow.session, login_link_counters(email, ip))
            if verdict.allowed:
                request_login_link(uow, email)
        if not verdict.allowed:
            log.warning("sign-in link request from %s not sent: %s", ip, verdict.refused_by)
        sent = True
    return render_template("client/login.html", sent=sent)


# What each emailed link's page says, and where using it leads.
LINK_ACTIONS = {
    SIGN_IN: ("Sign in to your Client Zone", "Sign in"),
    UPDATE_CARD: ("Update your card", "Continue to my cards"),
    AUTHENTICATE: ("Confirm your payment", "Continue to the payment"),
}


def _masked(address: str) -> str:
    """Enough of the address for its owner to recognise it: al***@example.com."""
    local, _, domain = address.partition("@")
    return f"{local[:2]}***@{domain}"


def _link_page(token: str | None, purpose: str) -> ResponseReturnValue:
    """An emailed link's landing (GET): a page with a button, and nothing used up. Mail scanners follow
    links; a link that signed in on GET would be spent, or would let a page sign a visitor into the
    sender's account (login CSRF). The button's POST, with this browser's CSRF token, uses it."""
    grant = None
    error = None
    try:
        with session_scope() as db:
            grant = peek_link(db, token or "")
            if grant.purpose != purpose:
                raise LoginLinkError("This link is not valid here. Ask for a new one.")
            client = db.get(Client, grant.client_id)
            masked = _masked(client.email) if client is not None else ""
    except LoginLinkError as exc:
        error = str(exc)
    if error is not None:
        answer = make_response(render_template("client/login.html", sent=False, error=error), 400)
    else:
        title, button = LINK_ACTIONS[purpose]
        answer = make_response(
            render_template("client/link.html", token=token, title=title, button=button, email=masked)
        )
    # The token is in this page's address: never in a Referer to anyone, ourselves included.
    answer.headers["Referrer-Policy"] = "no-referrer"
    return answer


@bp.get("/login/<token>")
def open_link(token: str) -> ResponseReturnValue:
    """The sign-in email's link."""
    return _link_page(token, SIGN_IN)


@bp.post("/link")
def use_link() -> ResponseReturnValue:
    """The button of an emailed link's page: use the link (once) and open what it is for."""
    try:
        with session_scope() as db:
            grant = consume_link(db, request.form.get("token", ""))
            client = db.get(Client, grant.client_id)
            if client is None:
                raise LoginLinkError("This link is not valid. Ask for a new one.")
            version = client.session_version
            attempt = db.get(ChargeAttempt, grant.subject_id) if grant.purpose == AUTHENTICATE else None
            invoice_id = attempt.invoice_id if attempt is not None else None
            if grant.purpose == AUTHENTICATE and (attempt is None or attempt.invoice.client_id != client.id):
                raise LoginLinkError("This payment is no longer waiting for you.")
    except LoginLinkError as exc:
        return render_template("client/login.html", sent=False, error=str(exc)), 400
    signed_in_fully = signed_in_fully_as_client(grant.client_id, version)
    if grant.purpose == SIGN_IN:
        begin_session(CLIENT_KEY, grant.client_id, version)
        return redirect(url_for("client.invoices")), 303
    if grant.purpose == UPDATE_CARD:
        if not signed_in_fully:
            begin_session(CLIENT_KEY, grant.client_id, version, scope={"purpose": UPDATE_CARD})
        return redirect(url_for("client.cards")), 303
    if not signed_in_fully:
        scope = {"purpose": AUTHENTICATE, "invoice_id": invoice_id, "charge_id": grant.subject_id}
        begin_session(CLIENT_KEY, grant.client_id, version, scope=scope)
    return redirect(url_for("client.invoice", invoice_id=invoice_id)), 303


@bp.get("/authenticate")
def authenticate_from_email() -> ResponseReturnValue:
    """The emailed link for a charge that needs the client's bank."""
    if not request.args.get("token"):
        return redirect(url_for("client.login"))
    return _link_page(request.args.get("token"), AUTHENTICATE)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    client_id = session.get(CLIENT_KEY)
    if isinstance(client_id, int):
        with session_scope() as db:
            client = db.get(Client, client_id)
            if client is not None and client.session_version == session.get(VERSION_KEY):
                # Every session of this client ends, a copied cookie's too.
                client.session_version += 1
    session.clear()
    return redirect(url_for("client.login"))


# ---- invoices ------------------------------------------------------------------------------------------


def _own_invoice(db: Any, invoice_id: int, *, lock: bool = False) -> Any:
    invoice = load_invoice_for_charge(db, invoice_id, lock=lock)
    if invoice is None or invoice.client_id != g.client_id:
        abort(404)  # another client's invoice does not exist, as far as this client can tell
    return invoice


def _own_attempt(db: Any, charge_id: str) -> ChargeAttempt:
    attempt = db.get(ChargeAttempt, charge_id)
    if attempt is None or attempt.invoice.client_id != g.client_id:
        abort(404)
    return attempt


@bp.get("/")
@bp.get("/invoices")
@login_required_client
def invoices() -> ResponseReturnValue:
    with session_scope() as db:
        page = list_invoices(db, client_id=g.client_id, per_page=100)
        return render_template("client/invoices.html", page=page)


@bp.get("/invoices/<int:invoice_id>")
@login_required_client
def invoice(invoice_id: int) -> ResponseReturnValue:
    with session_scope() as db:
        inv = _own_invoice(db, invoice_id)
        blockers = charge_blockers(inv, get_settings(db))
        current = in_flight_attempt(inv) or (inv.charge_attempts[-1] if inv.charge_attempts else None)
        return render_template(
            "client/invoice.html", invoice=inv, balance=balance(inv), blockers=blockers, current=current
        )


@bp.post("/invoices/<int:invoice_id>/pay")
@login_required_client
def pay(invoice_id: int) -> ResponseReturnValue:
    """Pay now with the saved default card; the worker charges it, the page follows the status."""
    try:
        with unit_of_work() as uow:
            inv = _own_invoice(uow.session, invoice_id, lock=True)
            charge_requests.request_charge(uow, inv, source="client", requested_by=g.actor)
    except NotChargeable as exc:
        flash(str(exc), "error")
        return redirect(url_for("client.invoice", invoice_id=invoice_id)), 303
    flash("Payment started.", "success")
    return redirect(url_for("client.invoice", invoice_id=invoice_id)), 303


@bp.get("/charges/<charge_id>.json")
@login_required_client
def charge_status(charge_id: str) -> ResponseReturnValue:
    with session_scope() as db:
        attempt = _own_attempt(db, charge_id)
        bal = balance(attempt.invoice)
        return jsonify(
            {
                "charge": client_charge_json(attempt),
                "invoice": {"status": bal.status.value, "status_label": bal.status.label},
            }
        )


@bp.post("/charges/<charge_id>/authenticate")
@login_required_client
def authenticate(charge_id: str) -> ResponseReturnValue:
    """Bring a charge that needs 3-D Secure on-session: send the browser to the bank's page (the
    emulator's, or Stripe's), which returns to us."""
    with session_scope() as db:
        invoice_id = _own_attempt(db, charge_id).invoice_id
    return_url = current_app.config["OFFSESSION"].public_base_url + url_for(
        "client.returned", charge_id=charge_id
    )
    try:
        bank_page = start_on_session_authentication(
            sessions(), gateway(), charge_id, return_url, actor=g.actor
        )
    except NotAwaitingAuthentication as exc:
        flash(str(exc), "error")
        return redirect(url_for("client.invoice", invoice_id=invoice_id)), 303
    except GatewayError as exc:
        flash(f"Your bank could not be reached: {exc}", "error")
        return redirect(url_for("client.invoice", invoice_id=invoice_id)), 303
    return redirect(bank_page or url_for("client.invoice", invoice_id=invoice_id)), 303


@bp.get("/charges/<charge_id>/return")
@login_required_client
def returned(charge_id: str) -> ResponseReturnValue:
    """Back from the bank's page: ask Stripe how it went and record it."""
    with session_scope() as db:
        invoice_id = _own_attempt(db, charge_id).invoice_id
    try:
        status = settle_from_stripe(sessions(), gateway(), charge_id, actor=g.actor)
    except GatewayError as exc:
        flash(f"We could not confirm the payment yet ({exc}); it will update shortly.", "error")
        return redirect(url_for("client.invoice", invoice_id=invoice_id)), 303
    if status == AttemptStatus.SUCCEEDED.value:
        flash("Thank you: your payment went through.", "success")
    elif status == AttemptStatus.FAILED.value:
        flash("The authentication did not succeed, so nothing was charged.", "error")
    return redirect(url_for("client.invoice", invoice_id=invoice_id)), 303


# ---- saved cards --------------------------------------------------------------------------------------


def _own_client(db: Any) -> Client:
    client = db.scalars(
        select(Client).where(Client.id == g.client_id).options(selectinload(Client.cards))
    ).one_or_none()
    if client is None:
        abort(404)
    return client


def _own_card(client: Client, card_id: int) -> Card:
    card = next((c for c in client.cards if c.id == card_id), None)
    if card is None:
        abort(404)
    return card


@bp.get("/cards")
def cards() -> ResponseReturnValue:
    if request.args.get("token"):
        return _link_page(request.args.get("token"), UPDATE_CARD)  # the "update your card" email's link
    return _cards_page()


@login_required_client
def _cards_page() -> ResponseReturnValue:
    with session_scope() as db:
        client = _own_client(db)
        return render_template("client/cards.html", client=client, test_cards=TEST_CARDS)


@bp.post("/cards")
@login_required_client
def add_card() -> ResponseReturnValue:
    token = request.form.get("payment_method", "")
    if token not in {t for t, _ in TEST_CARDS}:
        flash("Choose one of the listed cards.", "error")
        return redirect(url_for("client.cards")), 303
    try:
        card = clients.add_card(sessions(), gateway(), g.client_id, token, actor=g.actor, set_up=True)
        flash(f"{card.brand.capitalize()} ending {card.last4} saved.", "success")
    except CardSetupDeclined as exc:
        flash(f"Your bank declined this card, so it was not saved: {exc.message}", "error")
    except CardSetupRequiresAction:
        flash("Your bank wants to authenticate this card before it can be saved; try another card.", "error")
    except (GatewayError, clients.ClientError) as exc:
        flash(f"The card was not saved: {exc}", "error")
    return redirect(url_for("client.cards")), 303


@bp.post("/cards/<int:card_id>/default")
@login_required_client
def make_default(card_id: int) -> ResponseReturnValue:
    try:
        card = clients.set_default_card(sessions(), gateway(), g.client_id, card_id, actor=g.actor)
        flash(f"{card.brand.capitalize()} ending {card.last4} is now your default card.", "success")
    except clients.NotFound:
        abort(404)
    except GatewayError as exc:
        flash(f"The default card was not changed: {exc}", "error")
    return redirect(url_for("client.cards")), 303


@bp.post("/cards/<int:card_id>/delete")
@login_required_client
def delete_card(card_id: int) -> ResponseReturnValue:
    with session_scope() as db:
        card = _own_card(_own_client(db), card_id)
        label = f"{card.brand.capitalize()} ending {card.last4}"
    try:
        clients.delete_card(sessions(), gateway(), g.client_id, card_id, actor=g.actor)
        flash(f"{label} deleted.", "success")
    except clients.NotFound:
        abort(404)
    except GatewayError as exc:
        flash(f"The card was not deleted: {exc}", "error")
    return redirect(url_for("client.cards")), 303
