"""The reconciliation report pages (/admin/reconciliation) through the Flask test client: an orphan
PaymentIntent made directly at the emulator shows once, named with its client; "Reconcile now" is queued
for the worker through the outbox, needs the CSRF token, and refuses a day to come. Admin only: the
authorization suite walks these routes with every other admin route."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from shared.domain.models import Client, OutboxMessage, ReconciliationFinding, ReconciliationRun
from shared.services.daily_reconciliation import TASK_RECONCILE_DAY, reconcile_day
from tests.support.emulator import sdk_client
from tests.support.web_app import Env, World, csrf_of, sign_in_admin


def test_an_orphan_shows_once_on_the_report_with_its_client(env: Env, world: World) -> None:
    with env.session() as s:
        customer = s.get_one(Client, world.a.client_id).stripe_customer_id
    assert customer
    stripe = sdk_client(env.emulator)
    # Charged at Stripe directly (the dashboard, another system): Offsession never heard of it.
    card = stripe.v1.payment_methods.attach("pm_card_visa", {"customer": customer})
    orphan = stripe.v1.payment_intents.create(
        {
            "amount": 4_321,
            "currency": "usd",
            "customer": customer,
            "payment_method": card.id,
            "confirm": True,
            "off_session": True,
            "allowed_payment_method_types": ["card"],
        }
    )
    assert orphan.status == "succeeded"
    day = datetime.fromtimestamp(orphan.created, UTC).date()
    for _ in range(2):
        reconcile_day(env.runtime.sessions, env.runtime.gateway, day, trigger="test")

    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    listing = admin.get("/admin/reconciliation")
    assert listing.status_code == 200
    assert day.isoformat().encode() in listing.data
    assert b'href="/admin/reconciliation"' in listing.data  # in the admin navigation
    with env.session() as s:
        run = s.scalars(select(ReconciliationRun).where(ReconciliationRun.day == day)).one()
        assert s.scalars(
            select(ReconciliationFinding.kind).where(ReconciliationFinding.payment_intent_id == orphan.id)
        ).all() == ["orphan"]
        # The emulator is shared with the other web tests, whose PaymentIntents this database never
        # heard of either: the run counts each orphan once, however many runs saw it.
        orphans = s.scalars(
            select(ReconciliationFinding.payment_intent_id).where(
                ReconciliationFinding.run_id == run.id, ReconciliationFinding.kind == "orphan"
            )
        ).all()
        assert run.runs == 2 and run.orphans == len(orphans) == len(set(orphans))
    assert f'href="/admin/reconciliation/{run.id}"'.encode() in listing.data

    page = admin.get(f"/admin/reconciliation/{run.id}")
    assert page.status_code == 200
    assert page.data.count(orphan.id.encode()) == 1
    assert b"Alice A" in page.data and b"$43.21" in page.data and b"Orphan" in page.data
    assert admin.get(f"/admin/reconciliation/{run.id + 1000}").status_code == 404


def test_reconcile_now_is_queued_through_the_outbox(env: Env, world: World) -> None:
    admin = env.app.test_client()
    assert sign_in_admin(admin).status_code == 302
    token = csrf_of(admin)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()

    assert admin.post("/admin/reconciliation/run", data={"day": yesterday}).status_code == 400
    answer = admin.post("/admin/reconciliation/run", data={"csrf_token": token, "day": yesterday})
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/admin/reconciliation")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    refused = admin.post(
        "/admin/reconciliation/run", data={"csrf_token": token, "day": tomorrow}, follow_redirects=True
    )
    assert b"has not happened yet" in refused.data
    assert (
        b"not a day"
        in admin.post(
            "/admin/reconciliation/run", data={"csrf_token": token, "day": "soon"}, follow_redirects=True
        ).data
    )

    with env.session() as s:
        messages = s.scalars(select(OutboxMessage).where(OutboxMessage.task_name == TASK_RECONCILE_DAY)).all()
        assert [m.payload for m in messages] == [{"day": yesterday, "trigger": "admin"}]
