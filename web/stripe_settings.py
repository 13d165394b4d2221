"""Settings → Stripe: Connect (verify the key's account, register the webhook endpoint), Connect with
Stripe (Connect OAuth), Disconnect, and the online card payments switch. Its routes join the admin
blueprint (web/admin.py), so they share its sign-in and CSRF rules; the work is
shared.services.stripe_connection's."""

from __future__ import annotations

import hmac
import secrets

from flask import current_app, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from shared.config import Config
from shared.domain.eligibility import connection_blocker
from shared.services import stripe_connection
from shared.services.settings import SettingsError, get_settings, is_verified, update_settings
from shared.services.stripe_connection import ConnectionRefused, OAuthSettings
from web.admin import bp
from web.pages import login_required_admin
from web.services import gateway, runtime, session_scope, sessions

# The OAuth `state` this admin session was sent to Stripe with; the callback must bring it back.
OAUTH_STATE_KEY = "stripe_oauth_state"


def _config() -> Config:
    config: Config = current_app.config["OFFSESSION"]
    return config


def oauth_settings(config: Config) -> OAuthSettings | None:
    return OAuthSettings(config.stripe_connect_client_id) if config.stripe_connect_client_id else None


@bp.route("/settings", methods=["GET", "POST"])
@login_required_admin
def settings() -> ResponseReturnValue:
    config = _config()
    error = None
    with session_scope() as db:
        if request.method == "POST":
            try:
                update_settings(
                    db,
                    g.actor,
                    online_card_payments_enabled=request.form.get("online_card_payments_enabled") == "on",
                )
                flash("Settings saved.", "success")
                return redirect(url_for("admin.settings")), 303
            except SettingsError as exc:
                db.rollback()
                error = str(exc)
        current = get_settings(db)
        return render_template(
            "admin/settings.html",
            settings=current,
            verified=is_verified(current),
            blocker=connection_blocker(current),
            mode=config.stripe_mode,
            api_base=config.stripe_api_base,
            oauth=oauth_settings(config) is not None,
            webhook_url=stripe_connection.webhook_url(config.public_base_url),
            error=error,
        ), 422 if error else 200


@bp.post("/settings/stripe/connect")
@login_required_admin
def connect_stripe() -> ResponseReturnValue:
    """Connect with the server's STRIPE_API_KEY (or check again the account connected through OAuth): ask
    Stripe which account it is, register the endpoint."""
    try:
        stripe_connection.connect_again(
            sessions(),
            gateway(),
            runtime().secret_box,
            actor=g.actor,
            public_base_url=_config().public_base_url,
        )
    except ConnectionRefused as exc:
        flash(exc.message, "error")
        return redirect(url_for("admin.settings")), 303
    flash("Connected to Stripe: the account is verified and the webhook endpoint registered.", "success")
    return redirect(url_for("admin.settings")), 303


@bp.post("/settings/stripe/disconnect")
@login_required_admin
def disconnect_stripe() -> ResponseReturnValue:
    stripe_connection.disconnect(sessions(), gateway(), actor=g.actor, oauth=oauth_settings(_config()))
    flash("Stripe disconnected: the webhook endpoint is deleted and card charges are blocked.", "success")
    return redirect(url_for("admin.settings")), 303


@bp.get("/settings/stripe/oauth")
@login_required_admin
def start_oauth() -> ResponseReturnValue:
    """Send the admin to Stripe's authorize page with a `state` only this session knows."""
    oauth = oauth_settings(_config())
    if oauth is None:
        flash("Connect with Stripe needs STRIPE_CONNECT_CLIENT_ID (a Connect platform's ca_... id).", "error")
        return redirect(url_for("admin.settings")), 303
    state = secrets.token_urlsafe(32)
    session[OAUTH_STATE_KEY] = state
    target = stripe_connection.start_oauth(gateway(), oauth, state=state, redirect_uri=_callback_url())
    return redirect(target), 303


def _callback_url() -> str:
    return _config().public_base_url + url_for("admin.oauth_callback")


@bp.get("/settings/stripe/oauth/callback")
@login_required_admin
def oauth_callback() -> ResponseReturnValue:
    expected = session.pop(OAUTH_STATE_KEY, None)
    state = request.args.get("state", "")
    if not expected or not hmac.compare_digest(str(expected), state):
        # Not the answer to this session's request (a forged or replayed link): nothing is exchanged.
        flash(
            "Refused: this answer from Stripe does not belong to your Connect request (state mismatch).",
            "error",
        )
        return redirect(url_for("admin.settings")), 303
    if request.args.get("error"):
        description = request.args.get("error_description") or request.args["error"]
        flash(f"Stripe did not connect the account: {description}.", "error")
        return redirect(url_for("admin.settings")), 303
    code = request.args.get("code", "")
    if not code:
        flash("Stripe's answer carried no authorization code.", "error")
        return redirect(url_for("admin.settings")), 303
    try:
        account = stripe_connection.finish_oauth(
            sessions(),
            gateway(),
            runtime().secret_box,
            code=code,
            actor=g.actor,
            public_base_url=_config().public_base_url,
        )
    except ConnectionRefused as exc:
        flash(exc.message, "error")
        return redirect(url_for("admin.settings")), 303
    flash(f"Connected to the Stripe account {account}.", "success")
    return redirect(url_for("admin.settings")), 303
