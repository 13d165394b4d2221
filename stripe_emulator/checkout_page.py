"""The hosted Checkout page of a setup-mode session, at the session's ``url`` (/c/pay/{cs_...}).

A person types a card (number, expiry, CVC, name) or picks one of Stripe's test cards. The form's checks
are those Stripe's card form makes before anything is sent (an incomplete or invalid number, a past
expiry, a short CVC). Then the session's SetupIntent is confirmed with that card: a decline is shown on
the page as Stripe shows it and the session stays open for another card; a card that asks for
authentication goes to the bank's page, which comes back to /c/pay/{cs_...}/return; success attaches the
card to the customer, completes the session (at the bank's page already, when there is one: the browser
need not come back for that) and sends the browser to ``success_url`` (its
``{CHECKOUT_SESSION_ID}`` replaced). "Back" leads to ``cancel_url``.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from . import cards
from .html import escape, form_fields, page, redirect
from .resources.checkout_sessions import complete_session, current
from .resources.payment_methods import materialize
from .resources.setup_intents import confirm_setup
from .wire import ApiError, Response

if TYPE_CHECKING:
    from .api import Emulator
    from .resources.base import Ctx

_PATH_RE = re.compile(r"^/c/pay/(cs_[A-Za-z0-9_]+?)(/return)?$")
# Stripe's words when the bank's authentication fails (payment_intent_authentication_failure).
AUTH_FAILED = ("We are unable to authenticate your payment method. Please choose a different payment "
               "method and try again.")
TEST_MODE_LIVE_CARD = ("Your card was declined. Your request was in test mode, but used a non test (live) "
                       "card. For a list of valid test cards, visit: https://stripe.com/docs/testing.")


class CardFormError(ValueError):
    """What Stripe's card form says before sending anything."""


def handle(emu: Emulator, method: str, path: str, query: str, body: bytes, base_url: str) -> Response:
    hit = _PATH_RE.match(path)
    if hit is None:
        return _not_found()
    session_id, returning = hit.group(1), bool(hit.group(2))
    with emu.store.lock:
        account = emu.store.find_owner(session_id)
        if account is None:
            return _not_found()
        ctx = emu.context(account, base_url)
        session = current(ctx, ctx.data.checkout_sessions[session_id])
        emu.mark_dirty()
        if session["status"] != "open":
            return _closed(session, emu.registry.accounts[account].business_name)
        if returning and method == "GET":
            return _returned(ctx, emu, session)
        if method == "GET":
            return _form(ctx, emu, session)
        if method == "POST":
            return _submit(ctx, emu, session, form_fields(body))
    return _not_found()


def _not_found() -> Response:
    return page("Not found", "<h1>Something went wrong</h1><p>The page you were looking for could not be "
                             "found.</p>", 404)


def success_location(session: dict[str, Any]) -> str | None:
    url = session["success_url"]
    return url.replace("{CHECKOUT_SESSION_ID}", session["id"]) if url else None


def _closed(session: dict[str, Any], business: str) -> Response:
    if session["status"] == "complete":
        location = success_location(session)
        if location:
            return redirect(location, 303)
        return page(business, f"<h1>{escape(business)}</h1><p>Your card is saved.</p>")
    return page(business, f"<h1>{escape(business)}</h1><p>This Checkout Session is no longer active: it "
                          "has expired.</p>", 410)


def _form(ctx: Ctx, emu: Emulator, session: dict[str, Any], error: str | None = None,
          values: dict[str, str] | None = None) -> Response:
    values = values or {}
    business = emu.registry.accounts[ctx.account].business_name
    customer = ctx.data.customers.get(session["customer"] or "")
    email = session["customer_email"] or (customer or {}).get("email")
    options = "".join(
        f'<option value="{number}"{" selected" if values.get("test_card") == number else ""}>'
        f"{escape(label)} ({number[-4:]})</option>"
        for number, label in cards.CHECKOUT_CHOICES
    )
    back = (f'<p><a href="{escape(session["cancel_url"])}" id="back">Back to {escape(business)}</a></p>'
            if session["cancel_url"] else "")
    alert = f'<p class="error" role="alert" id="card-errors">{escape(error)}</p>' if error else ""
    body = f"""{back}<h1>{escape(business)}</h1>
<p>Save your card details for future payments{f" ({escape(email)})" if email else ""}.</p>
<p class="muted">Test mode: this is the Stripe emulator. Use Stripe's test card numbers.</p>
{alert}
<form method="post" action="/c/pay/{escape(session["id"])}" novalidate>
<label for="cardnumber">Card number</label>
<input id="cardnumber" name="cardnumber" inputmode="numeric" autocomplete="cc-number"
 placeholder="1234 1234 1234 1234" value="{escape(values.get("cardnumber", ""))}">
<div class="row"><div><label for="exp-date">Expiration date</label>
<input id="exp-date" name="exp-date" autocomplete="cc-exp" placeholder="MM / YY"
 value="{escape(values.get("exp-date", ""))}"></div>
<div><label for="cvc">Security code</label>
<input id="cvc" name="cvc" inputmode="numeric" autocomplete="cc-csc" placeholder="CVC"></div></div>
<label for="billing-name">Cardholder name</label>
<input id="billing-name" name="billing-name" autocomplete="cc-name"
 value="{escape(values.get("billing-name", ""))}">
<label for="test-card">Or pick a test card</label>
<select id="test-card" name="test_card"><option value="">(type a card above)</option>{options}</select>
<button type="submit" id="submit">Save card</button>
</form>
<p class="muted">By saving your card, you allow {escape(business)} to charge it for future payments in
accordance with their terms.</p>"""
    return page(business, body)


def parse_card(fields: dict[str, str], now: float) -> tuple[str, tuple[int, int] | None]:
    """(the card number, its expiry or None for a picked test card); raises CardFormError."""
    number = re.sub(r"[\s-]", "", fields.get("cardnumber", ""))
    if not number and fields.get("test_card"):
        return fields["test_card"], None
    if not number:
        raise CardFormError("Your card number is incomplete.")
    if not number.isdigit() or not 12 <= len(number) <= 19:
        raise CardFormError("Your card number is incomplete." if number.isdigit() and len(number) < 12
                            else "Your card number is invalid.")
    if not cards.luhn_ok(number):
        raise CardFormError("Your card number is invalid.")
    expiry = re.sub(r"\s", "", fields.get("exp-date", ""))
    match = re.fullmatch(r"(\d{1,2})/?(\d{2}|\d{4})", expiry)
    if not match:
        raise CardFormError("Your card's expiration date is incomplete.")
    month, year = int(match.group(1)), int(match.group(2))
    year += 2000 if year < 100 else 0
    if not 1 <= month <= 12:
        raise CardFormError("Your card's expiration date is invalid.")
    today = time.gmtime(now)
    if (year, month) < (today.tm_year, today.tm_mon):
        raise CardFormError("Your card's expiration year is in the past." if year < today.tm_year
                            else "Your card's expiration date is in the past.")
    spec = cards.BY_NUMBER.get(number)
    cvc = fields.get("cvc", "").strip()
    if not cvc.isdigit() or len(cvc) != (4 if spec is not None and spec.brand == "amex" else 3):
        raise CardFormError("Your card's security code is incomplete.")
    return number, (month, year)


def _submit(ctx: Ctx, emu: Emulator, session: dict[str, Any], fields: dict[str, str]) -> Response:
    try:
        number, expiry = parse_card(fields, ctx.now)
    except CardFormError as err:
        return _form(ctx, emu, session, str(err), fields)
    spec = cards.BY_NUMBER.get(number)
    if spec is None:
        return _form(ctx, emu, session, TEST_MODE_LIVE_CARD, fields)
    si = ctx.data.setup_intents[session["setup_intent"]]
    name = fields.get("billing-name", "").strip() or None
    pm = materialize(ctx, spec.token, expiry, name)
    return_url = f"{ctx.base_url}/c/pay/{session['id']}/return"
    try:
        confirm_setup(ctx, si, pm, return_url, use_stripe_sdk=False)
    except ApiError as err:  # the card was declined at setup: the session stays open
        return _form(ctx, emu, session, str(err.error.get("message")), fields)
    if si["status"] == "requires_action":
        return redirect(si["next_action"]["redirect_to_url"]["url"], 303)
    return _finish(ctx, emu, session, pm, name)


def _returned(ctx: Ctx, emu: Emulator, session: dict[str, Any]) -> Response:
    """Back from the bank's page with the session still open: the authentication failed (a success
    completed the session already, and the page then sends the browser to success_url)."""
    return _form(ctx, emu, session, AUTH_FAILED)


def _finish(ctx: Ctx, emu: Emulator, session: dict[str, Any], pm: dict[str, Any],
            name: str | None) -> Response:
    complete_session(ctx, session, pm, name)
    location = success_location(session)
    if location:
        return redirect(location, 303)
    business = emu.registry.accounts[ctx.account].business_name
    return page(business, f"<h1>{escape(business)}</h1><p>Your card is saved.</p>")
