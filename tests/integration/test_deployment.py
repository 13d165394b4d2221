"""The image's way, without a Docker engine: the wheel built as the Dockerfile builds it, installed from the
lock into a fresh venv (not editable), and each compose service's command (migrate, web, worker,
worker-charges, beat) run with the environment docker-compose.yml renders for production, as an
unprivileged user, from an empty directory it cannot write, with a code directory it cannot write,
against a real PostgreSQL and redis-server, the emulator standing in for Stripe and an SMTP sink for
MAIL_URL. An invoice is charged end to end; /healthz and /metrics answer; nothing is written beside the
processes but beat's schedule.

What is changed from the compose file, and why: addresses (loopback ports instead of service names),
gunicorn's worker count (2 cores here), beat's schedule path (a directory of the test's), and a node
name per Celery worker (containers have a hostname each; here they share one).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compose
import pytest
from sqlalchemy import create_engine, text

from tests.support.services import PostgresServer, RedisServer, free_port, wait_for_port
from tests.support.smtp import SmtpServer, running_smtp_server
from tests.support.stack import http

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = Path(compose.__file__).parent / "docker-compose"
SERVICES = ("migrate", "web", "worker", "worker-charges", "beat")
BASE_PYTHON_CANDIDATES = (
    os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
    "/usr/local/bin/python3.11",
    "/usr/bin/python3.11",
)


def as_unprivileged() -> dict[str, Any]:
    """Popen arguments that drop to `nobody` when the tests run as root (CI does); otherwise the tests'
    own user is unprivileged already."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def base_python() -> str:
    """A Python 3.11 the unprivileged user may run (a pyenv build under /root is not one)."""
    for candidate in BASE_PYTHON_CANDIDATES:
        if not Path(candidate).exists():
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 11)"],
                capture_output=True,
                cwd="/",
                **as_unprivileged(),
            )
        except PermissionError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.fail(f"no Python 3.11 the unprivileged user can run among {BASE_PYTHON_CANDIDATES}")


def build_context(into: Path) -> None:
    """What the Dockerfile's build stage copies, and nothing else (as .dockerignore lets in)."""
    build_stage = (ROOT / "Dockerfile").read_text().split("\nFROM ", 2)[1]
    for line in build_stage.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                path = ROOT / source
                if path.is_dir():
                    shutil.copytree(
                        path, into / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                else:
                    shutil.copy2(path, into / source)


@dataclass
class Installed:
    work: Path
    venv: Path
    timings: dict[str, float] = field(default_factory=dict)

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """Built and installed once for the module, as the Dockerfile does."""
    work = Path(tempfile.mkdtemp(prefix="offsession-deploy-"))
    work.chmod(0o755)  # the unprivileged user reaches the venv through it
    installed = Installed(work, work / "venv")
    try:
        started = time.monotonic()
        context, wheels = work / "context", work / "wheels"
        context.mkdir()
        build_context(context)
        # The Dockerfile's `python -m pip wheel --no-deps --wheel-dir /wheels .`
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--wheel-dir",
                str(wheels),
                str(context),
            ]
        )
        (wheel,) = wheels.glob("offsession-*.whl")
        installed.timings["build the wheel"] = time.monotonic() - started

        started = time.monotonic()
        run([base_python(), "-m", "venv", str(installed.venv)])
        pip = [installed.bin("python"), "-m", "pip", "-q", "--disable-pip-version-check"]
        run([*pip, "install", "--require-hashes", "--no-deps", "-r", str(context / "requirements.lock")])
        run([*pip, "install", "--no-deps", str(wheel)])
        run([*pip, "check"])
        installed.timings["install from the lock"] = time.monotonic() - started
        if not as_unprivileged():
            # Not root: the code directory is made read-only for the tests' own user.
            run(["chmod", "-R", "a-w", str(installed.venv)])
        yield installed
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["chmod", "-R", "u+w", str(work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        print("deployment test timings:", {k: round(v, 1) for k, v in installed.timings.items()})


def compose_services(variables: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml rendered by the Compose binary with only these variables (no dev profile)."""
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        **variables,
    }
    result = run(
        [str(COMPOSE), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        env=environment,
        cwd=ROOT,
    )
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


class Deployment:
    """The compose services' commands, started from the installed venv as the unprivileged user."""

    def __init__(self, installed: Installed, variables: dict[str, str], services: dict[str, Any]) -> None:
        self.installed = installed
        self.variables = variables
        self.services = services
        self.run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=installed.work))  # empty, not theirs to write
        self.run_dir.chmod(0o555 if not as_unprivileged() else 0o755)
        self.state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=installed.work))  # beat's schedule
        self.state_dir.chmod(0o755)
        if as_unprivileged():
            os.chown(self.state_dir, as_unprivileged()["user"], as_unprivileged()["group"])
        self.logs = Path(tempfile.mkdtemp(prefix="logs-", dir=installed.work))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def environment(self, service: str) -> dict[str, str]:
        env = {str(k): str(v) for k, v in (self.services[service].get("environment") or {}).items()}
        env.update(
            PATH=f"{self.installed.venv / 'bin'}:/usr/bin:/bin", HOME=str(self.run_dir), LANG="C.UTF-8"
        )
        return env

    def command(self, service: str, web_port: int) -> list[str]:
        argv = [str(word) for word in self.services[service]["command"]]
        substituted: list[str] = []
        for word in argv:
            word = word.replace("0.0.0.0:8000", f"127.0.0.1:{web_port}")
            word = word.replace("/tmp/celerybeat-schedule", str(self.state_dir / "celerybeat-schedule"))
            substituted.append(word)
        if service == "web":
            substituted[substituted.index("-w") + 1] = "2"
        if service in ("worker", "worker-charges"):
            substituted += ["-n", f"{service}@%h"]
        # The executable from the installed venv, found on PATH as in the image.
        return [self.installed.bin(substituted[0]), *substituted[1:]]

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            cwd=self.run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **as_unprivileged(),
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs_tail(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-4000:]}" for name in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def production_variables(**overrides: str) -> dict[str, str]:
    values = {
        "STRIPE_API_KEY": "sk_test_51Deploy" + secrets.token_hex(8),
        "STRIPE_WEBHOOK_SECRET": "whsec_" + secrets.token_hex(16),
        "OFFSESSION_API_TOKEN": secrets.token_urlsafe(32),
        "SECRET_KEY": secrets.token_urlsafe(32),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),  # the compose postgres service's; unused here
        "FLOWER_BASIC_AUTH": "ops:" + secrets.token_urlsafe(12),
    }
    values.update(overrides)
    return values


def wait_until(what: str, check: Any, timeout: float, deployment: Deployment) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        for name, proc in deployment.procs.items():
            if name != "migrate" and proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.2)
    pytest.fail(f"{what}: not after {timeout}s (last: {last})")


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid for {pid}")


def test_the_installed_package_charges_an_invoice_end_to_end(
    installed: Installed, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    web_port, emulator_port = free_port(), free_port()
    with running_smtp_server() as smtp:
        variables = production_variables(
            DATABASE_URL=postgres_server.create_database("deploy"),
            CELERY_BROKER_URL=f"{redis_server.url}/10",
            REDIS_URL=f"{redis_server.url}/11",
            STRIPE_API_BASE=f"http://127.0.0.1:{emulator_port}",
            PUBLIC_BASE_URL=f"http://127.0.0.1:{web_port}",
            MAIL_URL=f"smtp://127.0.0.1:{smtp.port}?from=billing%40example.com",
        )
        deployment = Deployment(installed, variables, compose_services(variables))
        try:
            charge_through(deployment, web_port, emulator_port, smtp)
        except BaseException:
            sys.stderr.write(deployment.logs_tail())  # pytest shows it with the failure
            raise
        finally:
            deployment.stop()


def charge_through(deployment: Deployment, web_port: int, emulator_port: int, smtp: SmtpServer) -> None:
    variables, installed = deployment.variables, deployment.installed
    started = time.monotonic()
    # The code is the wheel's, not this checkout's.
    where = run(
        [installed.bin("python"), "-c", "import shared, web, worker; print(shared.__file__)"],
        cwd=deployment.run_dir,
        env=deployment.environment("migrate"),
        **as_unprivileged(),
    ).stdout.strip()
    assert where.startswith(str(installed.venv)), where

    migrate = deployment.start(
        "migrate", deployment.command("migrate", web_port), deployment.environment("migrate")
    )
    assert migrate.wait(120) == 0, deployment.log("migrate")
    assert "database at head" in deployment.log("migrate")

    # Stripe's stand-in, reached through STRIPE_API_BASE and signing with the endpoint's own secret.
    deployment.start(
        "emulator",
        [
            installed.bin("offsession"),
            "emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(emulator_port),
            "--webhook-url",
            f"http://127.0.0.1:{web_port}/webhooks/stripe",
            "--webhook-secret",
            variables["STRIPE_WEBHOOK_SECRET"],
            "--api-key",
            variables["STRIPE_API_KEY"],
        ],
        {"PATH": f"{installed.venv / 'bin'}:/usr/bin:/bin", "HOME": str(deployment.run_dir)},
    )
    for service in ("web", "worker", "worker-charges", "beat"):
        deployment.start(service, deployment.command(service, web_port), deployment.environment(service))
    wait_for_port(emulator_port, 30)
    base, token = f"http://127.0.0.1:{web_port}", variables["OFFSESSION_API_TOKEN"]
    auth = {"Authorization": f"Bearer {token}"}

    def healthy() -> Any:
        if not port_open(web_port):
            return None
        answer = http("GET", base + "/healthz", timeout=5)
        return answer if answer[0] == 200 else None

    health = wait_until("/healthz answers 200", healthy, 60, deployment)
    assert health[1] == {"database": "ok", "broker": "ok"}
    status, metrics = http("GET", base + "/metrics", headers=auth)
    assert status == 200 and "offsession_charge_attempts" in metrics
    # Templates and static files (the vendored CSS too) come from the wheel.
    status, page = http("GET", base + "/admin/login")
    assert status == 200 and "pico.min.css" in page
    assert http("GET", base + "/static/vendor/pico/pico.min.css")[0] == 200
    for asset in ("charts.js", "vendor/chartjs/chart.umd.min.js", "vendor/swagger-ui/swagger-ui-bundle.js"):
        assert http("GET", f"{base}/static/{asset}")[0] == 200, asset
    deployment_ready = time.monotonic() - started

    # Connect, a client with a card, an invoice, and the charge.
    status, body = http(
        "PUT", base + "/api/settings", {"stripe_connected": True, "online_card_payments_enabled": True}, auth
    )
    assert status == 200, body
    status, client = http(
        "POST", base + "/api/clients", {"name": "Deployed Client", "email": "paying@example.com"}, auth
    )
    assert status == 201, client
    status, card = http(
        "POST", f"{base}/api/clients/{client['id']}/cards", {"payment_method": "pm_card_visa"}, auth
    )
    assert status == 201, card
    status, invoice = http(
        "POST",
        base + "/api/invoices",
        {
            "client_id": client["id"],
            "number": "DEPLOY-1",
            "currency": "eur",
            "total": 4_200,
            "due_date": "2026-11-01",
            "payment_method": "online_card",
            "auto_charge": False,
        },
        auth,
    )
    assert status == 201, invoice
    status, charge = http("POST", f"{base}/api/invoices/{invoice['id']}/charges", {}, auth)
    assert status == 202 and charge["status"] == "queued", charge

    def settled() -> Any:
        answer = http("GET", f"{base}/api/charges/{charge['id']}", headers=auth)[1]
        return (
            answer if answer.get("status") in ("succeeded", "failed", "requires_action", "canceled") else None
        )

    final = wait_until("the charge settles", settled, 60, deployment)
    assert final["status"] == "succeeded" and final["payment_intent_id"].startswith("pi_"), final
    status, paid = http("GET", f"{base}/api/invoices/{invoice['id']}", headers=auth)
    assert (paid["status"], paid["amount_paid"], paid["amount_due"]) == ("paid", 4_200, 0), paid

    # Stripe's webhook, signed with the configured secret, stored and applied by the worker.
    engine = create_engine(variables["DATABASE_URL"])
    try:

        def webhook_applied() -> bool:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        text(
                            "select count(*) from webhook_event where type = 'payment_intent.succeeded' "
                            "and processed_at is not null"
                        )
                    ).scalar_one()
                )

        wait_until("the payment_intent.succeeded webhook is applied", webhook_applied, 60, deployment)
    finally:
        engine.dispose()
    # The receipt went out through MAIL_URL.
    receipt = wait_until(
        "the receipt reaches MAIL_URL",
        lambda: [m for m in smtp.received if "paying@example.com" in m.rcpt_to],
        60,
        deployment,
    )
    assert receipt[0].mail_from == "billing@example.com"
    # Beat runs its schedule (the outbox relay every 5 s) and keeps its file where it was told.
    wait_until(
        "beat sends the outbox relay", lambda: "relay-outbox" in deployment.log("beat"), 30, deployment
    )
    # (shelve adds a suffix with some dbm backends: Debian's Python without gdbm writes a .db file)
    assert list(deployment.state_dir.glob("celerybeat-schedule*"))
    charged = time.monotonic() - started

    for name, proc in deployment.procs.items():
        if name != "migrate":
            assert proc.poll() is None, f"{name} stopped\n{deployment.log(name)[-3000:]}"
            if as_unprivileged():
                assert uid_of(proc.pid) == as_unprivileged()["user"], name
    # Nothing written where the processes run: no var/, no .env read or written, no stray files.
    assert list(deployment.run_dir.iterdir()) == []
    for name in ("web", "worker", "worker-charges", "beat", "migrate"):
        assert "Traceback" not in deployment.log(name), f"{name}:\n{deployment.log(name)[-3000:]}"
    installed.timings["processes up, /healthz 200"] = deployment_ready
    installed.timings["charged, webhook applied, receipt sent"] = charged


def port_open(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.3):
        return True
    return False


@pytest.mark.parametrize("service", ["web", "worker", "beat", "migrate"])
def test_the_installed_processes_refuse_the_emulator_s_webhook_secret(
    installed: Installed, service: str
) -> None:
    """As installed, too (tests/integration/test_refusals.py has every refusal from the checkout)."""
    variables = production_variables(
        DATABASE_URL="postgresql+psycopg://offsession@127.0.0.1:9/offsession",
        PUBLIC_BASE_URL="https://pay.example.com",
        MAIL_URL="smtp://127.0.0.1:9",
        STRIPE_WEBHOOK_SECRET="whsec_placeholder",
    )
    deployment = Deployment(installed, variables, compose_services(variables))
    env = deployment.environment(service)
    env["STRIPE_WEBHOOK_SECRET"] = "whsec_emulator"
    result = subprocess.run(
        deployment.command(service, free_port()),
        cwd=deployment.run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        **as_unprivileged(),
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if "STRIPE_WEBHOOK_SECRET" in line]
    assert line.startswith("offsession: STRIPE_WEBHOOK_SECRET")
