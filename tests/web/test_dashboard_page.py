"""The dashboard page (/admin/): what needs a person links to where it is listed."""

from __future__ import annotations

import re

from shared.domain.models import Dispute
from shared.services.charging import run_attempt
from tests.support.web_app import Env, World, sign_in_admin


def test_open_disputes_need_a_person_and_link_to_the_charges_pages_disputes(env: Env, world: World) -> None:
    report = run_attempt(
        env.runtime.sessions,
        env.runtime.gateway,
        world.a.charge_id,
        lease_seconds=60,
        max_transient_retries=2,
    )
    assert report.status == "succeeded"
    with env.session() as session, session.begin():
        for n, status in enumerate(("needs_response", "warning_under_review", "lost")):
            session.add(
                Dispute(
                    stripe_dispute_id=f"dp_page_{n}",
                    invoice_id=world.a.charged_invoice_id,
                    charge_attempt_id=world.a.charge_id,
                    amount=1_000,
                    currency="usd",
                    reason="fraudulent",
                    status=status,
                )
            )
    http = env.app.test_client()
    assert sign_in_admin(http).status_code == 302
    page = http.get("/admin/").get_data(as_text=True)
    item = re.search(r'<li data-attention="open_disputes" data-count="(\d+)">\s*<a href="([^"]+)">', page)
    assert item is not None, page
    assert item.group(1) == "2"  # the lost one is closed: nobody needs to act on it
    assert item.group(2) == "/admin/charges#disputes"
    charges = http.get(item.group(2)).get_data(as_text=True)
    assert 'id="disputes"' in charges and "Open disputes (2)" in charges
