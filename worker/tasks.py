"""Celery tasks: load ids, call shared/, publish what shared/ asks for. No domain logic here."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from celery import shared_task

from shared.bootstrap import Runtime
from shared.domain.payments import TransientStripeError
from shared.log_context import log_context
from shared.services import outbox
from shared.services.batch import open_due_retries, run_batch, slot_for
from shared.services.charge_batches import charges_per_message, run_attempts
from shared.services.charging import RunReport, RunResult, run_attempt
from shared.services.daily_reconciliation import (
    TASK_RECONCILE_DAY,
    days_to_retry,
    parse_day,
    reconcile_day,
    yesterday_utc,
)
from shared.services.disputes import TASK_NOTIFY_DISPUTE, deliver_dispute_notification
from shared.services.janitor import recover_charges, run_janitor
from shared.services.notifications import (
    deliver_charge_notification,
    deliver_login_link,
    deliver_refund_receipt,
)
from shared.services.ports import Publisher, RateBudgetTimeout, RateBudgetUnavailable
from shared.services.reconciliation_records import DayReport
from shared.services.refunds import TASK_NOTIFY_REFUND, TASK_RUN_REFUND, run_refund
from shared.services.webhook_drain import IN_FLIGHT_HOLD_SECONDS, drain_events
from shared.services.webhooks import TASK_DRAIN_WEBHOOK_EVENTS, process_event

log = logging.getLogger(__name__)


def runtime() -> Runtime:
    """The process's Runtime (built in worker/__init__.py)."""
    import worker

    return worker.runtime


def publish(task_name: str, payload: dict[str, Any], countdown: float | None) -> None:
    runtime().publisher(task_name, payload, countdown)


@shared_task(name=outbox.TASK_CHARGE_ATTEMPT, acks_late=True)
def charge_attempt(attempt_id: str) -> str:
    """One charge: a click's, a retry's, or a message sent before charges were grouped."""
    rt = runtime()
    report = run_attempt(
        rt.sessions,
        rt.gateway,
        attempt_id,
        lease_seconds=rt.config.charge_lease_seconds,
        max_transient_retries=rt.config.charge_transient_retries,
        leases=rt.lease_keeper,
    )
    _follow_up(attempt_id, report)
    # The line that says how the attempt settled; it carries the invoice, attempt, PaymentIntent and
    # request ids bound while the task ran (worker.log_setup, shared.services.charging).
    _log_settled(attempt_id, report)
    return report.status or report.result.value


@shared_task(name=outbox.TASK_CHARGE_ATTEMPTS, acks_late=True)
def charge_attempts(attempt_ids: list[str]) -> str:
    """Several charges of the batch (shared.services.charge_batches): a line per charge, one for all."""
    rt = runtime()
    reports = run_attempts(
        rt.sessions,
        rt.gateway,
        attempt_ids,
        lease_seconds=rt.config.charge_lease_seconds,
        max_transient_retries=rt.config.charge_transient_retries,
        leases=rt.lease_keeper,
    )
    for attempt_id, report in reports.items():
        _follow_up(attempt_id, report)
        with log_context(
            charge_attempt_id=attempt_id,
            invoice_id=report.invoice_id,
            payment_intent_id=report.payment_intent_id,
        ):
            _log_settled(attempt_id, report)
    summary = ", ".join(
        f"{n} {result}" for result, n in sorted(Counter(r.result.value for r in reports.values()).items())
    )
    log.info("charges: %d in this message: %s", len(attempt_ids), summary)
    return summary


def _follow_up(attempt_id: str, report: RunReport) -> None:
    retry = report.retry_message_id
    if report.result is RunResult.RETRY_SCHEDULED and retry is not None and report.retry_countdown:
        # A short wait rides on a countdown; a long one waits in the outbox for the relay.
        outbox.publish_messages(runtime().sessions, _with_countdown(report.retry_countdown), [retry])
    elif report.result is RunResult.HELD and report.retry_countdown:
        # A redelivery (its worker process was lost) found the lease not yet lapsed: look again when it
        # would have, and take over then if nobody renewed it. A lost look-again leaves it to the sweep.
        try:
            publish(outbox.TASK_CHARGE_ATTEMPT, {"attempt_id": attempt_id}, report.retry_countdown)
        except Exception as exc:
            log.warning("charge %s: no look-again published (%s); the recovery sweep has it", attempt_id, exc)


def _log_settled(attempt_id: str, report: RunReport) -> None:
    log.info(
        "charge %s: %s (%s)",
        attempt_id,
        report.result.value,
        report.status,
        extra={"result": report.result.value, "status": report.status},
    )


def _with_countdown(countdown: float) -> Publisher:
    def send(task_name: str, payload: dict[str, Any], _ignored: float | None) -> None:
        publish(task_name, payload, countdown)

    return send


@shared_task(
    name=outbox.TASK_PROCESS_WEBHOOK_EVENT,
    acks_late=True,
    bind=True,
    autoretry_for=(TransientStripeError, RateBudgetTimeout, RateBudgetUnavailable),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
)
def process_webhook_event(self: Any, event_id: int) -> str:
    outcome = process_event(runtime().sessions, runtime().gateway, event_id)
    log.info("webhook event row %s: %s", event_id, outcome)
    return outcome


# A drain that left events in error is followed by another after this long (transient Stripe errors,
# an exhausted rate budget); a poison event is given up after MAX_PROCESSING_ATTEMPTS drains.
DRAIN_RETRY_COUNTDOWN_SECONDS = 5.0


@shared_task(name=TASK_DRAIN_WEBHOOK_EVENTS, acks_late=True)
def drain_webhook_events() -> str:
    """Every stored event with work, one message for a burst of them
    (shared.services.webhooks.drain_events)."""
    requests = runtime().drain_requests
    requests.clear()  # before the first look at the table: see DrainRequests on the race

    def recruit_helper() -> None:
        try:
            requests.request(lambda: publish(TASK_DRAIN_WEBHOOK_EVENTS, {}, None))
        except Exception as exc:  # a helper only speeds the drain up
            log.warning("no helper drain published: %s", exc)

    report = drain_events(
        runtime().sessions,
        runtime().gateway,
        on_full_batch=recruit_helper if requests.coalescing else None,
        hold_in_flight=IN_FLIGHT_HOLD_SECONDS,
    )
    if report.failed:
        publish(TASK_DRAIN_WEBHOOK_EVENTS, {}, DRAIN_RETRY_COUNTDOWN_SECONDS)
    elif report.held:
        publish(TASK_DRAIN_WEBHOOK_EVENTS, {}, IN_FLIGHT_HOLD_SECONDS)
    summary = (
        f"{report.outcomes} event(s) processed, {report.repeats} repeating their attempt's outcome, "
        f"{len(report.held)} held while their charge is processing, {len(report.failed)} failed"
    )
    log.info("webhook drain: %s", summary)
    return summary


@shared_task(name="offsession.charge_due", acks_late=True)
def charge_due() -> str:
    """The scheduled fan-out. The slot is the minute beat fired: a second beat for it charges nothing."""
    rt = runtime()
    now = datetime.now(UTC)
    report = run_batch(
        rt.unit_of_work,
        slot=slot_for(now),
        trigger="schedule",
        today=now.astimezone(rt.config.batch_zone()).date(),
        now=now,
        per_message=charges_per_message(rt.config.stripe_rate_limit),
    )
    if report.already_ran:
        return "slot already ran"
    return f"batch {report.batch_run_id}: {report.selected} selected, {report.queued} queued"


@shared_task(name="offsession.open_due_retries", acks_late=True)
def open_due_retries_task() -> int:
    rt = runtime()
    return open_due_retries(
        rt.sessions, rt.unit_of_work, per_message=charges_per_message(rt.config.stripe_rate_limit)
    )


@shared_task(name=outbox.TASK_NOTIFY_CHARGE, acks_late=True)
def notify_charge(attempt_id: str, kind: str) -> bool:
    rt = runtime()
    return deliver_charge_notification(rt.sessions, rt.config, rt.mailer, attempt_id, kind)


@shared_task(name=TASK_RUN_REFUND, acks_late=True)
def run_refund_task(refund_id: str) -> str:
    """Make a requested refund at Stripe under its key (shared.services.refunds.run_refund); a retry is
    an outbox row the relay publishes when due, a worker lost midway is the janitor's."""
    outcome = run_refund(runtime().sessions, runtime().gateway, refund_id)
    log.info("refund %s", outcome)
    return outcome


@shared_task(name=TASK_NOTIFY_REFUND, acks_late=True)
def notify_refund(refund_id: str) -> bool:
    rt = runtime()
    return deliver_refund_receipt(rt.sessions, rt.mailer, refund_id)


@shared_task(name=TASK_NOTIFY_DISPUTE, acks_late=True)
def notify_dispute(dispute_id: int) -> int:
    rt = runtime()
    return deliver_dispute_notification(rt.sessions, rt.config, rt.mailer, dispute_id)


@shared_task(
    name=outbox.TASK_SEND_LOGIN_LINK,
    acks_late=True,
    # The mail server down or refusing (smtplib's errors are OSErrors): again later, with a new link.
    autoretry_for=(OSError,),
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=6,
)
def send_login_link(email: str, request_id: str) -> bool:
    """A Client Zone sign-in email (shared.services.client_links.request_login_link). Its result says only
    whether
    an email went out: the link's token is never in a task's arguments, result or log line."""
    rt = runtime()
    return deliver_login_link(rt.sessions, rt.config, rt.mailer, email=email, request_id=request_id)


@shared_task(name="offsession.relay_outbox", acks_late=True)
def relay_outbox() -> int:
    return outbox.relay_outbox(runtime().sessions, publish)


@shared_task(name="offsession.recover_charges", acks_late=True)
def recover_charges_task() -> str:
    report = recover_charges(runtime().sessions, runtime().gateway, publish)
    if report.anything:
        log.info("charge recovery: %s", report.summary())
    return report.summary()


@shared_task(name="offsession.janitor", acks_late=True)
def janitor() -> str:
    report = run_janitor(runtime().sessions, runtime().gateway, publish)
    log.info("janitor: %s", report.summary())
    return report.summary()


@shared_task(name=TASK_RECONCILE_DAY, acks_late=True)
def reconcile_day_task(day: str | None = None, trigger: str = "schedule") -> str:
    """The daily reconciliation against Stripe: yesterday (UTC) from beat, or the YYYY-MM-DD given (the
    admin's "Reconcile now"). From beat it also takes again the days of the past week whose run
    stopped on an error. Safe to run twice: a day's findings are recorded once."""
    factory, gateway = runtime().sessions, runtime().gateway
    days = [parse_day(day)] if day else [yesterday_utc()]
    if day is None:
        with factory() as session:
            days = days_to_retry(session, before=days[0]) + days
    summaries = [_reconciliation_summary(reconcile_day(factory, gateway, d, trigger=trigger)) for d in days]
    return " | ".join(summaries)


def _reconciliation_summary(report: DayReport) -> str:
    log.info("reconciliation of %s: %s", report.day, report.summary())
    if report.out_of_step:
        log.warning("reconciliation of %s found money out of step: see /admin/reconciliation", report.day)
    return f"{report.day}: {report.summary()}"
