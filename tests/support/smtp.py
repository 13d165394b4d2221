"""Just enough of an SMTP server for the tests (smtplib's side of EHLO, AUTH PLAIN, MAIL, RCPT, DATA, RSET,
NOOP, QUIT), on a free loopback port, keeping every message it accepts."""

from __future__ import annotations

import base64
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_to: list[str]
    data: bytes
    auth: bytes | None


class _SmtpHandler(socketserver.StreamRequestHandler):
    server: SmtpServer

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode("ascii") + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self.reply("220 test.local ESMTP ready")
        mail_from, rcpt_to, auth = "", [], None
        while True:
            line = self.rfile.readline()
            if not line:
                return
            command = line.decode("utf-8").rstrip("\r\n")
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-test.local")
                self.reply("250-AUTH PLAIN")
                self.reply("250 8BITMIME")
            elif verb == "AUTH":
                auth = base64.b64decode(command.split()[2])
                self.reply("235 2.7.0 Authentication successful")
            elif verb == "MAIL":
                mail_from, rcpt_to = command[len("MAIL FROM:") :].split()[0].strip("<>"), []
                self.reply("250 OK")
            elif verb == "RCPT":
                rcpt_to.append(command[len("RCPT TO:") :].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines: list[bytes] = []
                while (data_line := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data_line[1:] if data_line.startswith(b"..") else data_line)
                self.server.received.append(ReceivedMail(mail_from, rcpt_to, b"".join(lines), auth))
                self.reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:
                self.reply("502 Command not implemented")


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SmtpHandler)
        self.received: list[ReceivedMail] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextmanager
def running_smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
