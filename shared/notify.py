"""Client emails: one per event, never two (issue 6 item 5).

- Builders (`receipt_email`, `failure_email`, `authentication_email`) are pure: they return the subject,
  a plain-text body and an HTML body.
- Links in emails carry a signed, expiring token (`sign_link_token` / `verify_link_token`) and start at
  `config.public_base_url`.
- Mailers deliver an `email.message.EmailMessage`: `FileMailer` writes `.eml` files under var/outbox/
  (the default, no server needed), `SmtpMailer` speaks to the server in `MAIL_URL`.
- `send_once` sends a `Notification` only if the caller's `claim` (an insert into a table with a unique
  key on `Notification.dedupe_key`'s parts) says this event was not mailed before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import os
import re
import smtplib
import ssl
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Literal, NamedTuple, Protocol
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from shared.config import Config, ConfigError, var_dir
from shared.money import format_money

__all__ = [
    "LINK_PATHS",
    "PURPOSE_AUTHENTICATE_CHARGE",
    "PURPOSE_CLIENT_LOGIN",
    "PURPOSE_UPDATE_CARD",
    "EmailContent",
    "FileMailer",
    "LinkTokenError",
    "LinkTokenExpired",
    "LinkTokenInvalid",
    "Mailer",
    "Notification",
    "NotificationKind",
    "SmtpMailer",
    "SmtpSettings",
    "authenticate_link",
    "authentication_email",
    "compose_message",
    "default_sender",
    "failure_email",
    "mailer_from_config",
    "parse_mail_url",
    "receipt_email",
    "send_once",
    "sign_link_token",
    "signed_link",
    "update_card_link",
    "verify_link_token",
]

# --------------------------------------------------------------------------------------------------
# Signed links
# --------------------------------------------------------------------------------------------------

PURPOSE_AUTHENTICATE_CHARGE = "authenticate-charge"
PURPOSE_CLIENT_LOGIN = "client-login"
PURPOSE_UPDATE_CARD = "update-card"

# Where each emailed link lands (GET, the token in ?token=). Client sign-in links are not here: they
# are single-use tokens stored by shared.client_auth, served at /client/login/<token>.
LINK_PATHS: dict[str, str] = {
    PURPOSE_AUTHENTICATE_CHARGE: "/client/authenticate",
    PURPOSE_UPDATE_CARD: "/client/cards",
}

_PURPOSE_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
# Link tokens get their own key derived from SECRET_KEY, so a MAC made here can never be confused with
# one the web layer makes from the same secret for another use (sessions, CSRF).
_LINK_KEY_LABEL = b"offsession link token v1"


class LinkTokenError(ValueError):
    """The link cannot be used; the message is safe to log, not meant for the client."""


class LinkTokenInvalid(LinkTokenError):
    """Malformed, tampered with, signed with another key, or made for another purpose."""


class LinkTokenExpired(LinkTokenError):
    """Genuine, but past its expiry time."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise LinkTokenInvalid("the token is not urlsafe base64")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise LinkTokenInvalid("the token is not urlsafe base64") from exc


def _link_mac(secret_key: str, purpose: str, subject_id: str, expires_unix: int) -> bytes:
    if not secret_key:
        raise ValueError("secret_key is empty")
    key = hmac.new(secret_key.encode("utf-8"), _LINK_KEY_LABEL, hashlib.sha256).digest()
    # purpose has no "|" and the expiry is digits, so "purpose|subject|expiry" splits one way only.
    signed = f"{purpose}|{subject_id}|{expires_unix}".encode()
    return hmac.new(key, signed, hashlib.sha256).digest()


def _check_purpose(purpose: str) -> None:
    if not _PURPOSE_PATTERN.fullmatch(purpose):
        raise ValueError(f"purpose must be lowercase letters, digits and dashes, got {purpose!r}")


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


def sign_link_token(secret_key: str, purpose: str, subject_id: str | int, expires_at: datetime) -> str:
    """A urlsafe token `<subject>.<expiry>.<mac>` that proves we issued a link for subject and purpose."""
    _check_purpose(purpose)
    _require_aware(expires_at, "expires_at")
    subject = str(subject_id)
    if not subject:
        raise ValueError("subject_id is empty")
    expires_unix = int(expires_at.timestamp())
    mac = _link_mac(secret_key, purpose, subject, expires_unix)
    return f"{_b64encode(subject.encode('utf-8'))}.{expires_unix}.{_b64encode(mac)}"


def verify_link_token(secret_key: str, token: str, purpose: str, now: datetime) -> str:
    """The subject id the token was issued for. Raises LinkTokenInvalid or LinkTokenExpired."""
    _check_purpose(purpose)
    _require_aware(now, "now")
    parts = (token or "").strip().split(".")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[0] or not parts[2]:
        raise LinkTokenInvalid("the token is malformed")
    subject_part, expiry_part, mac_part = parts
    try:
        subject = _b64decode(subject_part).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LinkTokenInvalid("the token is malformed") from exc
    expires_unix = int(expiry_part)
    expected = _link_mac(secret_key, purpose, subject, expires_unix)
    if not hmac.compare_digest(expected, _b64decode(mac_part)):
        raise LinkTokenInvalid("the token's signature does not match (tampered, other key or other purpose)")
    # Checked only after the signature: a forger learns nothing from the expiry answer.
    if now.timestamp() >= expires_unix:
        expired_at = datetime.fromtimestamp(expires_unix, UTC).isoformat()
        raise LinkTokenExpired(f"the link expired at {expired_at}")
    return subject


class _LinkSettings(Protocol):
    """What links need from shared.config.Config."""

    @property
    def public_base_url(self) -> str: ...

    @property
    def secret_key(self) -> str: ...


def signed_link(config: _LinkSettings, purpose: str, subject_id: str | int, expires_at: datetime) -> str:
    if purpose not in LINK_PATHS:
        raise ValueError(f"no page takes {purpose!r} links; known: {', '.join(sorted(LINK_PATHS))}")
    token = sign_link_token(config.secret_key, purpose, subject_id, expires_at)
    base = config.public_base_url.rstrip("/")
    return f"{base}{LINK_PATHS[purpose]}?{urlencode({'token': token})}"


def authenticate_link(config: _LinkSettings, charge_attempt_id: str, expires_at: datetime) -> str:
    """Where the client confirms a charge that needs authentication (3-D Secure) on-session."""
    return signed_link(config, PURPOSE_AUTHENTICATE_CHARGE, charge_attempt_id, expires_at)


def update_card_link(config: _LinkSettings, client_id: int | str, expires_at: datetime) -> str:
    return signed_link(config, PURPOSE_UPDATE_CARD, client_id, expires_at)


# --------------------------------------------------------------------------------------------------
# Message builders (pure)
# --------------------------------------------------------------------------------------------------


class EmailContent(NamedTuple):
    subject: str
    text: str
    html: str


def _day(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%B %Y}"


def _moment(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%B %Y at %H:%M} UTC"


def _greeting(client_name: str) -> str:
    name = client_name.strip()
    return f"Hello {name}," if name else "Hello,"


def _html_document(paragraphs: list[str], link: tuple[str, str] | None = None) -> str:
    """A plain, accessible HTML body. `paragraphs` are already escaped; the link is (label, url)."""
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    if link is not None:
        label, url = link
        body += (
            f'\n<p><a href="{html.escape(url, quote=True)}" '
            'style="display:inline-block;padding:10px 16px;background:#1d4ed8;color:#ffffff;'
            f'text-decoration:none;border-radius:4px">{html.escape(label)}</a></p>'
            f'\n<p style="font-size:smaller">If the button does not work, copy this address into your '
            f"browser:<br>{html.escape(url)}</p>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"></head>\n'
        '<body style="font-family:sans-serif;line-height:1.5;max-width:36em">\n'
        f"{body}\n</body>\n</html>\n"
    )


def receipt_email(
    *,
    client_name: str,
    invoice_number: str,
    amount: int,
    currency: str,
    card_brand: str,
    card_last4: str,
    paid_at: datetime,
) -> EmailContent:
    """Sent once a charge succeeded."""
    money = format_money(amount, currency)
    card = f"{card_brand.title()} card ending in {card_last4}"
    subject = f"Receipt: {money} paid for invoice {invoice_number}"
    lines = [
        _greeting(client_name),
        f"We received your payment of {money} for invoice {invoice_number}.",
        f"It was charged to your {card} on {_day(paid_at)}.",
        "Thank you.",
    ]
    text = "\n\n".join(lines) + "\n"
    return EmailContent(subject, text, _html_document([html.escape(line) for line in lines]))


def failure_email(
    *,
    client_name: str,
    invoice_number: str,
    amount: int,
    currency: str,
    reason: str,
    update_card_url: str,
    next_retry_at: datetime | None,
    card_last4: str | None = None,
) -> EmailContent:
    """Sent once per declined charge: the reason in words, what happens next, and the update-card link.

    `next_retry_at` is the retry policy's next attempt (None: we will not try this card again).
    """
    money = format_money(amount, currency)
    card = f"your card ending in {card_last4}" if card_last4 else "your card"
    if next_retry_at is None:
        subject = f"Action needed: your payment for invoice {invoice_number} did not go through"
        next_step = f"We will not try {card} again. Please add a new card so we can collect the payment."
        label = "Add a new card"
    else:
        subject = f"Your payment for invoice {invoice_number} did not go through"
        next_step = (
            f"We will try {card} again on {_day(next_retry_at)}. "
            "If you would rather use another card, you can add it now."
        )
        label = "Update your card"
    lines = [
        _greeting(client_name),
        f"We could not collect {money} for invoice {invoice_number}.",
        reason,
        next_step,
    ]
    text = "\n\n".join([*lines, f"{label}: {update_card_url}"]) + "\n"
    return EmailContent(
        subject, text, _html_document([html.escape(line) for line in lines], (label, update_card_url))
    )


def authentication_email(
    *,
    client_name: str,
    invoice_number: str,
    amount: int,
    currency: str,
    authenticate_url: str,
    expires_at: datetime,
) -> EmailContent:
    """Sent once when the bank wants the client to confirm an off-session charge themselves."""
    money = format_money(amount, currency)
    subject = f"Please confirm your payment of {money} for invoice {invoice_number}"
    lines = [
        _greeting(client_name),
        f"Your bank asks you to confirm the payment of {money} for invoice {invoice_number}. "
        "It takes a moment, for example with a code or your banking app.",
        f"The link works until {_moment(expires_at)}.",
        "If you did not expect this email, do not use the link.",
    ]
    label = "Confirm the payment"
    text = "\n\n".join([*lines, f"{label}: {authenticate_url}"]) + "\n"
    return EmailContent(
        subject, text, _html_document([html.escape(line) for line in lines], (label, authenticate_url))
    )


# --------------------------------------------------------------------------------------------------
# Notifications and exactly-once sending
# --------------------------------------------------------------------------------------------------

# The dunning decision's notify_kind values plus the receipt.
NotificationKind = Literal[
    "receipt", "will_retry", "card_update_needed", "authentication_needed", "login_link"
]


@dataclass(frozen=True)
class Notification:
    """One email about one event. The event is (kind, subject_id): a charge attempt id for all kinds."""

    kind: NotificationKind
    subject_id: str
    to: str
    content: EmailContent

    def __post_init__(self) -> None:
        if not self.subject_id:
            raise ValueError("subject_id is empty")
        if "@" not in parseaddr(self.to)[1]:
            raise ValueError(f"not an email address: {self.to!r}")

    @property
    def dedupe_key(self) -> str:
        """Stable for the event, whatever the wording: the unique key of the NotificationLog row."""
        return f"{self.kind}:{self.subject_id}"


def _message_id(notification: Notification, sender: str) -> str:
    # Derived from the event, so even a resend by mistake carries the same Message-ID (mail clients
    # and the FileMailer collapse it) rather than looking like a second email.
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    digest = hashlib.sha256(notification.dedupe_key.encode("utf-8")).hexdigest()[:24]
    kind = re.sub(r"[^A-Za-z0-9-]", "-", notification.kind)
    return f"<{kind}.{digest}@{domain}>"


def compose_message(notification: Notification, *, sender: str, now: datetime | None = None) -> EmailMessage:
    """The RFC 5322 message: plain text first, the HTML alternative second."""
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    message["To"] = notification.to
    message["Subject"] = notification.content.subject
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = _message_id(notification, sender)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-responders must not answer
    message["X-Offsession-Notification"] = notification.dedupe_key
    message.set_content(notification.content.text)
    message.add_alternative(notification.content.html, subtype="html")
    return message


class Mailer(Protocol):
    """Delivers a composed message. `sender` is the From address the messages should carry."""

    @property
    def sender(self) -> str: ...

    def send(self, message: EmailMessage) -> None: ...


def send_once(
    notification: Notification,
    mailer: Mailer,
    *,
    claim: Callable[[Notification], bool],
    release: Callable[[Notification], None] | None = None,
    now: datetime | None = None,
) -> bool:
    """Send the notification unless its event was already mailed; True when this call sent it.

    `claim` records `notification.dedupe_key` durably (insert a NotificationLog row with a unique
    (kind, charge_attempt_id) key and commit) and returns False when the row already existed. Claiming
    before sending means a crash between the two loses the email rather than sending it twice.
    `release` (delete the row) is called when sending raises, so a later retry can send it; leave it
    out where even that is too risky (a timeout after DATA may hide a delivered message).
    """
    if not claim(notification):
        return False
    try:
        mailer.send(compose_message(notification, sender=mailer.sender, now=now))
    except Exception:
        if release is not None:
            release(notification)
        raise
    return True


def login_link_email(*, client_name: str, url: str, valid_minutes: int) -> EmailContent:
    """The Client Zone sign-in link (one per request: not an event to send once)."""
    subject = "Your sign-in link"
    lines = [
        _greeting(client_name),
        "Open this link to sign in to your Client Zone:",
        url,
        f"It works once, for {valid_minutes} minutes. If you did not ask for it, ignore this email.",
    ]
    text = "\n\n".join(lines) + "\n"
    paragraphs = [html.escape(line) for line in (lines[0], lines[3])]
    return EmailContent(subject, text, _html_document(paragraphs, link=("Sign in", url)))


def send_login_link(config: Config, to: str, client_name: str, url: str, *, valid_minutes: int = 30) -> None:
    content = login_link_email(client_name=client_name, url=url, valid_minutes=valid_minutes)
    notification = Notification("login_link", uuid.uuid4().hex, to, content)
    mailer = mailer_from_config(config)
    mailer.send(compose_message(notification, sender=mailer.sender))


# --------------------------------------------------------------------------------------------------
# Mailers
# --------------------------------------------------------------------------------------------------


def default_sender(public_base_url: str) -> str:
    """'Offsession <billing@example.com>' from PUBLIC_BASE_URL's host; billing@localhost for an IP."""
    host = (urlsplit(public_base_url).hostname or "").lower()
    try:
        ipaddress.ip_address(host)
        host = ""
    except ValueError:
        pass
    if not host or "." not in host:
        host = "localhost"
    return f"Offsession <billing@{host}>"


class FileMailer:
    """Writes each message as an RFC 5322 `.eml` file (CRLF line ends) into `outbox_dir`.

    The file name comes from the Message-ID, so the same notification written twice is one file.
    """

    def __init__(
        self, outbox_dir: Path | str | None = None, *, sender: str = "Offsession <billing@localhost>"
    ) -> None:
        self.outbox_dir = Path(outbox_dir) if outbox_dir is not None else var_dir() / "outbox"
        self._sender = sender

    @property
    def sender(self) -> str:
        return self._sender

    def path_for(self, message: EmailMessage) -> Path:
        message_id = str(message.get("Message-ID") or "")
        stem = re.sub(r"[^A-Za-z0-9.@_-]", "", message_id).replace("@", "_at_")
        if not stem:
            # No Message-ID: name it after its content, still stable for identical messages.
            stem = hashlib.sha256(message.as_bytes(policy=SMTP_POLICY)).hexdigest()[:32]
        return self.outbox_dir / f"{stem}.eml"

    def send(self, message: EmailMessage) -> None:
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        target = self.path_for(message)
        data = message.as_bytes(policy=SMTP_POLICY)
        # Written beside the target and renamed: a reader never sees half a message.
        fd, temporary = tempfile.mkstemp(dir=self.outbox_dir, prefix=".writing-", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)  # never in logs or tracebacks
    use_ssl: bool  # smtps:// : TLS from the first byte (port 465)
    starttls: bool  # smtp:// on 587 (or ?starttls=true): upgrade with STARTTLS before logging in
    sender: str | None  # ?from=... in MAIL_URL


_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


def parse_mail_url(url: str) -> SmtpSettings:
    """`smtp://user:pass@host:port` / `smtps://...`; user and password may be percent-encoded.

    Query parameters: `from` (the sender address), `starttls` (true/false; default: on for port 587).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise ConfigError(f"MAIL_URL must start with smtp:// or smtps://, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ConfigError("MAIL_URL has no host (smtp://user:pass@host:port)")
    try:
        port = parts.port or (465 if scheme == "smtps" else 25)
    except ValueError as exc:
        raise ConfigError(f"MAIL_URL has an invalid port: {exc}") from exc
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"from", "starttls"}
    if unknown:
        raise ConfigError(f"MAIL_URL has unknown parameters: {', '.join(sorted(unknown))}")
    starttls = scheme == "smtp" and port == 587
    if "starttls" in query:
        word = query["starttls"].lower()
        if word not in _TRUE_WORDS | _FALSE_WORDS:
            raise ConfigError(f"MAIL_URL starttls must be true or false, got {query['starttls']!r}")
        starttls = word in _TRUE_WORDS
    if scheme == "smtps" and starttls:
        raise ConfigError("MAIL_URL: smtps:// is already encrypted; starttls applies to smtp:// only")
    sender = query.get("from")
    if sender is not None and "@" not in parseaddr(sender)[1]:
        raise ConfigError(f"MAIL_URL from= is not an email address: {sender!r}")
    return SmtpSettings(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        use_ssl=scheme == "smtps",
        starttls=starttls,
        sender=sender,
    )


class SmtpMailer:
    """Sends through the SMTP server of MAIL_URL, one connection per message (emails are few)."""

    def __init__(
        self,
        url: str,
        *,
        sender: str = "Offsession <billing@localhost>",
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = parse_mail_url(url)
        self._sender = self.settings.sender or sender
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()

    @property
    def sender(self) -> str:
        return self._sender

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.use_ssl:
            return smtplib.SMTP_SSL(s.host, s.port, timeout=self.timeout, context=self.ssl_context)
        return smtplib.SMTP(s.host, s.port, timeout=self.timeout)

    def send(self, message: EmailMessage) -> None:
        smtp = self._connect()
        try:
            smtp.ehlo()
            if self.settings.starttls:
                smtp.starttls(context=self.ssl_context)
                smtp.ehlo()
            if self.settings.username:
                smtp.login(self.settings.username, self.settings.password or "")
            smtp.send_message(message)
        except BaseException:
            smtp.close()
            raise
        # The server has accepted the message: a failing QUIT must not turn it into an error that
        # would make the caller release its claim and send the email a second time.
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def mailer_from_config(config: Config) -> Mailer:
    """SMTP when MAIL_URL is set (smtp:// or smtps://); otherwise .eml files under var/outbox/."""
    sender = default_sender(config.public_base_url)
    if not config.mail_url:
        return FileMailer(var_dir() / "outbox", sender=sender)
    return SmtpMailer(config.mail_url, sender=sender)
