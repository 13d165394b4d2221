"""Client emails: one per event, never two (issue 6 item 5).

- Builders (`receipt_email`, `failure_email`, `authentication_email`) are pure: they return the subject,
  a plain-text body and an HTML body.
- Links in emails are single-use tokens stored by shared.services.client_links, starting at
`config.public_base_url`.
- Mailers deliver an `email.message.EmailMessage`: `FileMailer` writes `.eml` files under var/outbox/
  (the default, no server needed), `SmtpMailer` speaks to the server in `MAIL_URL`.
- `send_claimed` sends a `Notification` whose event the caller claimed (an insert into a table with a
  unique key on `Notification.dedupe_key`), and gives the claim back when sending fails.
"""

from __future__ import annotations

import hashlib
import html
import ipaddress
import os
import re
import smtplib
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Literal, NamedTuple, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from shared.config import Config, ConfigError, var_dir
from shared.domain.money import format_money

__all__ = [
    "EmailContent",
    "FileMailer",
    "Mailer",
    "Notification",
    "NotificationKind",
    "SmtpMailer",
    "SmtpSettings",
    "authentication_email",
    "compose_message",
    "default_sender",
    "failure_email",
    "mailer_from_config",
    "parse_mail_url",
    "receipt_email",
    "send_claimed",
]

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
    link_expires_at: datetime | None = None,
) -> EmailContent:
    """Sent once per declined charge: the reason in words, what happens next, and the update-card link.

    `next_retry_at` is the retry policy's next attempt (None: we will not try this card again).
    `link_expires_at`: when the link stops working (it works once).
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
    if link_expires_at is not None:
        lines.append(
            f"The link works once, until {_moment(link_expires_at)}; after that, sign in to the Client Zone."
        )
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
        f"The link works once, until {_moment(expires_at)}.",
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


_HEADER_BREAKS = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def compose_message(notification: Notification, *, sender: str, now: datetime | None = None) -> EmailMessage:
    """The RFC 5322 message: plain text first, the HTML alternative second."""
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    message["To"] = notification.to
    # One line whatever the subject holds (an invoice number written before such numbers were refused):
    # a line break in a header would make the message fail.
    message["Subject"] = _HEADER_BREAKS.sub(" ", notification.content.subject).strip()
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


def send_claimed(
    notification: Notification,
    mailer: Mailer,
    *,
    release: Callable[[Notification], None] | None = None,
    now: datetime | None = None,
) -> None:
    """Send a notification whose event the caller has claimed: recorded `notification.dedupe_key`
    durably (a NotificationLog row with a unique key, committed), so that no other delivery sends it.
    Claiming before sending means a crash between the two loses the email rather than sending it twice.
    `release` (delete the row) is called when sending raises, so a later retry can send it; leave it
    out where even that is too risky (a timeout after DATA may hide a delivered message).
    """
    try:
        mailer.send(compose_message(notification, sender=mailer.sender, now=now))
    except Exception:
        if release is not None:
            release(notification)
        raise


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
