"""Admin accounts: created from the CLI, passwords hashed with Argon2id."""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.domain.models import AdminUser
from shared.services import audit

_hasher = PasswordHasher()
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MIN_PASSWORD_LENGTH = 10


class AdminError(ValueError):
    pass


def normalize_email(email: str) -> str:
    address = (email or "").strip().lower()
    if len(address) > 254 or not EMAIL.fullmatch(address):
        raise AdminError(f"{email!r} is not an email address.")
    return address


def create_admin(session: Session, email: str, password: str, *, actor: str = "cli") -> AdminUser:
    """Create an admin, or set a new password for an existing one (so the command can be rerun)."""
    address = normalize_email(email)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AdminError(f"The password needs at least {MIN_PASSWORD_LENGTH} characters.")
    admin = session.scalar(select(AdminUser).where(AdminUser.email == address))
    if admin is None:
        admin = AdminUser(email=address, password_hash=_hasher.hash(password))
        session.add(admin)
        audit.record(session, actor, "admin.created", email=address)
    else:
        _set_password(admin, password)
        audit.record(session, actor, "admin.password_set", email=address)
    session.flush()
    return admin


def _set_password(admin: AdminUser, password: str) -> None:
    admin.password_hash = _hasher.hash(password)
    # Every session signed in with the old password ends, a copied cookie's too (web.pages).
    admin.session_version += 1


def change_password(session: Session, admin: AdminUser, current: str, new: str, confirmation: str) -> None:
    """An admin's own password change: the current one first. Raises AdminError with words to show."""
    try:
        _hasher.verify(admin.password_hash, current)
    except (VerificationError, InvalidHashError):
        raise AdminError("The current password is not right.") from None
    if new != confirmation:
        raise AdminError("The two new passwords differ.")
    if len(new) < MIN_PASSWORD_LENGTH:
        raise AdminError(f"The new password needs at least {MIN_PASSWORD_LENGTH} characters.")
    _set_password(admin, new)
    audit.record(session, f"admin:{admin.email}", "admin.password_changed", email=admin.email)
    session.flush()


def authenticate(session: Session, email: str, password: str) -> AdminUser | None:
    try:
        address = normalize_email(email)
    except AdminError:
        return None
    admin = session.scalar(select(AdminUser).where(AdminUser.email == address))
    if admin is None:
        _hasher.hash(password)  # spend the same time, so timing does not tell which emails exist
        return None
    try:
        _hasher.verify(admin.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(admin.password_hash):
        admin.password_hash = _hasher.hash(password)
    return admin
