"""The card issuer's 3-D Secure page, where next_action URLs lead (/_emulator/3ds/{pi_... or seti_...}):
complete or fail the authentication, then back to the confirm's return_url with Stripe's parameters
(payment_intent / setup_intent, its client secret, redirect_status)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .html import escape, form_fields, page, redirect, with_query
from .resources.checkout_sessions import complete_session
from .resources.payment_intents import authenticate_pi
from .resources.setup_intents import authenticate_si, checkout_session_of
from .wire import ApiError, Response, parse_pairs

if TYPE_CHECKING:
    from .api import Emulator

_PATH_RE = re.compile(r"^/_emulator/3ds/((?:pi|seti)_[A-Za-z0-9]+)$")


def handle(emu: Emulator, method: str, path: str, query: str, body: bytes, base_url: str) -> Response:
    hit = _PATH_RE.match(path)
    if hit is None or method not in ("GET", "POST"):
        return page("Not found", "<h1>This page could not be found.</h1>", 404)
    obj_id = hit.group(1)
    fields = form_fields(body) if method == "POST" else dict(parse_pairs(query))
    outcome = fields.get("outcome")
    if outcome is None:
        return _ask(obj_id)
    kind = "payment_intents" if obj_id.startswith("pi_") else "setup_intents"
    status, result = authenticate(emu, kind, obj_id, outcome, base_url)
    if status != 200:
        return page("Authentication", f'<h1>Authentication</h1><p class="error" role="alert">'
                                      f'{escape(result["error"]["message"])}</p>', status)
    action = result.pop("_next_action", None) or {}
    step = action.get("redirect_to_url") or action.get("use_stripe_sdk") or {}
    return_url = step.get("return_url")
    if not return_url:
        return page("Authentication", "<h1>Authentication complete</h1>"
                                      "<p>You can close this window.</p>")
    name = "payment_intent" if kind == "payment_intents" else "setup_intent"
    params = urlencode({name: obj_id, f"{name}_client_secret": result["client_secret"],
                        "redirect_status": "succeeded" if result["status"] == "succeeded" else "failed"})
    return redirect(with_query(return_url, params), 303 if method == "POST" else 302)


def _ask(obj_id: str) -> Response:
    body = f"""<h1>3-D Secure test page</h1>
<p>The Stripe emulator stands in for the card issuer here. Authenticate {escape(obj_id)}?</p>
<form method="post"><input type="hidden" name="outcome" value="succeed">
<button type="submit" id="succeed">Complete authentication</button></form>
<form method="post"><input type="hidden" name="outcome" value="fail">
<button type="submit" id="fail">Fail authentication</button></form>"""
    return page("3-D Secure", body)


def authenticate(emu: Emulator, kind: str, obj_id: str, outcome: Any, base_url: str
                 ) -> tuple[int, dict[str, Any]]:
    """Complete or fail the 3-D Secure step a customer would do: (status, the intent or an error).
    The intent carries the next_action it had under "_next_action" (its return_url is needed after)."""
    if outcome not in ("succeed", "fail"):
        return 400, {"error": {"type": "invalid_request_error", "param": "outcome",
                               "message": "outcome must be 'succeed' or 'fail'"}}
    with emu.store.lock:
        account = emu.store.find_owner(obj_id)
        obj = emu.store.account(account).table(kind).get(obj_id) if account is not None else None
        if account is None or obj is None:
            return 404, {"error": {"type": "invalid_request_error", "message": f"No such {kind[:-1]}: "
                                                                             f"'{obj_id}'"}}
        ctx = emu.context(account, base_url)
        action = obj.get("next_action")
        try:
            if kind == "payment_intents":
                result = authenticate_pi(ctx, obj, outcome == "succeed")
            else:
                result = authenticate_si(ctx, obj, outcome == "succeed")
                session_id = checkout_session_of(ctx, obj)
                if session_id is not None and obj["status"] == "succeeded":
                    # Checkout completes on Stripe's side, whether or not the browser comes back.
                    pm = ctx.data.payment_methods[obj["payment_method"]]
                    complete_session(ctx, ctx.data.checkout_sessions[session_id], pm,
                                     pm["billing_details"]["name"])
        except ApiError as err:
            return err.status, {"error": err.error}
        emu.mark_dirty()
        return 200, {**result, "_next_action": action}
