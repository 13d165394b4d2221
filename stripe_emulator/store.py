"""In-memory state, scoped per account, with optional persistence to a JSON file.

Objects are kept as plain dicts already shaped like Stripe's JSON, so rendering is a json.dumps.
One re-entrant lock guards everything; request handlers hold it only while they execute.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .events import EventRecord
from .ids import new_id

__all__ = ["PREFIX_TABLE", "STATE_VERSION", "TABLES", "AccountData", "Persistence", "Store", "new_id"]

# 2: objects keyed by account id (the default account's were under "" in 1), and the account registry.
STATE_VERSION = 2

# Which table an id belongs to, by prefix (used by expand[] and the emulator-only endpoints).
PREFIX_TABLE = {
    "cus_": "customers",
    "pm_": "payment_methods",
    "seti_": "setup_intents",
    "pi_": "payment_intents",
    "ch_": "charges",
    "re_": "refunds",
    "du_": "disputes",
    "cs_": "checkout_sessions",
    "we_": "webhook_endpoints",
    "evt_": "events",
}
TABLES = ("customers", "payment_methods", "setup_intents", "payment_intents", "charges", "refunds",
          "disputes", "checkout_sessions", "webhook_endpoints")


class AccountData:
    """Every object of one account (the platform, or one connected acct_...)."""

    def __init__(self) -> None:
        self.customers: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.setup_intents: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.checkout_sessions: dict[str, dict[str, Any]] = {}
        self.webhook_endpoints: dict[str, dict[str, Any]] = {}
        self.events: dict[str, EventRecord] = {}
        # we id -> {"secret": signing secret (the API shows it once, at creation), "connect": bool}.
        self.endpoint_private: dict[str, dict[str, Any]] = {}
        # object id -> what happens to it later by itself (a pending refund settling, a dispute under
        # review being decided), with "due" (epoch seconds, or None: only when a test asks).
        self.plans: dict[str, dict[str, Any]] = {}
        # pm id -> test token whose behaviour it has (hidden from the API, as on Stripe).
        self.pm_token: dict[str, str] = {}
        # pm ids that completed an off-session setup (matters for authenticationRequiredOnSetup).
        self.pm_setup: set[str] = set()
        self.deleted_customers: set[str] = set()
        # customer id -> its PaymentIntent ids, oldest first (list by customer without a scan).
        self.pis_by_customer: dict[str, list[str]] = {}

    def table(self, name: str) -> dict[str, Any]:
        table: dict[str, Any] = getattr(self, name)
        return table

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: list(self.table(name).values()) for name in TABLES}
        out["events"] = [rec.to_json() for rec in self.events.values()]
        out["pm_token"] = self.pm_token
        out["pm_setup"] = sorted(self.pm_setup)
        out["deleted_customers"] = sorted(self.deleted_customers)
        out["endpoint_private"] = self.endpoint_private
        out["plans"] = self.plans
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountData:
        acct = cls()
        for name in TABLES:
            acct.table(name).update({obj["id"]: obj for obj in data.get(name, [])})
        acct.events = {row["id"]: EventRecord.from_json(row) for row in data.get("events", [])}
        acct.pm_token = dict(data.get("pm_token", {}))
        acct.pm_setup = set(data.get("pm_setup", []))
        acct.deleted_customers = set(data.get("deleted_customers", []))
        acct.endpoint_private = dict(data.get("endpoint_private", {}))
        acct.plans = dict(data.get("plans", {}))
        for pi in acct.payment_intents.values():
            if pi.get("customer"):
                acct.pis_by_customer.setdefault(pi["customer"], []).append(pi["id"])
        return acct


class Store:
    """Every account's objects, by account id."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.accounts: dict[str, AccountData] = {}
        self.requests = {"total": 0, "rate_limited": 0, "errors_injected": 0, "dropped_after_commit": 0}
        self._counter_lock = threading.Lock()
        self.dirty = False

    def account(self, name: str) -> AccountData:
        data = self.accounts.get(name)
        if data is None:
            data = self.accounts[name] = AccountData()
        return data

    def count(self, what: str) -> None:
        with self._counter_lock:
            self.requests[what] += 1

    def find_owner(self, obj_id: str) -> str | None:
        """The account holding ``obj_id`` (ids are unique across accounts)."""
        table = next((t for p, t in PREFIX_TABLE.items() if obj_id.startswith(p)), None)
        if table is None:
            return None
        with self.lock:
            for name, data in self.accounts.items():
                if obj_id in data.table(table):
                    return name
        return None

    def clear(self) -> None:
        with self.lock:
            self.accounts.clear()
            with self._counter_lock:
                for key in self.requests:
                    self.requests[key] = 0
            self.dirty = True

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "version": STATE_VERSION,
                "accounts": {name: data.to_json() for name, data in self.accounts.items()},
                "requests": dict(self.requests),
            }

    def load_json(self, data: dict[str, Any], default_account: str) -> None:
        """Load a saved state; version 1 kept the default account's objects under ""."""
        version = data.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"unsupported state file version {version!r}")
        with self.lock:
            self.accounts = {(name or default_account): AccountData.from_json(acct)
                             for name, acct in data["accounts"].items()}
            self.requests.update(data.get("requests", {}))


class Persistence:
    """Loads the state file at start, saves it periodically when dirty and on close."""

    def __init__(
        self,
        path: Path,
        dump: Callable[[], str],
        is_dirty: Callable[[], bool],
        mark_clean: Callable[[], None],
        interval_s: float = 2.0,
    ) -> None:
        self.path = path
        self._dump = dump
        self._is_dirty = is_dirty
        self._mark_clean = mark_clean
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._save_lock = threading.Lock()

    def read(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            with self.path.open(encoding="utf-8") as fh:
                data: dict[str, Any] = json.load(fh)
        except ValueError as exc:
            raise ValueError(f"state file {self.path} is not valid JSON ({exc}); move it away to start "
                             "afresh") from exc
        if not isinstance(data, dict) or not isinstance(data.get("accounts"), dict):
            raise ValueError(f"state file {self.path} does not hold emulator state")
        return data

    def save(self) -> None:
        with self._save_lock:
            self._mark_clean()
            text = self._dump()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename so a crash mid-save never leaves a truncated file.
            fd, tmp = tempfile.mkstemp(prefix=".stripe-emulator-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="state-saver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._is_dirty():
                try:
                    self.save()
                except OSError as exc:
                    print(f"stripe_emulator: cannot save state to {self.path}: {exc}", file=sys.stderr)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.save()
