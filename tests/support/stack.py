"""The real processes of the Procfile on loopback, for integration tests: emulator, web (gunicorn),
Celery workers and, when asked, beat; configured only through the documented environment."""

from __future__ import annotations

import contextlib
import http.cookiejar as http_cookiejar
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.support.services import PostgresServer, RedisServer, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "integration-token"
WEBHOOK_SECRET = "whsec_integration"
FINAL = ("succeeded", "failed", "requires_action", "canceled")
# The queues of the Procfile's `worker` once a `worker-charges` process owns the charges queue.
NON_CHARGE_QUEUES = "webhooks,maintenance"


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        payload, status = e.read(), e.code
    try:
        return status, json.loads(payload or b"null")
    except ValueError:
        return status, payload.decode(errors="replace")


class Stack:
    def __init__(
        self,
        database_url: str,
        broker_url: str,
        *,
        workers: int = 1,
        concurrency: int = 2,
        beat: bool = False,
        lease_seconds: float | None = None,
        extra_env: dict[str, str] | None = None,
        emulator_flags: tuple[str, ...] = (),
        charge_workers: int = 0,
        charge_pool: str = "threads",
        charge_concurrency: int = 64,
        access_log: bool = False,
    ) -> None:
        """`charge_workers` > 0 runs the production shape of the Procfile: that many `worker-charges`
        processes (`-Q charges`, `charge_pool` x `charge_concurrency`) and `workers` prefork processes
        on the other queues. With 0 (the default) every worker consumes every queue. `lease_seconds`
        None keeps the default charge lease (OFFSESSION_CHARGE_LEASE_SECONDS unset). `access_log`: gunicorn
        writes its access log into web.log, as the Procfile has it."""
        self.dir = Path(tempfile.mkdtemp(prefix="offsession-stack-"))
        self.web_port = free_port()
        self.emu_port = free_port()
        self.base = f"http://127.0.0.1:{self.web_port}"
        self.emu = f"http://127.0.0.1:{self.emu_port}"
        self.database_url = database_url
        self.env = {
            **os.environ,
            "OFFSESSION_HOME": str(self.dir),
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "STRIPE_API_KEY": "sk_test_emulator",
            "STRIPE_API_BASE": self.emu,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "OFFSESSION_API_TOKEN": TOKEN,
            "SECRET_KEY": "integration-secret",
            "PUBLIC_BASE_URL": self.base,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            **(extra_env or {}),
        }
        if "REDIS_URL" not in (extra_env or {}):
            self.env.pop("REDIS_URL", None)
        if lease_seconds is None:
            self.env.pop("OFFSESSION_CHARGE_LEASE_SECONDS", None)
        else:
            self.env["OFFSESSION_CHARGE_LEASE_SECONDS"] = str(lease_seconds)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.worker_count = workers
        self.concurrency = concurrency
        self.charge_worker_count = charge_workers
        self.charge_pool = charge_pool
        self.charge_concurrency = charge_concurrency
        try:
            self.cli("db", "upgrade")
            self.start_emulator(*emulator_flags)
            self.start(
                "web",
                [
                    str(BIN / "gunicorn"),
                    "-b",
                    f"127.0.0.1:{self.web_port}",
                    "-w",
                    "2",
                    "--timeout",
                    "60",
                    *(["--access-logfile", "-"] if access_log else []),
                    "web:create_app()",
                ],
            )
            for i in range(workers):
                self.start_worker(i)
            for i in range(charge_workers):
                self.start_charge_worker(i)
            if beat:
                self.start(
                    "beat",
                    [
                        str(BIN / "celery"),
                        "-A",
                        "worker",
                        "beat",
                        "--loglevel",
                        "INFO",
                        "-s",
                        str(self.dir / "beat-schedule"),
                    ],
                )
            wait_for_port(self.web_port, 30)
            status, body = self.api(
                "PUT", "/api/settings", {"stripe_connected": True, "online_card_payments_enabled": True}
            )
            assert status == 200, body
        except BaseException:
            self.dump_logs()
            self.stop()
            raise

    # ---- processes ----
    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start_emulator(self, *flags: str) -> None:
        self.start(
            "emulator",
            [
                str(BIN / "offsession"),
                "emulator",
                "--port",
                str(self.emu_port),
                "--webhook-url",
                f"{self.base}/webhooks/stripe",
                "--webhook-secret",
                WEBHOOK_SECRET,
                *flags,
            ],
        )
        wait_for_port(self.emu_port, 30)

    def start_worker(self, index: int) -> None:
        # Beside charge workers, the prefork workers leave the charges queue to them (as in the Procfile).
        queues = ["-Q", NON_CHARGE_QUEUES] if self.charge_worker_count else []
        self.start(
            f"worker{index}",
            [
                str(BIN / "celery"),
                "-A",
                "worker",
                "worker",
                "--loglevel",
                "INFO",
                "-n",
                f"w{index}-{os.getpid()}@%h",
                "-c",
                str(self.concurrency),
                *queues,
                "--without-gossip",
                "--without-mingle",
            ],
        )

    def start_charge_worker(self, index: int) -> None:
        """A `worker-charges` process of the Procfile: the charges queue only, on a threads pool."""
        self.start(
            f"charges{index}",
            [
                str(BIN / "celery"),
                "-A",
                "worker",
                "worker",
                "--loglevel",
                "INFO",
                "-n",
                f"charges{index}-{os.getpid()}@%h",
                "-Q",
                "charges",
                "--pool",
                self.charge_pool,
                "-c",
                str(self.charge_concurrency),
                "--without-gossip",
                "--without-mingle",
            ],
        )

    def pids(self, name: str) -> set[int]:
        """The process `name` and every process it started (a worker's pool processes): its process
        group, read from /proc."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return set()
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # The command may hold spaces and parentheses: the fields after its closing one are fixed.
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == proc.pid:  # pgrp
                    found.add(int(stat.parent.name))
        return found

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            proc.wait(20)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_count(self, text: str) -> int:
        """How many times `text` appears in the logs of every process of the stack."""
        return sum(path.read_text(errors="replace").count(text) for path in self.dir.glob("*.log"))

    def dump_logs(self) -> None:
        for name in self.procs:
            sys.stderr.write(f"--- {name} log tail ---\n{self.log(name)[-20000:]}\n")

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "offsession"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"offsession {' '.join(args)}: {result.stdout} {result.stderr}"
        return result

    # ---- the API ----
    def api(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        return http(method, self.base + path, body, {"Authorization": f"Bearer {TOKEN}", **(headers or {})})

    def client_with_card(self, token: str = "pm_card_visa") -> dict[str, Any]:
        status, client = self.api(
            "POST", "/api/clients", {"name": f"Client {token}", "email": f"{os.urandom(4).hex()}@example.com"}
        )
        assert status == 201, client
        status, card = self.api("POST", f"/api/clients/{client['id']}/cards", {"payment_method": token})
        assert status == 201, card
        return client

    def invoice(
        self, client_id: int, total: int = 10_000, currency: str = "usd", **extra: Any
    ) -> dict[str, Any]:
        body = {
            "client_id": client_id,
            "number": "INV-" + os.urandom(5).hex(),
            "currency": currency,
            "total": total,
            "due_date": "2026-11-01",
            "payment_method": "online_card",
            **extra,
        }
        status, invoice = self.api("POST", "/api/invoices", body)
        assert status == 201, invoice
        return invoice

    def charge(
        self, invoice_id: int, amount: int | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        return self.api(
            "POST", f"/api/invoices/{invoice_id}/charges", {"amount": amount} if amount else {}, headers
        )

    def wait_charge(
        self, charge_id: str, final: tuple[str, ...] = FINAL, timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            status, last = self.api("GET", f"/api/charges/{charge_id}")
            if status == 200 and last["status"] in final:
                return last
            time.sleep(0.2)
        self.dump_logs()
        raise AssertionError(f"charge {charge_id} not in {final} after {timeout}s: {last}")

    # ---- the emulator ----
    def emulator_state(self) -> dict[str, Any]:
        status, state = http("GET", self.emu + "/_emulator/state")
        assert status == 200, state
        return state

    def payment_intents_for(self, invoice_id: int) -> list[dict[str, Any]]:
        return [
            pi
            for pi in self.emulator_state()["payment_intents"]
            if str((pi.get("metadata") or {}).get("invoice_id")) == str(invoice_id)
        ]

    def unregister_webhook_endpoints(self) -> None:
        """Delete the webhook endpoints that connecting Stripe registered (PUT /api/settings): the
        emulator then delivers each event once, to its --webhook-url (if any), not once more to them."""
        auth = {"Authorization": f"Bearer {self.env['STRIPE_API_KEY']}"}
        status, listed = http("GET", f"{self.emu}/v1/webhook_endpoints", headers=auth)
        assert status == 200, listed
        for endpoint in listed["data"]:
            status, body = http("DELETE", f"{self.emu}/v1/webhook_endpoints/{endpoint['id']}", headers=auth)
            assert status == 200, body

    def faults(self, **faults: Any) -> None:
        status, body = http("POST", self.emu + "/_emulator/faults", faults)
        assert status == 200, body


class LinkBrowser:
    """A browser for an emailed Client Zone link: cookies kept, the link opened, its button pressed."""

    def __init__(self) -> None:
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http_cookiejar.CookieJar())
        )

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        """(status, final URL, page)."""
        try:
            with self.opener.open(urllib.request.Request(url, headers=headers or {}), timeout=15) as page:
                return page.status, page.url, page.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, url, exc.read().decode(errors="replace")

    def csrf_token(self, page: str) -> str:
        match = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert match, page[:500]
        return match.group(1)

    def post_form(self, url: str, fields: dict[str, str]) -> tuple[int, str, str]:
        data = urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(url, data=data, method="POST")
        try:
            with self.opener.open(request, timeout=15) as page:
                return page.status, page.url, page.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, url, exc.read().decode(errors="replace")

    def use_link(self, link: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Open the link (its page, nothing used) and press its button; (status, final URL, page)."""
        status, _, page = self.get(link, headers)
        assert status == 200, page[:500]
        token = re.search(r'name="token" value="([^"]+)"', page)
        assert token, page[:500]
        base = link.split("/client/")[0]
        return self.post_form(
            f"{base}/client/link", {"token": token.group(1), "csrf_token": self.csrf_token(page)}
        )


@contextlib.contextmanager
def measuring(stack: Stack) -> Iterator[Any]:
    """An engine on the stack's database for a bench to read and write through; the stack always stops.
    On a failure its logs are kept and named; on Ctrl-C they are removed with it."""
    from sqlalchemy import create_engine

    engine = create_engine(stack.database_url)
    interrupted = False
    try:
        yield engine
    except Exception:
        print(f"stack logs are in {stack.dir}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        engine.dispose()
        stack.stop()
        if interrupted:
            shutil.rmtree(stack.dir, ignore_errors=True)


def bench_main(
    run: Callable[[], Any], report: Callable[[Any], None], *, ok: str, keep_logs: bool = False
) -> int:
    """A bench's exit: SIGTERM stops every process as Ctrl-C does; `report` prints the result's table;
    then FAIL with the result's violations (exit 1, the stack's logs kept) or `ok` (exit 0, the logs
    removed unless asked to keep them). The result has `violations` and `log_dir`."""

    def raise_on_sigterm(signum: int, _frame: object) -> None:
        # Turned into an exception so that the `finally` blocks stop every process, as for Ctrl-C.
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        result = run()
    except KeyboardInterrupt:
        print("interrupted: every process was stopped", file=sys.stderr)
        return 130
    report(result)
    if result.violations:
        print("FAIL: " + "; ".join(result.violations))
        print(f"the stack's logs are kept in {result.log_dir}")
        return 1
    if keep_logs:
        print(f"the stack's logs are kept in {result.log_dir}")
    elif result.log_dir is not None:
        shutil.rmtree(result.log_dir, ignore_errors=True)  # nothing to look into
    print(ok)
    return 0


_redis_db = itertools.count()
# Redis databases 1 to 11 are the stacks'; 12 to 15 belong to the tests that use one Redis database
# for themselves (tests/shared/adapters/test_kombu_redis.py, test_rate_budget_redis.py,
# tests/web/test_metrics.py).
STACK_REDIS_DATABASES = range(1, 12)


def broker_url(redis_server: RedisServer) -> str:
    """A Redis database of the stack's own, emptied: no other stack's leftover messages reach its workers."""
    url = f"{redis_server.url}/{STACK_REDIS_DATABASES[next(_redis_db) % len(STACK_REDIS_DATABASES)]}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def stack_database(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of this kind for a stack: a SQLite file, or one on the session's PostgreSQL."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'stack.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database("stack")


def db_rows(stack: Stack, sql: str, **params: Any) -> list[Any]:
    """The rows `sql` reads from the stack's database, through a connection of its own."""
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()
