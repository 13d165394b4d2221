"""Who may come in, and how often: admins, API idempotency records, rate limits, emailed links, sign-in
attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.domain.models.base import Base, in_list, utcnow


class AdminUser(Base):
    __tablename__ = "admin_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # In every session cookie of this admin: signing out or a new password moves it on, and every
    # cookie carrying an older one (a copy included) stops working (web.pages).
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class ApiIdempotencyRecord(Base):
    """The answer first given to an API request carrying an Idempotency-Key, replayed on repeats."""

    __tablename__ = "api_idempotency_record"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    # method, path and body: a key reused for a different request is refused, as Stripe does.
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class RateLimitState(Base):
    """The shared Stripe rate budget of one account when REDIS_URL is unset (shared.adapters.rate_budget)."""

    __tablename__ = "rate_limit_state"

    # The Stripe-Account id, or 'platform' for the platform account itself.
    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    # GCRA theoretical arrival time in seconds since the epoch; a double keeps microseconds.
    tat: Mapped[float] = mapped_column()


LINK_PURPOSES = ("sign_in", "update_card", "authenticate")


class ClientLoginToken(Base):
    """An emailed Client Zone link, kept as a hash: single use, short-lived, scoped to its purpose
    (shared.services.client_links). The newest link of a kind (client, purpose, subject) revokes the older
    ones."""

    __tablename__ = "client_login_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("client.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(20), default="sign_in", server_default=text("'sign_in'"))
    # What the link is for beyond its client: the charge attempt to authenticate.
    subject_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (CheckConstraint(f"purpose IN ({in_list(LINK_PURPOSES)})", name="purpose_known"),)


class LoginAttempt(Base):
    """One counted sign-in event (a failed admin password, an emailed sign-in link) of the login
    throttle (shared.services.login_throttle). `key` is a hash of the limit and who it counts (email,
    IP), so no address is kept here; rows older than the longest window are pruned as new ones come in."""

    __tablename__ = "login_attempt"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(80))
    at: Mapped[datetime] = mapped_column(index=True)

    __table_args__ = (Index("ix_login_attempt_key_at", "key", "at"),)
