"""The admin's client list and client page, through the app's test client."""

from __future__ import annotations

from sqlalchemy import select

from shared.domain.models import Card
from tests.support.web_app import Env, World, csrf_of, link_in, send_queued_emails, sign_in_admin


def test_client_list_searches_and_links_to_the_client_page(env: Env, world: World) -> None:
    http = env.app.test_client()
    assert sign_in_admin(http).status_code == 302
    listing = http.get("/admin/clients?q=alice").get_data(as_text=True)
    assert "Alice A" in listing and "Bob B" not in listing
    assert f'href="/admin/clients/{world.a.client_id}"' in listing

    page = http.get(f"/admin/clients/{world.a.client_id}").get_data(as_text=True)
    assert page.count('data-default="yes"') == 1
    assert page.count('data-default="no"') == 1
    assert "Visa ending 4242" in page and "Mastercard ending 4444" in page
    assert "ALICE-1" in page and "ALICE-2" in page  # the invoices, with what is due
    assert world.a.charge_id in page  # the queued charge among the recent ones
    assert http.get("/admin/clients/999999").status_code == 404


def test_send_sign_in_link_queues_one_email_through_the_outbox(env: Env, world: World) -> None:
    http = env.app.test_client()
    sign_in_admin(http)
    before = env.email_files()
    answer = http.post(f"/admin/clients/{world.b.client_id}/sign-in-link", data={"csrf_token": csrf_of(http)})
    assert answer.status_code == 303
    assert env.email_files() == before  # queued, not sent by the web request
    assert send_queued_emails(env.app) == 1
    [message] = env.new_emails(before)
    assert message["To"] == world.b.email
    assert link_in(message)  # a one-time sign-in link to the Client Zone
    followed = http.get(answer.headers["Location"]).get_data(as_text=True)
    assert f"Sign-in link sent to {world.b.email}." in followed


def test_the_client_page_says_where_each_card_lives_and_which_cannot_be_charged_now(
    env: Env, world: World
) -> None:
    http = env.app.test_client()
    sign_in_admin(http)
    page = http.get(f"/admin/clients/{world.a.client_id}").get_data(as_text=True)
    assert "<code>acct_1EmulatorDefault0</code>" in page and "<td>test</td>" in page
    assert "card-elsewhere" not in page
    with env.session() as s:
        card = s.scalars(select(Card).where(Card.client_id == world.a.client_id)).first()
        assert card is not None
        card.stripe_account_id = (
            "acct_1Elsewhere"  # as if saved before the business connected another account
        )
        s.commit()
    page = http.get(f"/admin/clients/{world.a.client_id}").get_data(as_text=True)
    assert page.count('class="card-elsewhere"') == 1 and "<code>acct_1Elsewhere</code>" in page
