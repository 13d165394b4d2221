"""No log line of any process holds an emailed link's token: the real web (gunicorn with its access log
on, as in the Procfile), workers, beat and emulator, while a sign-in link, an update-card link and an
authentication link are each opened twice, used, and opened again."""

from __future__ import annotations

import email
import re
import time
from pathlib import Path

import pytest

from tests.support.services import RedisServer
from tests.support.stack import LinkBrowser, Stack, broker_url

pytestmark = pytest.mark.integration


def _links(outbox: Path, count: int, timeout: float = 60) -> list[str]:
    """The Client Zone links of the emails the workers wrote, once `count` of them are there."""
    deadline = time.monotonic() + timeout
    links: list[str] = []
    while time.monotonic() < deadline:
        links = []
        for path in sorted(outbox.glob("*.eml")) if outbox.exists() else []:
            message = email.message_from_bytes(path.read_bytes())
            for part in message.walk():
                if part.get_content_type() == "text/plain":
                    body = part.get_payload(decode=True).decode()
                    links += re.findall(
                        r"https?://\S+/client/(?:login/|cards\?token=|authenticate\?token=)\S+", body
                    )
        if len(links) >= count:
            return links
        time.sleep(0.2)
    raise AssertionError(f"{len(links)} of {count} emailed links after {timeout}s: {links}")


def test_no_process_logs_a_link_token(redis_server: RedisServer, tmp_path: Path) -> None:
    st = Stack(
        f"sqlite:///{tmp_path / 'links.db'}", broker_url(redis_server), workers=1, beat=True, access_log=True
    )
    try:
        declined = st.client_with_card("pm_card_chargeCustomerFail")  # an update-card email
        needs_bank = st.client_with_card("pm_card_authenticationRequired")  # an authentication email
        for client, final in ((declined, "failed"), (needs_bank, "requires_action")):
            status, charge = st.charge(st.invoice(client["id"], total=2_500)["id"])
            assert status == 202, charge
            assert st.wait_charge(charge["id"])["status"] == final
        asking = LinkBrowser()
        _, _, page = asking.get(st.base + "/client/login")
        status, _, _ = asking.post_form(
            st.base + "/client/login", {"email": declined["email"], "csrf_token": asking.csrf_token(page)}
        )
        assert status == 200

        links = _links(st.dir / "var" / "outbox", 3)
        tokens = [re.split(r"/client/login/|\?token=", link)[1] for link in links]
        assert {link.split("/client/")[1][:5] for link in links} == {"login", "cards", "authe"}
        for link, token in zip(links, tokens, strict=True):
            # The page that carries the token in its address is where the next request's Referer
            # would come from: send one that holds another token as well.
            referer = {"Referer": links[(links.index(link) + 1) % 3]}
            scanner = LinkBrowser()
            assert scanner.get(link, referer)[0] == scanner.get(link, referer)[0] == 200
            status, url, _ = LinkBrowser().use_link(link, referer)
            assert status == 200 and "/client/" in url and token not in url
            assert LinkBrowser().get(link, referer)[0] == 400

        # The access log has the lines, without the tokens.
        web = st.log("web")
        for line in ("GET /client/login/[redacted] HTTP/1.1", "GET /client/cards?token=[redacted] HTTP/1.1"):
            assert line in web, web[-3000:]
        assert (
            "GET /client/authenticate?token=[redacted] HTTP/1.1" in web
            and "POST /client/link HTTP/1.1" in web
        )
        for name in st.procs:
            text = st.log(name)
            for token in tokens:
                assert token not in text, f"a link token in the {name} log"
    finally:
        st.stop()
