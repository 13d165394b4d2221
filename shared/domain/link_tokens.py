"""Emailed Client Zone links: what each kind is for, how long it lives, its secret and its address.

Three kinds: sign in (the Client Zone), update the card (the card page) and authenticate a charge (that
invoice's page). The token is random and only its digest is stored (shared.services.client_links issues,
peeks at and uses links). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote, urlencode

SIGN_IN = "sign_in"
UPDATE_CARD = "update_card"
AUTHENTICATE = "authenticate"
# As short as each action allows: a sign-in link is asked for and used at once; the emails after a
# decline and for authentication are read later, and the Client Zone's sign-in is there after that.
LINK_LIFETIMES = {
    SIGN_IN: timedelta(minutes=30),
    UPDATE_CARD: timedelta(hours=72),
    AUTHENTICATE: timedelta(hours=72),
}
LINK_LIFETIME = LINK_LIFETIMES[SIGN_IN]
# Where each kind of link lands (a GET that only shows the button).
_LANDINGS = {
    SIGN_IN: "/client/login/{token}",
    UPDATE_CARD: "/client/cards",
    AUTHENTICATE: "/client/authenticate",
}


class LoginLinkError(Exception):
    """The link is unknown, used, replaced or expired; the message is fit to show."""


@dataclass(frozen=True)
class IssuedLink:
    client_id: int
    purpose: str
    subject_id: str | None
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class LinkGrant:
    """What a link lets its holder do: sign in as the client, for one purpose (and subject)."""

    client_id: int
    purpose: str
    subject_id: str | None


def new_token() -> str:
    """A link's secret: 256 random bits, URL-safe. Only its digest is stored."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the database keeps of a token (SHA-256, hex): a leaked table opens no link."""
    return hashlib.sha256(token.encode()).hexdigest()


def link_url(public_base_url: str, link: IssuedLink) -> str:
    base = public_base_url.rstrip("/")
    landing = _LANDINGS[link.purpose]
    if "{token}" in landing:
        return base + landing.format(token=quote(link.token, safe=""))
    return f"{base}{landing}?{urlencode({'token': link.token})}"
