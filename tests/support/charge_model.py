"""A stateful model of the charge path: every rule a person, a schedule, a worker or Stripe can fire,
over the real domain code, a real database and FakeStripe, with the exactly-once invariants checked
after every step (hypothesis's rule-based state machines).

The product runs as it does in production, except that
- Stripe is tests/support/fake_stripe.py (faults, lost answers, crashes, late and repeated events);
- time is a FakeClock, read wherever the product reads it (PRODUCT_CLOCK: shared.domain.models.base.utcnow's
  `datetime`, which every module's utcnow() and every column default go through);
- the worker processes are simulated in this process: each has a lease-holder name of its own
  (PRODUCT_LEASE_OWNER), and a crash is a BaseException that no handler of the product catches;
- the broker is a list: messages are taken in any order, again after a crash (acks_late), and twice.

Races run on real concurrent sessions (`Interleaver`, tests/support/explore_world.py): one operation is
paused before one of its SQL statements (hypothesis picks which) while the other runs; on PostgreSQL the
second waits on whatever row lock the first holds, on SQLite on the database's write lock, as in
production. The invariants read the database through one snapshot per committed change (World.snapshot).

A charge waiting for the client's authentication whose card the client removes stays waiting, on
purpose: Stripe refuses to confirm its PaymentIntent again with the detached card, but an authentication
already begun at the bank may still complete it, so the product does not cancel it under the client. It
ends when the client completes it, the admin cancels it, or its authentication expires (the janitor);
until then the invoice shows awaiting_client_authentication
(tests/shared/services/test_waiting_charge_card_removed.py).

tests/shared/services/test_charge_exploration.py runs the model within `make test`'s budget; `make
explore` runs it much longer (scripts/explore.sh). A counterexample hypothesis finds is kept there as a
regular test.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

import shared.domain.models.base
from shared.adapters.database import UnitOfWork
from shared.adapters.secret_box import FernetSecretBox
from shared.domain import ledger
from shared.domain.binding import Mismatch
from shared.domain.models import Card, ChargeAttempt, Client, Invoice, Payment, Settings
from shared.domain.payments import GatewayError
from shared.domain.states import AttemptStatus
from shared.services import (
    batch,
    charge_actions,
    charge_requests,
    charging,
    clients,
    invoices,
    janitor,
    leases,
    outbox,
    payments,
    stripe_connection,
    webhooks,
)
from shared.services.dunning import retry_policy
from shared.services.settings import SettingsError, update_settings
from tests.support.explore_world import Interleaver, World
from tests.support.fake_stripe import FakeClock, FakeStripe, FakeStripeServer, RequestRecord, WorkerCrashed

S = AttemptStatus
LEASE_SECONDS = 15.0
MAX_TRANSIENT_RETRIES = 2
WEBHOOK_SECRET = "whsec_explore"
CONNECTED_ACCOUNT = "acct_1Explore"
SECRET_BOX = FernetSecretBox("explore-secret-key-" + "x" * 32)
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
CHARGE_CREATE = "create_offsession_payment_intent"
CREATES = "/v1/payment_intents"
# How many explored sequences reached each outcome (printed by the exploration test).
REACHED: Counter[str] = Counter()

# Where the product reads the time and names a lease holder: what the model patches. Kept here, in one
# place, for when the modules move.
PRODUCT_CLOCK = (shared.domain.models.base, "datetime")
PRODUCT_LEASE_OWNER = ((leases, "process_owner"), (charging, "process_owner"))

CARD_TOKENS = (
    "pm_card_visa",
    "pm_card_visa",
    "pm_card_chargeCustomerFail",
    "pm_card_chargeDeclinedInsufficientFunds",
    "pm_card_authenticationRequired",
)
WORKER_FAULTS = (None, None, None, "5xx", "429", "lost", "crash", "crash_before")
STRIPE_FAULTS = (None, None, "5xx", "lost")
CLOCK_JUMPS = (
    timedelta(seconds=3),
    timedelta(seconds=LEASE_SECONDS + 1),
    timedelta(minutes=11),
    timedelta(hours=23, minutes=30),
    timedelta(hours=24, minutes=30),
    timedelta(days=8),
)
# Statuses an attempt may show after each earlier one (the product's own table is not asked: it is under
# test). A final status only ever moves to succeeded, because Stripe's word that money moved wins.
MAY_FOLLOW: dict[str, frozenset[str]] = {
    S.SUCCEEDED: frozenset({S.SUCCEEDED}),
    S.FAILED: frozenset({S.FAILED, S.SUCCEEDED}),
    S.CANCELED: frozenset({S.CANCELED, S.SUCCEEDED}),
}


# ---- the product's clock and lease holders ------------------------------------------------------------


class _Holder(threading.local):
    name = "explore-host/1/worker-1"


HOLDER = _Holder()


@contextlib.contextmanager
def product_time_and_holders(clock: FakeClock) -> Iterator[None]:
    """While open, the product reads `clock` and each thread names its own lease holder (HOLDER.name,
    on a host that is not this one: only the lease's expiry tells a holder is gone)."""

    class ClockDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            moment = clock.now()
            return moment.astimezone(tz) if tz is not None else moment.replace(tzinfo=None)

    module, name = PRODUCT_CLOCK
    saved = [(module, name, getattr(module, name))]
    setattr(module, name, ClockDatetime)
    for owner_module, owner_name in PRODUCT_LEASE_OWNER:
        saved.append((owner_module, owner_name, getattr(owner_module, owner_name)))
        setattr(owner_module, owner_name, lambda: HOLDER.name)
    try:
        yield
    finally:
        for target, attribute, value in reversed(saved):
            setattr(target, attribute, value)


# ---- the broker ---------------------------------------------------------------------------------------


@dataclass
class Message:
    task: str
    payload: dict[str, Any]
    not_before: datetime


# ---- the machine --------------------------------------------------------------------------------------


class ChargeMachine(RuleBasedStateMachine):
    """Subclassed per database by the test that runs it (`world` set on the class)."""

    world: World

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(START, frozen=True)
        self.server = FakeStripeServer(self.clock)
        self.stripe = FakeStripe("sk_test_explore", WEBHOOK_SECRET, server=self.server)
        self.server.on_request = self._on_request
        random.seed(0)  # the product's retry jitter: the same sequence replays the same way
        self.world.reset()
        self.factory = self.world.factory
        self.broker: list[Message] = []
        self.events: list[dict[str, Any]] = []
        self.delivered: list[dict[str, Any]] = []
        self.clients: list[int] = []
        self.invoices: list[int] = []
        self.seen: dict[str, str] = {}
        self.violations: list[str] = []
        self.racing = False
        self.account: str | None = None
        self.slots = 0
        self.workers = 0
        self.janitor_first = False
        self._patches = product_time_and_holders(self.clock)
        self._patches.__enter__()

    # ---- setup ------------------------------------------------------------------------------------

    @initialize(
        connected_account=st.booleans(),
        cards=st.lists(st.sampled_from(CARD_TOKENS), min_size=2, max_size=2),
        totals=st.lists(st.sampled_from((1_000, 2_500, 5_000, 12_345)), min_size=2, max_size=3),
        yen=st.booleans(),
        janitor_first=st.booleans(),
    )
    def setup(
        self, connected_account: bool, cards: list[str], totals: list[int], yen: bool, janitor_first: bool
    ) -> None:
        self.account = CONNECTED_ACCOUNT if connected_account else None
        # Whether, once the rules stop, the janitor finds what crashed before the redelivered messages do.
        self.janitor_first = janitor_first
        with self.factory() as session, session.begin():
            update_settings(session, "admin", stripe_connected=True, stripe_account_id=self.account or "")
        if self.account is not None:
            self.stripe.server.connected_accounts[self.account] = {
                "id": self.account,
                "name": "Explored Ltd",
                "charges_enabled": True,
            }
        # Verified with Stripe as Settings → Connect does (card payments turn on only then); the cards
        # saved next live in that account and mode.
        stripe_connection.connect(
            self.factory,
            self.stripe,
            SECRET_BOX,
            actor="admin",
            public_base_url="https://offsession.example",
            stripe_account=self.account,
        )
        for n, token in enumerate(cards):
            client_id = clients.create_client(
                self.factory, self.stripe, name=f"Client {n}", email=f"client{n}@example.com", actor="admin"
            )
            clients.add_card(self.factory, self.stripe, client_id, token, actor="admin")
            self.clients.append(client_id)
        with self.factory() as session, session.begin():
            for n, total in enumerate(totals):
                currency = "jpy" if yen and n == 0 else "usd"
                invoice = invoices.create_invoice(
                    session,
                    session.get_one(Client, self.clients[n % len(self.clients)]),
                    number=f"E-{n}",
                    currency=currency,
                    total=total,
                    due_date=self.today(),
                    payment_method="online_card",
                    auto_charge=True,
                    actor="admin",
                )
                self.invoices.append(invoice.id)

    def teardown(self) -> None:
        try:
            if not self.violations:
                self.settle()
                self.check_settled()
        finally:
            self._patches.__exit__(None, None, None)

    def today(self) -> date:
        return self.clock.now().date()

    def unit_of_work(self) -> UnitOfWork:
        """What bootstrap's Runtime.unit_of_work is: commits, then publishes to this model's broker."""
        return UnitOfWork(self.world.engine, self.publish)

    def publish(self, task: str, payload: dict[str, Any], countdown: float | None) -> None:
        if task in (outbox.TASK_CHARGE_ATTEMPT, outbox.TASK_PROCESS_WEBHOOK_EVENT):
            self.broker.append(
                Message(task, dict(payload), self.clock.now() + timedelta(seconds=countdown or 0))
            )

    def new_holder(self) -> str:
        self.workers += 1
        return f"explore-host/{1000 + self.workers}/worker-{self.workers}"

    @staticmethod
    def pick(items: list[Any], index: int) -> Any:
        return items[index % len(items)] if items else None

    def attempts(self, *statuses: str) -> list[Row[Any]]:
        """The attempts as committed now, by creation (World.snapshot)."""
        found = self.world.snapshot().attempts
        return [a for a in found if a.status in statuses] if statuses else list(found)

    # ---- the operations (rules and races share them) ---------------------------------------------

    def op_click(self, invoice_index: int, part: int) -> Callable[[], Any]:
        invoice_id = self.pick(self.invoices, invoice_index)

        def click() -> Any:
            if invoice_id is None:
                return None
            try:
                # Committed, then published (the unit of work), as every entry point opens a charge.
                with self.unit_of_work() as uow:
                    invoice = charge_requests.load_invoice_for_charge(uow.session, invoice_id, lock=True)
                    assert invoice is not None
                    due = ledger.balance(invoice).amount_due
                    amount = None if part == 0 or due <= 0 else max(due * part // 4, 1)
                    attempt_id = charge_requests.request_charge(
                        uow, invoice, source="admin", requested_by="admin", amount=amount
                    ).id
            except (charge_requests.NotChargeable, charge_requests.ChargeRequestError) as refused:
                return refused
            return attempt_id

        return click

    def op_pay_manually(self, invoice_index: int, part: int) -> Callable[[], Any]:
        invoice_id = self.pick(self.invoices, invoice_index)

        def pay() -> Any:
            if invoice_id is None:
                return None
            with self.factory() as session:
                try:
                    with session.begin():
                        invoice = charge_requests.load_invoice_for_charge(session, invoice_id, lock=True)
                        assert invoice is not None
                        due = ledger.balance(invoice).amount_due
                        amount = max(due * part // 4, 1) if due > 0 else 1
                        return payments.record_payment(
                            session,
                            invoice,
                            amount=amount,
                            method="bank_transfer",
                            reference="transfer",
                            recorded_by="admin",
                        ).id
                except ledger.LedgerError as refused:
                    return refused

        return pay

    def op_worker(self, message_index: int, fault: str | None, redeliver: bool) -> Callable[[], Any]:
        due = [m for m in self.broker if m.not_before <= self.clock.now()]
        message = self.pick(due, message_index)
        if message is None:
            return lambda: None
        if not redeliver:
            self.broker.remove(message)
        if fault is not None:
            self.server.fail_next(fault, CHARGE_CREATE)  # type: ignore[arg-type]

        def work() -> Any:
            if message.task == outbox.TASK_PROCESS_WEBHOOK_EVENT:
                return webhooks.process_event(self.factory, self.stripe, message.payload["event_id"])
            try:
                report = charging.run_attempt(
                    self.factory,
                    self.stripe,
                    message.payload["attempt_id"],
                    lease_seconds=LEASE_SECONDS,
                    max_transient_retries=MAX_TRANSIENT_RETRIES,
                    now=self.clock.now(),
                )
            except WorkerCrashed:
                if message not in self.broker:
                    self.broker.append(message)  # never acknowledged: the broker hands it out again
                raise
            if report.result is charging.RunResult.RETRY_SCHEDULED and report.retry_message_id is not None:
                if report.retry_countdown:
                    countdown = report.retry_countdown
                    outbox.publish_messages(
                        self.factory,
                        lambda t, p, _c: self.publish(t, p, countdown),
                        [report.retry_message_id],
                    )
            elif report.result is charging.RunResult.HELD and report.retry_countdown:
                self.publish(outbox.TASK_CHARGE_ATTEMPT, dict(message.payload), report.retry_countdown)
            return report

        return work

    def op_janitor(self, quick: bool) -> Callable[[], Any]:
        def sweep() -> Any:
            if quick:
                return janitor.recover_charges(self.factory, self.stripe, self.publish, now=self.clock.now())
            return janitor.run_janitor(self.factory, self.stripe, self.publish, now=self.clock.now())

        return sweep

    def op_deliver(self, event_index: int, again: bool) -> Callable[[], Any]:
        self.events.extend(self.server.take_events())
        pool = self.delivered if again else self.events
        chosen = self.pick(pool, event_index)
        if chosen is None:
            return lambda: None
        if not again:
            self.events.remove(chosen)
            self.delivered.append(chosen)

        def deliver() -> Any:
            body, signature = self.server.signed(chosen, WEBHOOK_SECRET)
            verified = self.stripe.verify_webhook(body, signature)
            with self.factory() as session, session.begin():
                stored = webhooks.store_event(session, verified)
            if stored.needs_processing:
                return webhooks.process_event(self.factory, self.stripe, stored.id)
            return stored

        return deliver

    def op_batch(self) -> Callable[[], Any]:
        self.slots += 1
        slot = f"explore:{self.slots}"

        def run() -> Any:
            return batch.run_batch(
                self.unit_of_work,
                slot=slot,
                trigger="schedule",
                today=self.today(),
                now=self.clock.now(),
            )

        return run

    def op_cancel(self, attempt_index: int) -> Callable[[], Any]:
        attempt = self.pick(self.attempts(S.QUEUED, S.REQUIRES_ACTION), attempt_index)

        def cancel() -> Any:
            if attempt is None:
                return None
            try:
                return charge_actions.cancel_charge(self.factory, self.stripe, attempt.id, actor="admin")
            except charge_actions.ChargeNotCancelable as refused:
                return refused

        return cancel

    OPERATIONS = ("click", "pay", "worker", "janitor", "deliver", "batch", "cancel")

    def operation(self, name: str, index: int, part: int, fault: str | None) -> Callable[[], Any]:
        match name:
            case "click":
                return self.op_click(index, part)
            case "pay":
                return self.op_pay_manually(index, part)
            case "worker":
                return self.op_worker(index, fault, redeliver=False)
            case "janitor":
                return self.op_janitor(quick=part % 2 == 0)
            case "deliver":
                return self.op_deliver(index, again=False)
            case "batch":
                return self.op_batch()
            case "cancel":
                return self.op_cancel(index)
        raise AssertionError(name)

    def run_alone(self, operation: Callable[[], Any]) -> Any:
        HOLDER.name = self.new_holder()
        try:
            return operation()
        except WorkerCrashed:
            return None  # the process died; what it left behind is for the others to find
        except Mismatch:
            raise

    # ---- rules ------------------------------------------------------------------------------------

    @rule(invoice=st.integers(0, 5), part=st.integers(0, 3))
    def admin_clicks(self, invoice: int, part: int) -> None:
        self.run_alone(self.op_click(invoice, part))

    @rule(invoice=st.integers(0, 5), part=st.integers(1, 4))
    def admin_records_bank_transfer(self, invoice: int, part: int) -> None:
        self.run_alone(self.op_pay_manually(invoice, part))

    @rule()
    def batch_fans_out(self) -> None:
        self.run_alone(self.op_batch())

    @rule()
    def due_retries_open(self) -> None:
        self.run_alone(lambda: batch.open_due_retries(self.factory, self.unit_of_work, now=self.clock.now()))

    @precondition(lambda self: bool(self.broker))
    @rule(message=st.integers(0, 9), fault=st.sampled_from(WORKER_FAULTS), redeliver=st.booleans())
    def worker_takes_a_message(self, message: int, fault: str | None, redeliver: bool) -> None:
        self.run_alone(self.op_worker(message, fault, redeliver))

    @rule()
    def relay_publishes_the_outbox(self) -> None:
        outbox.relay_outbox(self.factory, self.publish, now=self.clock.now())

    @precondition(lambda self: bool(self.events or self.delivered) or self.server.has_undelivered_events())
    @rule(event=st.integers(0, 20), again=st.booleans())
    def stripe_delivers_an_event(self, event: int, again: bool) -> None:
        self.run_alone(self.op_deliver(event, again))

    @rule(quick=st.booleans(), fault=st.sampled_from(STRIPE_FAULTS))
    def janitor_runs(self, quick: bool, fault: str | None) -> None:
        if fault is not None:
            self.server.fail_next(fault)  # type: ignore[arg-type]
        self.run_alone(self.op_janitor(quick))
        self.server.clear_faults()

    @rule(jump=st.sampled_from(CLOCK_JUMPS))
    def clock_jumps(self, jump: timedelta) -> None:
        self.clock.advance(jump)

    @rule(client=st.integers(0, 3))
    def client_removes_card(self, client: int) -> None:
        client_id = self.pick(self.clients, client)
        with self.factory() as session:
            card_ids = list(session.scalars(select(Card.id).where(Card.client_id == client_id)))
        if card_ids:
            clients.delete_card(self.factory, self.stripe, client_id, card_ids[0], actor="client")

    @rule(client=st.integers(0, 3), token=st.sampled_from(CARD_TOKENS))
    def client_adds_card_as_default(self, client: int, token: str) -> None:
        client_id = self.pick(self.clients, client)
        card = clients.add_card(self.factory, self.stripe, client_id, token, actor="client")
        clients.set_default_card(self.factory, self.stripe, client_id, card.id, actor="client")

    @rule(change=st.sampled_from(((True, True), (True, True), (False, True), (True, False), (False, False))))
    def admin_changes_settings(self, change: tuple[bool, bool]) -> None:
        connected, cards_on = change
        # Card payments cannot be switched on while Stripe is disconnected: that change is refused, and
        # nothing changes (shared.services.settings).
        with contextlib.suppress(SettingsError), self.factory() as session, session.begin():
            update_settings(
                session, "admin", stripe_connected=connected, online_card_payments_enabled=cards_on
            )

    @rule(invoice=st.integers(0, 5), really=st.integers(0, 2))
    def admin_voids_invoice(self, invoice: int, really: int) -> None:
        if really:  # a rarer event than most: a void invoice takes no more charges, for good
            return
        invoice_id = self.pick(self.invoices, invoice)
        with self.factory() as session, session.begin():
            found = session.get(Invoice, invoice_id)
            assert found is not None
            invoices.void_invoice(session, found, actor="admin")

    @precondition(lambda self: any(s in (S.QUEUED, S.REQUIRES_ACTION) for s in self.seen.values()))
    @rule(attempt=st.integers(0, 5))
    def admin_cancels(self, attempt: int) -> None:
        self.run_alone(self.op_cancel(attempt))

    @precondition(lambda self: S.REQUIRES_ACTION in self.seen.values())
    @rule(attempt=st.integers(0, 5))
    def client_starts_authentication(self, attempt: int) -> None:
        waiting = self.pick(self.attempts(S.REQUIRES_ACTION), attempt)
        if waiting is None:
            return
        # Refusals the Client Zone shows the client (web/client_zone.py authenticate). One of them: the
        # charge's card was removed meanwhile, and Stripe refuses the detached card.
        with contextlib.suppress(charge_actions.NotAwaitingAuthentication, GatewayError):
            charge_actions.start_on_session_authentication(
                self.factory,
                self.stripe,
                waiting.id,
                "https://offsession.example/client/return",
                actor="client",
            )

    @precondition(lambda self: S.REQUIRES_ACTION in self.seen.values())
    @rule(payment_intent=st.integers(0, 9), succeed=st.booleans())
    def client_finishes_at_the_bank(self, payment_intent: int, succeed: bool) -> None:
        waiting = [pi for _, pi in self.server.all_payment_intents() if pi["status"] == "requires_action"]
        chosen = self.pick(waiting, payment_intent)
        if chosen is not None:
            self.server.complete_authentication(chosen["id"], succeed=succeed, stripe_account=self.account)

    @precondition(lambda self: S.REQUIRES_ACTION in self.seen.values())
    @rule(attempt=st.integers(0, 5))
    def client_returns_from_the_bank(self, attempt: int) -> None:
        waiting = self.pick(self.attempts(S.REQUIRES_ACTION), attempt)
        if waiting is not None:
            charge_actions.settle_from_stripe(self.factory, self.stripe, waiting.id, actor="client")

    @precondition(lambda self: S.SUCCEEDED in self.seen.values())
    @rule(payment_intent=st.integers(0, 9), part=st.integers(1, 4))
    def admin_refunds_in_stripe_dashboard(self, payment_intent: int, part: int) -> None:
        """Refunds reach the product today only as Stripe's events. When the product's own refund use
        case lands, a rule calling it goes beside this one, under the same invariants (the ledger
        equals Stripe's net; the refund's key committed before the call: `_on_request`)."""
        paid = [
            pi
            for _, pi in self.server.all_payment_intents()
            if pi["status"] == "succeeded" and pi["_amount_refunded"] < pi["amount_received"]
        ]
        chosen = self.pick(paid, payment_intent)
        if chosen is not None:
            left = chosen["amount_received"] - chosen["_amount_refunded"]
            self.server.dashboard_refund(chosen["id"], max(left * part // 4, 1), stripe_account=self.account)

    @rule(
        first=st.sampled_from(OPERATIONS),
        second=st.sampled_from(OPERATIONS),
        index=st.integers(0, 5),
        part=st.integers(0, 3),
        fault=st.sampled_from(WORKER_FAULTS),
        pause_at=st.integers(1, 12),
    )
    def two_things_at_once(
        self, first: str, second: str, index: int, part: int, fault: str | None, pause_at: int
    ) -> None:
        """Two operations on real concurrent sessions, the first paused before its pause_at-th statement."""
        one = self.operation(first, index, part, fault)
        two = self.operation(second, index + 1, (part + 1) % 4, None)
        self.racing = True
        try:
            outcomes = self.world.interleaver.run(
                one,
                two,
                pause_at,
                holders=(self.new_holder(), self.new_holder()),
                name_holder=lambda name: setattr(HOLDER, "name", name),
            )
        finally:
            self.racing = False
        for outcome in outcomes:
            if outcome.error is not None and not isinstance(outcome.error, WorkerCrashed):
                raise outcome.error

    # ---- what every request to Stripe must have behind it ------------------------------------------

    def _on_request(self, record: RequestRecord) -> None:
        """Runs as each request reaches Stripe. What the product committed by then is what a fresh session
        sees: the key of a charge must be there, and a first send only for an invoice that can be charged,
        for no more than is due."""
        if record.path == "/v1/refunds" and record.idempotency_key is None:
            self.violations.append(f"refund without an idempotency key: {record}")
        if record.method != "post" or record.path != "/v1/payment_intents":
            return
        key = record.idempotency_key
        if key is None:
            self.violations.append(f"PaymentIntent created without an idempotency key: {record}")
            return
        # The first time the key is tried at all: a try Stripe refused with a 5xx or a 429 may have run
        # as far as the product can tell, so what follows it is a replay.
        first_send = [(r.account, r.idempotency_key) for r in self.server.requests].count(
            (record.account, key)
        ) == 1
        with self.factory() as session:
            attempt = session.scalars(
                select(ChargeAttempt).where(ChargeAttempt.idempotency_key == key)
            ).one_or_none()
            if attempt is None:
                self.violations.append(f"key {key} sent to Stripe before any attempt with it was committed")
                return
            if record.params.get("amount") != attempt.amount:
                self.violations.append(f"attempt {attempt.id} sent for {record.params.get('amount')}")
            if first_send and not self.racing:
                reasons = self._why_not_chargeable(session, attempt)
                if reasons:
                    self.violations.append(f"attempt {attempt.id} first sent to Stripe although {reasons}")
            session.rollback()

    @staticmethod
    def _why_not_chargeable(session: Session, attempt: ChargeAttempt) -> list[str]:
        invoice = session.get(Invoice, attempt.invoice_id)
        settings = session.get(Settings, 1)
        assert invoice is not None and settings is not None
        paid = session.scalar(
            select(func.coalesce(func.sum(Payment.amount), 0)).where(Payment.invoice_id == invoice.id)
        )
        card_ids = set(
            session.scalars(select(Card.stripe_payment_method_id).where(Card.client_id == invoice.client_id))
        )
        reasons = []
        if not settings.stripe_connected:
            reasons.append("Stripe was disconnected")
        if not settings.online_card_payments_enabled:
            reasons.append("card payments were off")
        if invoice.is_void:
            reasons.append("the invoice was void")
        if attempt.payment_method_id not in card_ids:
            reasons.append("its card was removed")
        if attempt.amount > invoice.total - paid:
            reasons.append(f"only {invoice.total - paid} was due")
        return reasons

    # ---- invariants, after every step --------------------------------------------------------------

    def stripe_money(self) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int], dict[int, int]]:
        """Stripe's succeeded PaymentIntents by attempt, refunds by PaymentIntent, net money by invoice."""
        by_attempt: dict[str, list[dict[str, Any]]] = {}
        net_by_invoice: dict[int, int] = {}
        refunded: dict[str, int] = {}
        for _, refund in self.server.all_refunds():
            refunded[refund["payment_intent"]] = refunded.get(refund["payment_intent"], 0) + refund["amount"]
        for _, pi in self.server.all_payment_intents():
            if pi["status"] != "succeeded":
                continue
            by_attempt.setdefault(pi["metadata"]["charge_attempt_id"], []).append(pi)
            invoice_id = int(pi["metadata"]["invoice_id"])
            net = pi["amount_received"] - refunded.get(pi["id"], 0)
            net_by_invoice[invoice_id] = net_by_invoice.get(invoice_id, 0) + net
        return by_attempt, refunded, net_by_invoice

    @invariant()
    def no_request_reached_stripe_unsafely(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def at_most_one_succeeded_payment_intent_per_attempt(self) -> None:
        by_attempt, _, _ = self.stripe_money()
        doubles = {attempt: [pi["id"] for pi in pis] for attempt, pis in by_attempt.items() if len(pis) > 1}
        assert not doubles, f"attempts charged more than once: {doubles}"

    @invariant()
    def never_more_money_than_the_invoice_total(self) -> None:
        _, _, net_by_invoice = self.stripe_money()
        snapshot = self.world.snapshot()
        for invoice in snapshot.invoices:
            manual = sum(
                p.amount for p in snapshot.payments if p.invoice_id == invoice.id and p.method != "card"
            )
            taken = net_by_invoice.get(invoice.id, 0) + manual
            assert taken <= invoice.total, (
                f"invoice {invoice.number}: {taken} taken (card {net_by_invoice.get(invoice.id, 0)}, "
                f"manual {manual}) of a total of {invoice.total}"
            )

    @invariant()
    def ledger_records_only_what_stripe_moved(self) -> None:
        self.compare_ledger_with_stripe(exactly=False)

    def compare_ledger_with_stripe(self, *, exactly: bool) -> None:
        stripe_pis = {pi["id"]: pi for _, pi in self.server.all_payment_intents()}
        stripe_refunds = {r["id"]: r for _, r in self.server.all_refunds()}
        rows = [row for row in self.world.snapshot().payments if row.method == "card"]
        charges = {row.stripe_payment_intent_id: row for row in rows if row.stripe_payment_intent_id}
        refunds = {row.stripe_refund_id: row for row in rows if row.stripe_refund_id}
        for pi_id, row in charges.items():
            pi = stripe_pis.get(pi_id)
            assert pi is not None and pi["status"] == "succeeded", f"ledger payment {pi_id} Stripe never took"
            assert row.amount == pi["amount_received"], f"ledger says {row.amount} for {pi_id}"
        for refund_id, row in refunds.items():
            refund = stripe_refunds.get(refund_id)
            assert refund is not None and -row.amount == refund["amount"], f"ledger refund {refund_id} wrong"
        if exactly:
            ours = {pi_id for pi_id, pi in stripe_pis.items() if pi["status"] == "succeeded"}
            assert set(charges) == ours, f"ledger {sorted(charges)} vs Stripe {sorted(ours)}"
            ours_refunds = {r for r, refund in stripe_refunds.items() if refund["payment_intent"] in charges}
            assert set(refunds) == ours_refunds, f"ledger refunds {sorted(refunds)} vs {sorted(ours_refunds)}"

    @invariant()
    def no_status_goes_back(self) -> None:
        for attempt in self.attempts():
            before = self.seen.get(attempt.id)
            if before in MAY_FOLLOW:
                assert attempt.status in MAY_FOLLOW[before], f"{attempt.id}: {before} -> {attempt.status}"
            self.seen[attempt.id] = attempt.status

    @invariant()
    def nothing_canceled_that_stripe_may_still_charge(self) -> None:
        live = {}
        for _, pi in self.server.all_payment_intents():
            if pi["status"] in ("succeeded", "processing", "requires_action", "requires_confirmation"):
                live[pi["metadata"]["charge_attempt_id"]] = pi
        for attempt in self.attempts(S.CANCELED, S.FAILED):
            pi = live.get(attempt.id)
            if pi is not None and pi["status"] != "succeeded":
                raise AssertionError(
                    f"{attempt.id} is {attempt.status} while its {pi['id']} is {pi['status']}"
                )
            if (
                pi is not None
                and attempt.status == S.CANCELED
                and attempt.failure_code
                in (
                    "not_chargeable",
                    "canceled_by_admin",
                    "authentication_expired",
                )
            ):
                raise AssertionError(
                    f"{attempt.id} canceled by us ({attempt.failure_code}) after Stripe charged"
                )

    @invariant()
    def one_parameter_set_per_key(self) -> None:
        reused = {key: len(prints) for key, prints in self.server.key_fingerprints.items() if len(prints) > 1}
        assert not reused, f"keys sent with different parameters: {reused}"

    @invariant()
    def one_charge_in_flight_per_invoice(self) -> None:
        in_flight: dict[int, int] = {}
        for attempt in self.attempts(*(s.value for s in S if not s.is_terminal)):
            in_flight[attempt.invoice_id] = in_flight.get(attempt.invoice_id, 0) + 1
        assert all(n == 1 for n in in_flight.values()), in_flight

    # ---- once the rules stop -----------------------------------------------------------------------

    def settle(self) -> None:
        """Stripe stops failing and every event arrives; workers take every message; the janitor runs
        with the clock past the lease; a client who never authenticates runs out of time."""
        self.server.clear_faults()
        if self.janitor_first:
            self.clock.advance(timedelta(seconds=LEASE_SECONDS + 1))
            self.run_alone(self.op_janitor(quick=False))
        for rounds in range(8):
            self.racing = False
            self.events.extend(self.server.take_events())
            while self.events:
                self.run_alone(self.op_deliver(0, again=False))
                self.events.extend(self.server.take_events())
            outbox.relay_outbox(self.factory, self.publish, now=self.clock.now())
            while self.broker:
                message = self.broker[0]
                if message.not_before > self.clock.now():
                    self.clock.advance(message.not_before - self.clock.now())
                self.run_alone(self.op_worker(0, None, redeliver=False))
            open_ones = self.attempts(S.QUEUED, S.PROCESSING, S.UNKNOWN, S.REQUIRES_ACTION)
            if not open_ones and not self.server.has_undelivered_events():
                return
            waiting_for_client = all(a.status == S.REQUIRES_ACTION for a in open_ones)
            self.clock.advance(
                retry_policy().authentication_ttl + timedelta(hours=1)
                if waiting_for_client or rounds >= 4
                else timedelta(minutes=11)
            )
            self.run_alone(self.op_janitor(quick=False))

    def check_settled(self) -> None:
        # What the sequences reached, counted per sequence (the test prints it).
        reached = {f"an attempt ended {a.status}" for a in self.attempts()}
        reached |= {f"a charge request met {r.outcome}" for r in self.server.requests if r.path == CREATES}
        REACHED.update(reached)
        self.no_request_reached_stripe_unsafely()
        by_attempt, _, _ = self.stripe_money()
        for attempt in self.attempts():
            flagged = attempt.status == S.UNKNOWN and attempt.failure_code == janitor.NEEDS_OPERATOR
            assert AttemptStatus(attempt.status).is_terminal or (flagged and attempt.id not in by_attempt), (
                f"{attempt.id} left {attempt.status} ({attempt.failure_code}: {attempt.failure_message})"
            )
            if attempt.id in by_attempt:
                assert attempt.status == S.SUCCEEDED, f"Stripe charged {attempt.id}; it says {attempt.status}"
        self.compare_ledger_with_stripe(exactly=True)
        self.never_more_money_than_the_invoice_total()


def machine_for(world: World) -> type[ChargeMachine]:
    return type(f"ChargeMachineOn{world.engine.dialect.name.title()}", (ChargeMachine,), {"world": world})


__all__ = ["ChargeMachine", "Interleaver", "World", "machine_for", "precondition"]
