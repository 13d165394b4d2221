"""The `offsession` command (console script): an entry point like web/ and worker/.
It imports shared/ (its Runtime from shared.bootstrap), never web/ or worker/.

Errors print one clear line on stderr and exit 2.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import click

from shared.bootstrap import Runtime, bootstrap
from shared.config import EMULATOR_API_BASE, ConfigError, var_dir


class CommandError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:  # type: ignore[no-untyped-def]
        click.echo(f"offsession: {self.format_message()}", err=True)


@click.group(help="Offsession: off-session card charges for invoices.")
@click.pass_context
def main(ctx: click.Context) -> None:
    if ctx.invoked_subcommand == "emulator":
        return  # a stand-in for Stripe, not the product: it reads none of the product's configuration
    try:
        ctx.obj = bootstrap()
    except ConfigError as exc:
        raise CommandError(str(exc)) from exc
    ctx.call_on_close(ctx.obj.close)


def runtime() -> Runtime:
    """The command's Runtime (shared.bootstrap), built by `main` from the environment."""
    rt: Runtime = click.get_current_context().find_root().obj
    return rt


@main.group(help="Database schema.")
def db() -> None:
    pass


@db.command("upgrade", help="Apply every migration (creates the database when missing).")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    from shared.adapters.migrate import upgrade

    try:
        upgrade(runtime().config.database_url, revision)
    except Exception as exc:  # one clear line instead of a traceback
        raise CommandError(f"migration failed: {exc}") from exc
    click.echo(f"database at {revision}: {_redact(runtime().config.database_url)}")


# ignore_unknown_options: "-1" is a revision, not an option.
@db.command(
    "downgrade",
    help="Undo migrations down to REVISION (e.g. 0006, or -1 for the last one).",
    context_settings={"ignore_unknown_options": True},
)
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    from shared.adapters.migrate import downgrade

    try:
        downgrade(runtime().config.database_url, revision)
    except Exception as exc:  # one clear line instead of a traceback
        raise CommandError(f"downgrade failed: {exc}") from exc
    click.echo(f"database at {revision}: {_redact(runtime().config.database_url)}")


@main.command("create-admin", help="Create an admin (or set a new password for an existing one).")
@click.argument("email")
@click.option("--password", help="Prompted for when omitted.")
def create_admin(email: str, password: str | None) -> None:
    from shared.adapters.database import session_scope
    from shared.services.admins import AdminError
    from shared.services.admins import create_admin as create

    if password is None:
        if not sys.stdin.isatty():
            raise CommandError("no --password given and no terminal to ask for one")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the passwords differ")
    try:
        with session_scope(runtime().sessions) as session:
            admin = create(session, email, password)
            address = admin.email
    except AdminError as exc:
        raise CommandError(str(exc)) from exc
    click.echo(f"admin {address} can sign in at {runtime().config.public_base_url}/admin/login")


@main.command(
    "set-client-email",
    help="Give client CLIENT_ID the email EMAIL. Emails are unique (the Client Zone signs in by email): "
    "this is how to part two clients that share one, before or after `db upgrade`.",
)
@click.argument("client_id", type=int)
@click.argument("email")
def set_client_email(client_id: int, email: str) -> None:
    from shared.adapters.database import session_scope
    from shared.services.clients import ClientError, NotFound, change_email

    try:
        with session_scope(runtime().sessions) as session:
            address = change_email(session, client_id, email, actor="cli")
    except (ClientError, NotFound) as exc:
        raise CommandError(str(exc)) from exc
    click.echo(f"client {client_id} now has the email {address}")


@main.command("seed-demo", help="Demo clients, cards and invoices; running it again changes nothing.")
def seed_demo() -> None:
    from shared.adapters.stripe_gateway import gateway_from_config
    from shared.domain.payments import GatewayError
    from shared.services.seed import SeedRefused
    from shared.services.seed import seed_demo as seed

    config = runtime().config
    try:
        with _emulator_for_seeding():
            report = seed(runtime().sessions, gateway_from_config(config), var_dir())
    except SeedRefused as exc:
        raise CommandError(str(exc)) from exc
    except GatewayError as exc:
        raise CommandError(f"Stripe refused the demo data: {exc}") from exc
    click.echo(
        f"demo data: {report.clients_created} clients, {report.cards_added} cards and "
        f"{report.invoices_created} invoices created (existing ones kept)"
    )
    click.echo(f"demo admin: {report.admin_email} / {report.admin_password}")


@main.command(
    "reconcile",
    help="Run the janitor once: settle stale charges, re-drive webhooks, relay. With --day, reconcile "
    "that UTC day's PaymentIntents against Stripe instead.",
)
@click.option("--day", "day_text", metavar="YYYY-MM-DD", help="A UTC day to reconcile against Stripe.")
def reconcile(day_text: str | None) -> None:
    from shared.services.janitor import run_janitor

    if day_text is not None:
        _reconcile_day(day_text)
        return
    rt = runtime()
    report = run_janitor(rt.sessions, rt.gateway, rt.publisher)
    click.echo(report.summary())
    if report.still_unknown or report.flagged_for_operator:
        click.echo("some charges still need attention: see GET /api/charges?status=unknown", err=True)


def _reconcile_day(day_text: str) -> None:
    from shared.adapters.database import session_scope
    from shared.domain.money import format_money
    from shared.services.daily_reconciliation import ReconciliationError, parse_day, reconcile_day
    from shared.services.reconciliation_records import day_findings

    try:
        day = parse_day(day_text)
        report = reconcile_day(runtime().sessions, runtime().gateway, day, trigger="cli")
    except ReconciliationError as exc:
        raise CommandError(str(exc)) from exc
    click.echo(f"reconciliation of {day} (UTC) against Stripe")
    if not report.accounts:
        click.echo("no Stripe account to reconcile: Stripe is not connected and nothing was charged that day")
        return
    click.echo(
        f"  {'account':<24} {'listed':>7} {'matched':>8} {'repaired':>9} {'orphans':>8} {'missing':>8}"
    )
    for account in report.accounts:
        click.echo(
            f"  {account.account_label:<24} {account.listed:>7} {account.matched:>8} {account.repaired:>9} "
            f"{account.orphans:>8} {account.missing:>8}"
            + (f"  error: {account.error}" if account.error else "")
        )
    with session_scope(runtime().sessions) as session:
        for finding in day_findings(session, day):
            amount = (
                format_money(finding.amount, finding.currency) if finding.currency else str(finding.amount)
            )
            click.echo(
                f"  {finding.kind:<9} {finding.payment_intent_id:<30} {amount:>14}"
                f"  {finding.stripe_account or 'platform'}"
            )
    click.echo(f"new findings: {sum(a.new_findings for a in report.accounts)}")
    if report.failed:
        raise CommandError(
            "could not reconcile "
            + ", ".join(f"{a.account_label} ({a.error})" for a in report.failed)
            + "; run it again later"
        )


@main.command("charge-due", help="Charge every due invoice set to auto-charge now (as the schedule does).")
@click.option("--dry-run", is_flag=True, help="Only show what would be charged; charge nothing.")
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Follow the charges until they settle."
)
def charge_due(dry_run: bool, wait: bool) -> None:
    from datetime import UTC, datetime

    from shared.adapters.database import session_scope
    from shared.domain.money import format_money
    from shared.domain.states import SETTLED
    from shared.services.batch import dry_run as preview
    from shared.services.batch import outcome_counts, run_batch
    from shared.services.charge_batches import charges_per_message

    config = runtime().config
    now = datetime.now(UTC)
    today = now.astimezone(config.batch_zone()).date()
    factory = runtime().sessions
    if dry_run:
        plan = preview(factory, today=today, now=now)
        totals = (
            ", ".join(format_money(amount, cur) for cur, amount in sorted(plan.totals.items())) or "nothing"
        )
        click.echo(f"would charge {plan.count} invoices due by {today}: {totals}")
        for number, client, amount, currency in plan.first_rows:
            click.echo(f"  {number:<16} {client[:30]:<30} {format_money(amount, currency):>14}")
        if plan.count > len(plan.first_rows):
            click.echo(f"  ... and {plan.count - len(plan.first_rows)} more")
        if plan.skipped:
            click.echo("skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(plan.skipped.items())))
        click.echo("dry run: nothing was charged")
        return
    report = run_batch(
        runtime().unit_of_work,
        slot=f"cli:{now.isoformat()}",
        trigger="cli",
        today=today,
        now=now,
        per_message=charges_per_message(runtime().config.stripe_rate_limit),
    )
    assert report.batch_run_id is not None
    click.echo(
        f"batch {report.batch_run_id}: {report.selected} due, {report.queued} queued, "
        f"{sum(report.skipped.values())} skipped"
    )
    if not wait or not report.queued:
        return
    final = {status.value for status in SETTLED}
    with click.progressbar(length=report.queued, label="charging", show_pos=True) as bar:
        settled = 0
        deadline = time.monotonic() + max(120.0, report.queued / 2)
        while settled < report.queued and time.monotonic() < deadline:
            time.sleep(0.5)
            with session_scope(runtime().sessions) as session:
                counts = outcome_counts(session, report.batch_run_id)
            now_settled = sum(n for status, n in counts.items() if status in final)
            bar.update(now_settled - settled)
            settled = now_settled
    click.echo(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))


@main.command(
    "emulator",
    help="Run the Stripe emulator (options: python -m stripe_emulator --help).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def emulator(args: tuple[str, ...]) -> None:
    # A separate program reached over HTTP, like Stripe: run it, do not import it.
    os.execv(sys.executable, [sys.executable, "-m", "stripe_emulator", *args])


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def _emulator_for_seeding() -> Iterator[None]:
    """With the embedded defaults and no emulator running, run one just for the seeding.

    It keeps its state in the same file as the emulator `make run` starts, so the demo's Stripe
    customers and cards are still there when the real one comes up.
    """
    config = runtime().config
    if config.stripe_api_base != EMULATOR_API_BASE:
        yield
        return
    parts = urlsplit(EMULATOR_API_BASE)
    host, port = parts.hostname or "127.0.0.1", parts.port or 12111
    if _port_open(host, port):
        yield
        return
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stripe_emulator",
            "--host",
            host,
            "--port",
            str(port),
            "--state-file",
            str(var_dir() / "emulator-state.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _port_open(host, port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise CommandError("could not start the Stripe emulator for the demo data")
            time.sleep(0.1)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


if __name__ == "__main__":
    main()
