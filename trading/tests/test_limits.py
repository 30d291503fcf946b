"""Limits on what one agent may do: resting orders per agent, per-agent risk limits set by operators (maximum
position per market, maximum credits reserved), suspension. Each refusal has its own code, comes before matching,
and changes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from agents.models import Agent
from markets.tests.factories import MarketFactory
from testsupport.api import API, api_client, assert_error, mint, place, post_order, unchanged
from trading.models import Order
from trading.suspension import agent_suspend

pytestmark = pytest.mark.django_db


def set_limits(agent, **limits) -> None:
    Agent.objects.filter(id=agent.id).update(**limits)


@pytest.fixture
def book(make_agent, market):
    """A resting ask (a NO bid at 0.40, i.e. YES offered at 0.60 ×10) that any limit-breaking order would trade with."""
    seller = make_agent()
    place(api_client(seller), market, "NO", "BUY", "0.40", 10)
    return market


# --------------------------------------------------------------------------------------------------------------------
# Resting orders per agent


def test_an_order_that_could_rest_beyond_the_open_order_limit_is_refused(settings, make_agent, book, audit_clean):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "MAX_OPEN_ORDERS": 3}
    client = api_client(make_agent())
    for price in ("0.10", "0.11", "0.12"):
        place(client, book, "YES", "BUY", price, 1)

    with unchanged(audit_clean):
        error = assert_error(post_order(client, book, "YES", "BUY", "0.13", 1), 409, "open_order_limit")
        assert error["detail"] == {"max_open_orders": 3}
        # Refused before matching: even an order that would fill at once, since GTC could leave a rest.
        assert_error(post_order(client, book, "YES", "BUY", "0.60", 1), 409, "open_order_limit")
        assert_error(post_order(client, book, "YES", "BUY", "0.13", 1, time_in_force="GTD",
                                expires_at="2099-01-01T00:00:00Z"), 409, "open_order_limit")  # fmt: skip

    # IOC and FOK never rest, so they are not limited; a cancel frees a slot.
    assert place(client, book, "YES", "BUY", "0.60", 1, time_in_force="IOC")["order"]["status"] == "filled"
    assert place(client, book, "YES", "BUY", "0.60", 1, time_in_force="FOK")["order"]["status"] == "filled"
    first = client.get(f"{API}/orders/?status=resting").json()["results"][0]
    assert client.delete(f"{API}/orders/{first['id']}/").status_code == 200
    place(client, book, "YES", "BUY", "0.13", 1)
    audit_clean()


def test_the_open_order_limit_counts_every_market(settings, make_agent, market, audit_clean):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "MAX_OPEN_ORDERS": 2}
    alice = make_agent()
    other = MarketFactory(creator=alice, question="Another question?")
    client = api_client(alice)
    place(client, market, "YES", "BUY", "0.10", 1)
    place(client, other, "NO", "BUY", "0.10", 1)
    with unchanged(audit_clean):
        assert_error(post_order(client, other, "YES", "BUY", "0.10", 1), 409, "open_order_limit")


# --------------------------------------------------------------------------------------------------------------------
# Risk limits set by an operator


def test_a_buy_that_could_exceed_the_position_limit_is_refused_before_matching(make_agent, book, audit_clean):
    alice = make_agent()
    set_limits(alice, max_position=5)
    client = api_client(alice)
    place(client, book, "YES", "BUY", "0.60", 2)  # holds 2 YES
    place(client, book, "YES", "BUY", "0.20", 2)  # and bids for 2 more

    with unchanged(audit_clean):
        error = assert_error(post_order(client, book, "YES", "BUY", "0.60", 2), 409, "position_limit")
    assert error["detail"] == {"side": "YES", "max_position": 5, "held": 2, "resting_buys": 2, "size": 2}

    # Exactly up to the limit is fine; the other side is a separate position; selling is never limited.
    place(client, book, "YES", "BUY", "0.60", 1)
    place(client, book, "NO", "BUY", "0.10", 5)
    place(client, book, "YES", "SELL", "0.90", 3)
    audit_clean()


def test_a_buy_that_would_reserve_more_than_the_limit_is_refused(make_agent, book, audit_clean):
    alice = make_agent()
    set_limits(alice, max_reserved=Decimal("10.00"))
    client = api_client(alice)
    place(client, book, "YES", "BUY", "0.20", 30)  # reserves 6.00

    with unchanged(audit_clean):
        error = assert_error(post_order(client, book, "YES", "BUY", "0.50", 9), 409, "reserved_limit")
    assert error["detail"] == {"max_reserved": "10.00", "reserved": "6.00", "required": "4.50"}

    place(client, book, "YES", "BUY", "0.50", 8)  # 6.00 + 4.00 = 10.00: at the limit
    audit_clean()


def test_an_agent_without_limits_is_bounded_only_by_its_balance(make_agent, book):
    client = api_client(make_agent())
    place(client, book, "YES", "BUY", "0.60", 10)
    place(client, book, "YES", "BUY", "0.50", 1000)
    assert_error(post_order(client, book, "YES", "BUY", "0.50", 2000), 400, "insufficient_balance")


def test_sells_are_never_refused_by_risk_limits_and_the_other_side_only_by_the_reserved_limit(
    make_agent, market, audit_clean
):
    # docs/decisions.md 28: SELLs are never refused; max_position counts only the side bought, while max_reserved
    # bounds the credits of every BUY, whichever side.
    alice, bob = make_agent(), make_agent()
    mint(api_client(alice), api_client(bob), market, 5)  # alice holds 5 YES
    set_limits(alice, max_position=1, max_reserved=Decimal("0.00"))
    client = api_client(alice)
    place(client, market, "YES", "SELL", "0.70", 5)  # 5 YES over a position limit of 1 and nothing to reserve
    with unchanged(audit_clean):
        assert_error(post_order(client, market, "NO", "BUY", "0.10", 1), 409, "reserved_limit")
    set_limits(alice, max_reserved=None)
    place(client, market, "NO", "BUY", "0.10", 1)  # holding 5 YES does not count against the NO position limit
    audit_clean()


def test_operators_set_risk_limits_in_the_admin(admin_client, make_agent, book):
    alice = make_agent()
    url = reverse("admin:agents_agent_change", args=[alice.id])
    page = admin_client.get(url).content.decode()
    assert 'name="max_position"' in page and 'name="max_reserved"' in page

    response = admin_client.post(
        url, {"description": "", "is_oracle": "", "max_position": "3", "max_reserved": "50.00", "_save": "Save"}
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    alice.refresh_from_db()
    assert (alice.max_position, alice.max_reserved) == (3, Decimal("50.00"))
    assert_error(post_order(api_client(alice), book, "YES", "BUY", "0.60", 4), 409, "position_limit")
    # Clearing a limit removes it.
    admin_client.post(url, {"description": "", "max_position": "", "max_reserved": "", "_save": "Save"})
    alice.refresh_from_db()
    assert alice.max_position is None and alice.max_reserved is None
    place(api_client(alice), book, "YES", "BUY", "0.60", 4)


def test_the_admin_refuses_a_negative_risk_limit(admin_client, make_agent):
    alice = make_agent()
    url = reverse("admin:agents_agent_change", args=[alice.id])
    response = admin_client.post(url, {"description": "", "max_position": "-1", "max_reserved": "-5", "_save": "Save"})
    assert response.status_code == 200  # the form again, with its errors
    alice.refresh_from_db()
    assert alice.max_position is None and alice.max_reserved is None


# --------------------------------------------------------------------------------------------------------------------
# Suspension


def test_a_suspended_agent_cannot_trade_and_its_resting_orders_are_cancelled(make_agent, book, audit_clean):
    alice = make_agent()
    client = api_client(alice)
    resting = place(client, book, "YES", "BUY", "0.20", 5)["order"]
    before = client.get(f"{API}/agents/me/").json()
    assert before["locked_balance"] == "1.00"

    agent_suspend(agent_id=alice.id)

    order = Order.objects.get(id=resting["id"])
    assert (order.status, order.cancel_reason) == (Order.Status.CANCELLED, Order.CancelReason.AGENT_SUSPENDED)
    assert client.get(f"{API}/agents/me/").json()["locked_balance"] == "0.00"
    with unchanged(audit_clean):
        assert_error(post_order(client, book, "YES", "BUY", "0.60", 1), 403, "agent_suspended")
        assert_error(post_order(client, book, "YES", "BUY", "0.10", 1, time_in_force="IOC"), 403, "agent_suspended")
