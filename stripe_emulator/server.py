"""HTTP layer: a threading HTTP/1.1 server with keep-alive in front of ``Emulator.handle``."""

from __future__ import annotations

import contextlib
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .api import Config, Emulator

_REASONS = {status.value: status.phrase for status in HTTPStatus}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The SDK opens one keep-alive connection per client thread; leave room for bursts of new ones.
    request_queue_size = 128
    emulator: Emulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK's requests.Session reuses its connection
    server_version = "stripe-emulator"
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections give their thread back eventually
    server: _HTTPServer

    def log_message(self, format: str, *args: object) -> None:
        # One line per request would cost more than the request itself under load.
        return

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return
        body = self.rfile.read(length) if length > 0 else b""
        resp = self.server.emulator.handle(method, self.path, body, self.headers)
        if resp.drop:
            # The work is committed; the client gets no answer at all, as if the network failed.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        lines = [
            f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}",
            f"Content-Type: {resp.content_type}",
            f"Content-Length: {len(resp.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in resp.headers)
        if self.close_connection:
            lines.append("Connection: close")
        # Head and body in one write: two small writes would meet Nagle/delayed-ACK stalls.
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")


class EmulatorServer:
    """The emulator bound to a socket; run it in the foreground or in a background thread."""

    def __init__(self, config: Config, host: str = "127.0.0.1", port: int = 12111) -> None:
        self.emulator = Emulator(config)
        self.host = host
        self.httpd = _HTTPServer((host, port), _Handler)
        self.httpd.emulator = self.emulator
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        self.emulator.start()
        self.httpd.serve_forever(poll_interval=0.5)

    def start(self) -> None:
        """Serve from a daemon thread (for tests and embedding)."""
        self.emulator.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="stripe-emulator", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving, stop webhook delivery, save the state file if one is set."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()
        self.emulator.close()
