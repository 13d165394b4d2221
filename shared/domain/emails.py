"""What the client emails say: pure builders of subject, plain text and HTML, and the RFC 5322 message.

One email per event (`Notification.dedupe_key`); shared.services.notifications claims the event and sends
it through a Mailer (shared.adapters.mail). The links they carry are shared.domain.link_tokens'.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from typing import Literal, NamedTuple

from shared.domain.money import format_money

__all__ = [
    "EmailContent",
    "Notification",
    "NotificationKind",
    "authentication_email",
    "compose_message",
    "failure_email",
    "login_link_email",
    "receipt_email",
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
