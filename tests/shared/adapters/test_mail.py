from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import get_args

import pytest

from shared.adapters.mail import FileMailer, SmtpMailer, default_sender, mailer_from_config, parse_mail_url
from shared.config import Config, ConfigError
from shared.domain.declines import NotifyKind
from shared.domain.emails import (
    EmailContent,
    Notification,
    NotificationKind,
    authentication_email,
    compose_message,
    failure_email,
    receipt_email,
)
from shared.services.notifications import send_claimed
from tests.support.smtp import SmtpServer, running_smtp_server

SECRET = "test-secret-key"
NOW = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
ATTEMPT_ID = "0b7e6f0e-8a51-4f38-9a8e-2f7f3f0c1d2a"


def make_config(**overrides: str | None) -> Config:
    values: dict[str, object] = {
        "database_url": "sqlite://",
        "celery_broker_url": "filesystem://",
        "redis_url": None,
        "stripe_api_key": "sk_test_emulator",
        "stripe_api_base": "http://127.0.0.1:12111",
        "stripe_webhook_secret": "whsec_emulator",
        "stripe_rate_limit": 20.0,
        "api_token": "test-api-token",
        "secret_key": SECRET,
        "public_base_url": "https://billing.example.com",
        "mail_url": None,
    }
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


def a_notification(kind: NotificationKind = "receipt", to: str = "ada@example.com") -> Notification:
    content = receipt_email(
        client_name="Ada Lovelace",
        invoice_number="INV-0042",
        amount=123450,
        currency="eur",
        card_brand="visa",
        card_last4="4242",
        paid_at=NOW,
    )
    return Notification(kind=kind, subject_id=ATTEMPT_ID, to=to, content=content)


def parse_eml(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parts_of(message: EmailMessage) -> dict[str, str]:
    # Text parts are in canonical CRLF form on the wire; compare them with \n line ends.
    return {
        part.get_content_type(): part.get_content().replace("\r\n", "\n")
        for part in message.walk()
        if not part.is_multipart()
    }


# --- builders ---------------------------------------------------------------------------------------------


def test_receipt_names_the_amount_invoice_and_card() -> None:
    subject, text, html = receipt_email(
        client_name="Ada Lovelace",
        invoice_number="INV-0042",
        amount=123450,
        currency="eur",
        card_brand="visa",
        card_last4="4242",
        paid_at=NOW,
    )
    assert "€1,234.50" in subject and "INV-0042" in subject
    for body in (text, html):
        assert "€1,234.50" in body and "INV-0042" in body and "ending in 4242" in body
        assert "2 March 2026" in body
    assert text.startswith("Hello Ada Lovelace,")


def test_failure_notice_with_a_retry_gives_the_reason_the_date_and_the_link() -> None:
    link = "https://billing.example.com/client/cards?token=abc.123.def"
    subject, text, html = failure_email(
        client_name="Ada",
        invoice_number="INV-7",
        amount=5000,
        currency="usd",
        reason="Your bank declined the card: insufficient funds.",
        update_card_url=link,
        next_retry_at=NOW + timedelta(days=1),
        card_last4="9995",
    )
    assert "did not go through" in subject and "INV-7" in subject
    for body in (text, html):
        assert "Your bank declined the card: insufficient funds." in body
        assert "$50.00" in body
        assert "3 March 2026" in body and "ending in 9995" in body
    assert link in text
    assert f'href="{link}"' in html


def test_failure_notice_without_a_retry_asks_for_a_new_card() -> None:
    subject, text, html = failure_email(
        client_name="Ada",
        invoice_number="INV-7",
        amount=1000,
        currency="jpy",
        reason="Your card has expired.",
        update_card_url="https://x.example/client/cards?token=t",
        next_retry_at=None,
    )
    assert subject.startswith("Action needed")
    assert (
        "We will not try your card again" in text
        and "Add a new card: https://x.example/client/cards?token=t" in text
    )
    assert "Your card has expired." in html and "¥1,000" in html


def test_authentication_request_carries_the_link_and_its_expiry() -> None:
    link = "https://billing.example.com/client/authenticate?token=abc_DEF-123&x=1"
    subject, text, html = authentication_email(
        client_name="Ada",
        invoice_number="INV-9",
        amount=2599,
        currency="gbp",
        authenticate_url=link,
        expires_at=NOW + timedelta(days=7),
    )
    assert "confirm" in subject.lower() and "£25.99" in subject
    assert f"Confirm the payment: {link}" in text
    assert "works once, until 9 March 2026 at 06:00 UTC" in text
    assert link.replace("&", "&amp;") in html


def test_html_bodies_escape_what_they_are_given() -> None:
    _, _, html = failure_email(
        client_name="<script>alert(1)</script>",
        invoice_number="INV-<1>",
        amount=100,
        currency="usd",
        reason="R & D",
        update_card_url='https://x.example/"onmouseover=alert(1)',
        next_retry_at=None,
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "R &amp; D" in html and 'href="https://x.example/&quot;onmouseover=alert(1)"' in html


# --- notifications and send_once --------------------------------------------------------------------------


def test_notification_kinds_cover_every_dunning_notify_kind() -> None:
    assert set(get_args(NotifyKind)) <= set(get_args(NotificationKind))


def test_dedupe_key_is_the_event_not_the_wording() -> None:
    first = a_notification("will_retry")
    reworded = Notification("will_retry", ATTEMPT_ID, "other@example.com", EmailContent("s", "t", "<p>h</p>"))
    assert first.dedupe_key == reworded.dedupe_key == f"will_retry:{ATTEMPT_ID}"
    assert a_notification("receipt").dedupe_key != first.dedupe_key
    with pytest.raises(ValueError, match="email address"):
        a_notification(to="not an address")


@dataclass
class RecordingMailer:
    sender: str = "Offsession <billing@example.com>"
    sent: list[EmailMessage] = field(default_factory=list)
    fail: bool = False

    def send(self, message: EmailMessage) -> None:
        if self.fail:
            raise ConnectionRefusedError("smtp down")
        self.sent.append(message)


def test_send_claimed_sends_the_claimed_notification() -> None:
    mailer = RecordingMailer()
    send_claimed(a_notification("authentication_needed"), mailer)
    assert len(mailer.sent) == 1
    assert mailer.sent[0]["To"] == "ada@example.com"
    assert mailer.sent[0]["From"] == "Offsession <billing@example.com>"


def test_send_claimed_releases_the_claim_when_sending_fails() -> None:
    released: list[str] = []
    mailer = RecordingMailer(fail=True)
    with pytest.raises(ConnectionRefusedError):
        send_claimed(a_notification(), mailer, release=lambda n: released.append(n.dedupe_key))
    assert released == [f"receipt:{ATTEMPT_ID}"]


def test_composed_message_has_stable_headers_and_both_parts() -> None:
    notification = a_notification()
    first = compose_message(notification, sender="Offsession <billing@example.com>", now=NOW)
    again = compose_message(
        notification, sender="Offsession <billing@example.com>", now=NOW + timedelta(hours=1)
    )
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"].endswith("@example.com>")
    assert first["Auto-Submitted"] == "auto-generated"
    assert set(parts_of(first)) == {"text/plain", "text/html"}


# --- FileMailer -------------------------------------------------------------------------------------------


def test_file_mailer_writes_a_parseable_eml_with_both_parts(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path / "outbox", sender="Offsession <billing@example.com>")
    notification = a_notification()
    message = compose_message(notification, sender=mailer.sender, now=NOW)
    mailer.send(message)

    files = list((tmp_path / "outbox").glob("*.eml"))
    assert files == [mailer.path_for(message)]
    raw = files[0].read_bytes()
    assert b"\r\n" in raw  # RFC 5322 line ends
    parsed = parse_eml(raw)
    assert parsed["To"] == "ada@example.com"
    assert parsed["Subject"] == notification.content.subject
    parts = parts_of(parsed)
    assert parts["text/plain"] == notification.content.text
    assert "€1,234.50" in parts["text/html"]


def test_file_mailer_writes_the_same_notification_once(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path)
    for _ in range(2):
        mailer.send(compose_message(a_notification(), sender=mailer.sender, now=NOW))
    mailer.send(compose_message(a_notification("will_retry"), sender=mailer.sender, now=NOW))
    assert len(list(tmp_path.glob("*.eml"))) == 2
    assert not list(tmp_path.glob(".writing-*"))


def test_file_mailer_defaults_to_var_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFSESSION_HOME", str(tmp_path))
    assert FileMailer().outbox_dir == tmp_path / "var" / "outbox"
    mailer = mailer_from_config(make_config(mail_url=None))
    assert isinstance(mailer, FileMailer)
    assert mailer.outbox_dir == tmp_path / "var" / "outbox"
    assert mailer.sender == "Offsession <billing@billing.example.com>"


# --- SMTP -------------------------------------------------------------------------------------------------


def test_mail_url_parsing() -> None:
    plain = parse_mail_url("smtp://mail.example.com")
    assert (plain.host, plain.port, plain.use_ssl, plain.starttls, plain.username) == (
        "mail.example.com",
        25,
        False,
        False,
        None,
    )
    submission = parse_mail_url(
        "smtp://us%40er:p%3Ass%2Fword@mail.example.com:587?from=billing%40example.com"
    )
    assert submission.starttls and not submission.use_ssl
    assert (submission.username, submission.password) == ("us@er", "p:ss/word")
    assert submission.sender == "billing@example.com"
    assert "p:ss/word" not in repr(submission)
    tls = parse_mail_url("smtps://u:p@mail.example.com")
    assert tls.use_ssl and tls.port == 465 and not tls.starttls
    assert not parse_mail_url("smtp://h:587?starttls=false").starttls
    assert parse_mail_url("smtp://h:2525?starttls=true").starttls


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://mail.example.com", "smtp:// or smtps://"),
        ("smtp://", "no host"),
        ("smtp://h:99999", "invalid port"),
        ("smtp://h?starttls=maybe", "true or false"),
        ("smtps://h?starttls=true", "already encrypted"),
        ("smtp://h?form=x", "unknown parameters"),
        ("smtp://h?from=nobody", "not an email address"),
    ],
)
def test_bad_mail_urls_are_refused_clearly(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_mail_url(url)


def test_mailer_from_config_picks_smtp_for_mail_url() -> None:
    mailer = mailer_from_config(
        make_config(mail_url="smtp://mail.example.com:587?from=Billing%20%3Cb%40ex.com%3E")
    )
    assert isinstance(mailer, SmtpMailer)
    assert mailer.settings.starttls
    assert mailer.sender == "Billing <b@ex.com>"


def test_default_sender_uses_the_public_host_when_it_is_a_domain() -> None:
    assert default_sender("https://pay.example.com:8443/x") == "Offsession <billing@pay.example.com>"
    assert default_sender("http://127.0.0.1:8000") == "Offsession <billing@localhost>"
    assert default_sender("http://localhost:8000") == "Offsession <billing@localhost>"


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with running_smtp_server() as server:
        yield server


def test_smtp_mailer_delivers_the_message(smtp_server: SmtpServer) -> None:
    port = smtp_server.server_address[1]
    mailer = SmtpMailer(f"smtp://127.0.0.1:{port}?from=billing%40example.com", timeout=5)
    notification = a_notification("authentication_needed")
    send_claimed(notification, mailer, now=NOW)

    assert len(smtp_server.received) == 1
    received = smtp_server.received[0]
    assert received.mail_from == "billing@example.com"
    assert received.rcpt_to == ["ada@example.com"]
    assert received.auth is None  # no credentials in the URL: no AUTH
    parsed = parse_eml(received.data)
    assert parsed["Subject"] == notification.content.subject
    assert parts_of(parsed)["text/plain"] == notification.content.text


def test_smtp_mailer_logs_in_with_the_url_credentials(smtp_server: SmtpServer) -> None:
    port = smtp_server.server_address[1]
    mailer = SmtpMailer(
        f"smtp://mailer:s%3Acret@127.0.0.1:{port}", sender="Offsession <b@example.com>", timeout=5
    )
    mailer.send(compose_message(a_notification(), sender=mailer.sender, now=NOW))
    assert smtp_server.received[0].auth == b"\0mailer\0s:cret"
    assert smtp_server.received[0].mail_from == "b@example.com"
