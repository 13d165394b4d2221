"""The business's card-payment settings: is Stripe connected, are online card payments on."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from shared.domain.models import Settings
from shared.services import audit

ACCOUNT_ID = re.compile(r"acct_[A-Za-z0-9]{1,59}")  # the column holds 64 characters


class SettingsError(ValueError):
    """A settings change that cannot be applied; the message is fit to show to a person."""


# The one row of the settings table.
SETTINGS_ROW_ID = 1


def get_settings(session: Session) -> Settings:
    settings = session.get(Settings, SETTINGS_ROW_ID)
    if settings is None:
        # The migration inserts the row; this covers a database built from the models in tests.
        settings = Settings(id=SETTINGS_ROW_ID, stripe_connected=False, online_card_payments_enabled=True)
        session.add(settings)
        session.flush()
    return settings


def update_settings(
    session: Session,
    actor: str,
    *,
    stripe_connected: bool | None = None,
    stripe_account_id: str | None = None,
    clear_stripe_account: bool = False,
    online_card_payments_enabled: bool | None = None,
) -> Settings:
    settings = get_settings(session)
    changes: dict[str, object] = {}
    if stripe_account_id is not None:
        account = stripe_account_id.strip()
        if account and not ACCOUNT_ID.fullmatch(account):
            raise SettingsError("A connected account id looks like acct_ followed by letters and digits.")
        changes["stripe_account_id"] = account or None
    elif clear_stripe_account:
        changes["stripe_account_id"] = None
    if stripe_connected is not None:
        changes["stripe_connected"] = stripe_connected
    if online_card_payments_enabled is not None:
        changes["online_card_payments_enabled"] = online_card_payments_enabled
    changed: dict[str, Any] = {k: v for k, v in changes.items() if getattr(settings, k) != v}
    for key, value in changed.items():
        setattr(settings, key, value)
    if changed:
        audit.record(session, actor, "settings.updated", **changed)
    session.flush()
    return settings
