"""The registry of Stripe accounts the emulator knows: their API keys, who they are, which platform they
are connected to, and the platforms' Connect OAuth applications (client ids, codes, refresh tokens).

Nothing is created on first use: a key the registry does not hold is refused with 401, a
``Stripe-Account`` it does not hold (or one whose connection was deauthorized) with 403. The default
account, whose secret key is ``sk_test_emulator``, exists from the start; tests create others through
``POST /_emulator/accounts`` or the OAuth pages, as a business would.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from .ids import new_id

DEFAULT_ACCOUNT = "acct_1EmulatorDefault0"
DEFAULT_SECRET_KEY = "sk_test_emulator"
DEFAULT_PUBLISHABLE_KEY = "pk_test_emulator"
DEFAULT_BUSINESS_NAME = "Emulator Test Business"
# The default account's Connect application: it accepts any http(s) redirect_uri (a platform's own
# application takes only the URIs registered with it, as Stripe's do).
DEFAULT_CLIENT_ID = "ca_emulator"

ACCOUNT_ID_RE = re.compile(r"^acct_[A-Za-z0-9]+$")
SECRET_KEY_RE = re.compile(r"^(sk|rk)_test_[A-Za-z0-9_\-]+$")
_PASSWORD_ROUNDS = 10_000


def hash_password(password: str) -> str:
    salt = secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), _PASSWORD_ROUNDS).hex()
    return f"{salt}${digest}"


def password_matches(stored: str | None, password: str) -> bool:
    if not stored or "$" not in stored:
        return False
    salt, digest = stored.split("$", 1)
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), _PASSWORD_ROUNDS).hex()
    return hmac.compare_digest(candidate, digest)


def mask_key(key: str) -> str:
    """A key as Stripe shows it in errors: its prefix, stars, its last four characters."""
    prefix = next((p for p in ("sk_test_", "rk_test_", "pk_test_", "sk_live_", "rk_live_", "pk_live_")
                   if key.startswith(p)), "")
    if len(key) - len(prefix) <= 4:
        return key
    return prefix + "*" * (len(key) - len(prefix) - 4) + key[-4:]


@dataclass
class Connection:
    """An account connected to a platform through Connect (OAuth, or the test hook)."""

    platform: str
    client_id: str
    scope: str = "read_write"
    connected_at: int = 0


@dataclass
class Account:
    id: str
    business_name: str
    created: int
    email: str | None = None
    password_hash: str | None = None
    country: str = "US"
    default_currency: str = "usd"
    charges_enabled: bool = True
    payouts_enabled: bool = True
    secret_keys: list[str] = field(default_factory=list)
    publishable_key: str = ""
    # The platforms this account is connected to, by platform account id.
    connections: dict[str, Connection] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Account:
        connections = {k: Connection(**v) for k, v in data.get("connections", {}).items()}
        return cls(**{**data, "connections": connections})

    def render(self) -> dict[str, Any]:
        """The account as GET /v1/account answers it (docs.stripe.com/api/accounts/object)."""
        disabled = None if self.charges_enabled else "requirements.past_due"
        requirements = {"alternatives": [], "current_deadline": None, "currently_due": [],
                        "disabled_reason": disabled, "errors": [], "eventually_due": [],
                        "past_due": [] if self.charges_enabled else ["external_account"],
                        "pending_verification": []}
        return {
            "id": self.id,
            "object": "account",
            "business_profile": {
                "annual_revenue": None, "estimated_worker_count": None, "mcc": "5734",
                "name": self.business_name, "product_description": None, "support_address": None,
                "support_email": self.email, "support_phone": None, "support_url": None, "url": None,
            },
            "business_type": "company",
            "capabilities": {"card_payments": "active" if self.charges_enabled else "inactive",
                             "transfers": "active" if self.payouts_enabled else "inactive"},
            "charges_enabled": self.charges_enabled,
            "controller": {"type": "account"},
            "country": self.country,
            "created": self.created,
            "default_currency": self.default_currency,
            "details_submitted": True,
            "email": self.email,
            "external_accounts": {"object": "list", "data": [], "has_more": False, "total_count": 0,
                                  "url": f"/v1/accounts/{self.id}/external_accounts"},
            "future_requirements": {**requirements, "disabled_reason": None, "past_due": []},
            "metadata": {},
            "payouts_enabled": self.payouts_enabled,
            "requirements": requirements,
            "settings": {
                "dashboard": {"display_name": self.business_name, "timezone": "Etc/UTC"},
                "payments": {"statement_descriptor": self.business_name.upper()[:22]},
            },
            "tos_acceptance": {"date": self.created},
            "type": "standard",
        }


@dataclass
class OAuthClient:
    """A platform's Connect application (Stripe's client_id, ca_...)."""

    id: str
    platform: str
    name: str
    # Exact redirect URIs it accepts; empty means any http(s) URI (the default application's case).
    redirect_uris: list[str] = field(default_factory=list)


@dataclass
class Grant:
    """An authorization code (ac_...) or a refresh token (rt_...) issued on the authorize page."""

    client_id: str
    account: str
    scope: str
    used: bool = False


class Registry:
    """Accounts, keys and Connect applications. Guarded by the store's lock."""

    def __init__(self, now: int = 0) -> None:
        self.accounts: dict[str, Account] = {}
        self.keys: dict[str, str] = {}  # secret or publishable key -> account id
        self.revoked: set[str] = set()
        self.clients: dict[str, OAuthClient] = {}
        self.codes: dict[str, Grant] = {}
        self.refresh_tokens: dict[str, Grant] = {}
        # Secret keys handed to a platform by POST /oauth/token: revoked when the account disconnects.
        self.access_tokens: dict[str, Grant] = {}
        default = Account(DEFAULT_ACCOUNT, DEFAULT_BUSINESS_NAME, now, email="owner@emulator.example",
                          secret_keys=[DEFAULT_SECRET_KEY], publishable_key=DEFAULT_PUBLISHABLE_KEY)
        self._add(default)
        self.clients[DEFAULT_CLIENT_ID] = OAuthClient(DEFAULT_CLIENT_ID, DEFAULT_ACCOUNT,
                                                      "Emulator Test Platform")

    def _add(self, account: Account) -> Account:
        self.accounts[account.id] = account
        for key in (*account.secret_keys, account.publishable_key):
            if key:
                self.keys[key] = account.id
        return account

    # ---- accounts and keys

    def create_account(self, now: int, *, account_id: str | None = None, business_name: str | None = None,
                       email: str | None = None, password: str | None = None, country: str = "US",
                       default_currency: str = "usd", charges_enabled: bool = True,
                       secret_key: str | None = None) -> Account:
        """A new standalone account with a secret and a publishable key; raises ValueError when the id,
        the email or the key is taken or malformed."""
        account_id = account_id or new_id("acct_1", 15)
        if not ACCOUNT_ID_RE.match(account_id):
            raise ValueError(f"not an account id: {account_id!r} (acct_ followed by letters and digits)")
        if account_id in self.accounts:
            raise ValueError(f"account {account_id} exists already")
        if email is not None and self.by_email(email) is not None:
            raise ValueError(f"an account with the email {email} exists already")
        key = secret_key or "sk_test_" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")
        if not SECRET_KEY_RE.match(key) or key in self.keys or key in self.revoked:
            raise ValueError(f"secret key {mask_key(key)} is taken or is not a test secret key")
        account = Account(
            account_id, business_name or f"Test business {account_id[-6:]}", now, email=email,
            password_hash=hash_password(password) if password else None, country=country,
            default_currency=default_currency, charges_enabled=charges_enabled, secret_keys=[key],
            publishable_key="pk_test_" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y"),
        )
        return self._add(account)

    def add_secret_key(self, account_id: str, key: str | None = None) -> str:
        key = key or "sk_test_" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")
        if not SECRET_KEY_RE.match(key) or key in self.keys or key in self.revoked:
            raise ValueError(f"secret key {mask_key(key)} is taken or is not a test secret key")
        self.accounts[account_id].secret_keys.append(key)
        self.keys[key] = account_id
        return key

    def revoke_key(self, key: str) -> None:
        account_id = self.keys.pop(key, None)
        if account_id is None:
            raise KeyError(key)
        account = self.accounts[account_id]
        if key in account.secret_keys:
            account.secret_keys.remove(key)
        self.revoked.add(key)

    def by_email(self, email: str) -> Account | None:
        wanted = email.strip().lower()
        return next((a for a in self.accounts.values() if (a.email or "").lower() == wanted), None)

    # ---- Connect

    def connect(self, account_id: str, platform: str, client_id: str, scope: str, now: int) -> None:
        self.accounts[account_id].connections[platform] = Connection(platform, client_id, scope, now)

    def disconnect(self, account_id: str, platform: str) -> Connection | None:
        """Forget the connection and revoke the keys the platform was given for the account."""
        connection = self.accounts[account_id].connections.pop(platform, None)
        for grants in (self.refresh_tokens, self.access_tokens):
            for token, grant in list(grants.items()):
                if grant.account == account_id and self.clients[grant.client_id].platform == platform:
                    del grants[token]
                    if token in self.keys:
                        self.revoke_key(token)
        return connection

    def platforms_of(self, account_id: str) -> list[str]:
        account = self.accounts.get(account_id)
        return list(account.connections) if account is not None else []

    def can_act_for(self, key_account: str, target: str) -> bool:
        """Whether a key of ``key_account`` may send ``Stripe-Account: target``."""
        if target == key_account:
            return True
        account = self.accounts.get(target)
        return account is not None and key_account in account.connections

    def client_of(self, platform: str) -> OAuthClient:
        """The platform's Connect application (made, without redirect URIs, if it has none)."""
        found = next((c for c in self.clients.values() if c.platform == platform), None)
        return found or self.add_client(platform, self.accounts[platform].business_name, [])

    def add_client(self, platform: str, name: str, redirect_uris: list[str]) -> OAuthClient:
        client = OAuthClient(new_id("ca_", 32), platform, name, list(redirect_uris))
        self.clients[client.id] = client
        return client

    # ---- persistence

    def to_json(self) -> dict[str, Any]:
        return {
            "accounts": [a.to_json() for a in self.accounts.values()],
            "revoked": sorted(self.revoked),
            "clients": [asdict(c) for c in self.clients.values()],
            "codes": {k: asdict(v) for k, v in self.codes.items()},
            "refresh_tokens": {k: asdict(v) for k, v in self.refresh_tokens.items()},
            "access_tokens": {k: asdict(v) for k, v in self.access_tokens.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registry:
        registry = cls.__new__(cls)
        registry.accounts, registry.keys = {}, {}
        for row in data.get("accounts", []):
            registry._add(Account.from_json(row))
        registry.revoked = set(data.get("revoked", []))
        registry.clients = {row["id"]: OAuthClient(**row) for row in data.get("clients", [])}
        registry.codes = {k: Grant(**v) for k, v in data.get("codes", {}).items()}
        registry.refresh_tokens = {k: Grant(**v) for k, v in data.get("refresh_tokens", {}).items()}
        registry.access_tokens = {k: Grant(**v) for k, v in data.get("access_tokens", {}).items()}
        return registry

    def render(self) -> list[dict[str, Any]]:
        """Every account for /_emulator/state: who it is, its keys, what it is connected to."""
        out = []
        for account in self.accounts.values():
            out.append({
                "id": account.id, "business_name": account.business_name, "email": account.email,
                "charges_enabled": account.charges_enabled, "country": account.country,
                "default_currency": account.default_currency, "secret_keys": list(account.secret_keys),
                "publishable_key": account.publishable_key,
                "connected_to": {p: {"client_id": c.client_id, "scope": c.scope}
                                 for p, c in account.connections.items()},
                "oauth_clients": [{"id": c.id, "redirect_uris": c.redirect_uris}
                                  for c in self.clients.values() if c.platform == account.id],
            })
        return out
