"""An emailed link's token never reaches a log line: not the app's own lines, and not gunicorn's access
log (the Procfile turns it on, and it prints the request line, the query string and the Referer as they
came). tests/integration/test_link_tokens_in_logs.py checks the same with every real process."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.glogging import Logger as GunicornLogger

from shared.config import load_config
from shared.services.notifications import deliver_charge_notification
from tests.support.web_app import Env, World, request_link, text_of, use_link

TOKEN = "Q1w2E3r4T5y6U7i8O9p0AaSsDdFfGgHhJjKkLlZzXxC"
OTHER = "M9n8B7v6C5x4Z3a2S1d0FfGgHhJjKkLlPpOoIiUuYyT"


def _access_line(path: Path, *, raw_uri: str, referer: str, log_format: str | None = None) -> str:
    cfg = GunicornConfig()
    cfg.set("accesslog", str(path))
    if log_format is not None:
        cfg.set("access_log_format", log_format)
    logger = GunicornLogger(cfg)
    path_info, _, query = raw_uri.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": raw_uri,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.7",
        "HTTP_REFERER": referer,
        "HTTP_USER_AGENT": "mail-scanner/1.0",
    }
    request = SimpleNamespace(headers=[("REFERER", referer), ("USER-AGENT", "mail-scanner/1.0")])
    response = SimpleNamespace(status="200 OK", headers=[("Content-Type", "text/html")], sent=512)
    logger.access(response, request, environ, timedelta(milliseconds=12))
    for handler in logging.getLogger("gunicorn.access").handlers:
        handler.flush()
    return path.read_text()


@pytest.mark.parametrize(
    ("raw_uri", "referer"),
    [
        (f"/client/login/{TOKEN}", f"https://mail.example.com/?u=/client/login/{OTHER}"),
        (f"/client/cards?token={TOKEN}", f"http://127.0.0.1:8000/client/authenticate?token={OTHER}"),
        (f"/client/authenticate?x=1&token={TOKEN}&y=2", f"http://127.0.0.1:8000/client/cards?TOKEN={OTHER}"),
    ],
)
def test_gunicorns_access_log_shows_no_link_token(
    env: Env, tmp_path: Path, raw_uri: str, referer: str
) -> None:
    # create_app (the env fixture made one) has put its filter on gunicorn's loggers.
    for log_format in (None, '%(U)s?%(q)s %({referer}i)s %(r)s "%(f)s"'):
        path = tmp_path / f"access-{log_format is None}.log"
        line = _access_line(path, raw_uri=raw_uri, referer=referer, log_format=log_format)
        assert "203.0.113.7" in line or log_format is not None, line  # the line was written
        assert "/client/" in line and "[redacted]" in line, line
        assert TOKEN not in line and OTHER not in line, line


def test_no_app_log_line_holds_a_token_through_every_link(
    env: Env, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http = env.app.test_client()
    before = env.email_files()
    request_link(http, world.a.email)
    config = load_config()
    for kind in ("card_update_needed", "authentication_needed"):
        deliver_charge_notification(
            env.runtime.sessions, config, env.runtime.mailer, world.a.charge_id, kind
        )
    links = [
        re.search(r"https?://[^/\s]+(/client/\S+)", text_of(message)).group(1)  # type: ignore[union-attr]
        for message in env.new_emails(before)
    ]
    assert len(links) == 3
    tokens = []
    for path in links:
        token = re.split(r"/client/login/|\?token=", path)[1]
        tokens.append(token)
        assert http.get(path).status_code == 200
        assert use_link(http, token).status_code == 303
        assert http.get(path).status_code == 400  # used: the refusal is logged too
    lines = "\n".join(f"{r.getMessage()} {r.args!r} {vars(r)!r}" for r in caplog.records)
    assert "GET" in lines  # the request lines were captured
    for token in tokens:
        assert token not in lines
