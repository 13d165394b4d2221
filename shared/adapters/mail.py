"""Mailers: deliver an `email.message.EmailMessage` (shared.services.ports.Mailer).

`FileMailer` writes `.eml` files under var/outbox/ (the default, no server needed), `SmtpMailer` speaks to
the server in `MAIL_URL`. What the emails say is shared.domain.emails; when they are sent, and never
twice, is shared.services.notifications.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import smtplib
import ssl
import tempfile
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from shared.config import Config, ConfigError, var_dir
from shared.services.ports import Mailer

__all__ = [
    "FileMailer",
    "SmtpMailer",
    "SmtpSettings",
    "default_sender",
    "mailer_from_config",
    "parse_mail_url",
]

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
