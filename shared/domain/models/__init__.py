"""SQLAlchemy 2 models: the records every layer reads (docs/architecture.md says why they live here).

Amounts are integers in minor units; times are UTC. Derived values (amount paid, amount due, the
invoice status) are computed from the ledger in shared.domain.ledger, never stored twice. One module
per concern; every record is imported here, so `from shared.domain.models import Invoice` works and the
metadata (Alembic's, the tests') holds every table.
"""

from shared.domain.models.access import (
    LINK_PURPOSES,
    AdminUser,
    ApiIdempotencyRecord,
    ClientLoginToken,
    LoginAttempt,
    RateLimitState,
)
from shared.domain.models.base import (
    ATTEMPT_SOURCES,
    IN_FLIGHT_SQL,
    INVOICE_PAYMENT_METHODS,
    LEDGER_METHODS,
    NAMING_CONVENTION,
    Base,
    UTCDateTime,
    new_uuid,
    table_of,
    utcnow,
)
from shared.domain.models.billing import Card, ChargeAttempt, Client, Invoice, Payment, Settings
from shared.domain.models.messages import AuditEvent, NotificationLog, OutboxMessage, WebhookEvent
from shared.domain.models.operations import (
    RECONCILIATION_FINDING_KINDS,
    BatchRun,
    DunningState,
    ReconciliationFinding,
    ReconciliationRun,
)

__all__ = [
    "ATTEMPT_SOURCES",
    "INVOICE_PAYMENT_METHODS",
    "IN_FLIGHT_SQL",
    "LEDGER_METHODS",
    "LINK_PURPOSES",
    "NAMING_CONVENTION",
    "RECONCILIATION_FINDING_KINDS",
    "AdminUser",
    "ApiIdempotencyRecord",
    "AuditEvent",
    "Base",
    "BatchRun",
    "Card",
    "ChargeAttempt",
    "Client",
    "ClientLoginToken",
    "DunningState",
    "Invoice",
    "LoginAttempt",
    "NotificationLog",
    "OutboxMessage",
    "Payment",
    "RateLimitState",
    "ReconciliationFinding",
    "ReconciliationRun",
    "Settings",
    "UTCDateTime",
    "WebhookEvent",
    "new_uuid",
    "table_of",
    "utcnow",
]
