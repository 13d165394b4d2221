"""Throughput of the Stripe emulator: off-session PaymentIntent creations per second.

The unmodified stripe SDK (8 threads sharing one StripeClient, keep-alive, like
shared checks/emu_sdk.py) creates and confirms PaymentIntents against an emulator started as its own
process with zero latency configured. Each scenario is one row of the table.

    .venv/bin/python bench/bench_emulator.py                # start emulators, all scenarios
    .venv/bin/python bench/bench_emulator.py --base http://127.0.0.1:12111   # an emulator already running
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stripe

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk_test_emulator"
# A webhook receiver in its own process answering 200, so delivery costs land where they would in use.
_RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@dataclass
class Result:
    scenario: str
    creations: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float | None

    @property
    def rate(self) -> float:
        return self.creations / self.seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (Linux /proc), to show what the server itself spends."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def emulator(webhook: str | None) -> Iterator[tuple[str, int]]:
    """An emulator process; ``webhook`` is None, "unreachable" or "receiver"."""
    port = free_port()
    args = [sys.executable, "-m", "stripe_emulator", "--port", str(port)]
    if webhook == "unreachable":
        args += ["--webhook-url", "http://127.0.0.1:9/none"]  # what the outside smoke check passes
    if webhook == "receiver":
        hook_port = free_port()
        with (
            process([sys.executable, "-c", _RECEIVER, str(hook_port)], hook_port),
            process([*args, "--webhook-url", f"http://127.0.0.1:{hook_port}/hook"], port) as emu,
        ):
            yield f"http://127.0.0.1:{port}", emu.pid
        return
    with process(args, port) as emu:
        yield f"http://127.0.0.1:{port}", emu.pid


def run(scenario: str, base: str, pid: int | None, creations: int, threads: int) -> Result:
    client = stripe.StripeClient(KEY, base_addresses={"api": base}, max_network_retries=0)
    customers: list[tuple[Any, Any]] = []
    for _ in range(threads):
        cus = client.v1.customers.create({"email": "bench@example.com"})
        pm = client.v1.payment_methods.attach("pm_card_visa", {"customer": cus.id})
        client.v1.customers.update(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
        customers.append((cus, pm))

    def create(i: int) -> float:
        cus, pm = customers[i % threads]
        started = time.perf_counter()
        pi = client.v1.payment_intents.create(
            {
                "amount": 1234,
                "currency": "usd",
                "customer": cus.id,
                "payment_method": pm.id,
                "off_session": True,
                "confirm": True,
                "allowed_payment_method_types": ["card"],
                "metadata": {"invoice_id": f"inv_{i}", "charge_attempt_id": f"att_{i}"},
            },
            options={"idempotency_key": str(uuid.uuid4())},
        )
        if pi.status != "succeeded":
            raise RuntimeError(f"PaymentIntent {pi.id} is {pi.status}")
        return (time.perf_counter() - started) * 1000

    with cf.ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(threads * 8)))  # warm up connections and code paths
        cpu_before = cpu_seconds(pid) if pid else None
        started = time.perf_counter()
        latencies = list(pool.map(create, range(creations)))
        seconds = time.perf_counter() - started
        cpu_after = cpu_seconds(pid) if pid else None
    server_cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return Result(scenario, creations, seconds, latencies, server_cpu)


def table(results: list[Result], threads: int) -> str:
    head = (
        f"{'scenario':<28} {'PIs':>5} {'seconds':>8} {'PI/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'server ms/PI':>12}"
    )
    lines = [
        f"PaymentIntent create+confirm (off_session, pm_card_visa), {threads} SDK threads, "
        f"{os.cpu_count()} CPUs, latency 0",
        head,
        "-" * len(head),
    ]
    for r in results:
        p95 = statistics.quantiles(r.latencies_ms, n=20)[-1]
        server = f"{r.server_cpu_s / r.creations * 1000:.2f}" if r.server_cpu_s is not None else "-"
        lines.append(
            f"{r.scenario:<28} {r.creations:>5} {r.seconds:>8.2f} {r.rate:>7.0f} "
            f"{statistics.median(r.latencies_ms):>7.1f} {p95:>7.1f} {server:>12}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="an emulator already running (else one is started per scenario)")
    parser.add_argument("-n", "--creations", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--min-rate", type=float, default=200.0, help="exit 1 below this many PI/s")
    args = parser.parse_args(argv)
    results: list[Result] = []
    if args.base:
        results.append(run("given emulator", args.base.rstrip("/"), None, args.creations, args.threads))
    else:
        for scenario, webhook in (
            ("no webhook url", None),
            ("webhook url unreachable", "unreachable"),
            ("webhook to a 200 receiver", "receiver"),
        ):
            with emulator(webhook) as (base, pid):
                results.append(run(scenario, base, pid, args.creations, args.threads))
    print(table(results, args.threads))
    slowest = min(r.rate for r in results)
    return 0 if slowest >= args.min_rate else 1


if __name__ == "__main__":
    sys.exit(main())
