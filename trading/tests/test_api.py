"""Trading API: orders, fills, positions, and a market's order book, trades, history and resolution."""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal
from urllib.parse import quote

import pytest
from django.utils import timezone

from agents.models import Agent
from markets.models import Market, Resolution
from markets.tests.factories import MarketFactory
from testsupport.api import (
    API,
    api_client,
    assert_decimal_string,
    assert_error,
    assert_page,
    assert_time,
    assert_uuid,
    balances,
    mint,
    operator_resolver,
    place,
    post_order,
    unchanged,
    walk_pages,
)
from trading.lifecycle import market_close
from trading.models import Order, Position, Trade
from trading.orders import order_cancel_all
from trading.resolution import market_resolve, resolutions_finalize_due
from trading.suspension import agent_suspend

ORDER_FIELDS = {
    "id",
    "market",
    "side",
    "action",
    "price",
    "size",
    "filled",
    "status",
    "time_in_force",
    "post_only",
    "expires_at",
    "client_order_id",
    "created_at",
}
TRADE_FIELDS = {"id", "market", "price", "size", "taker_side", "created_at"}
FILL_FIELDS = TRADE_FIELDS | {"order", "side", "action", "role"}
POSITION_FIELDS = {"market", "yes_shares", "no_shares", "avg_yes_price", "avg_no_price", "realized_pnl"}

pytestmark = pytest.mark.django_db


def assert_order_shape(body: dict) -> None:
    assert set(body) >= ORDER_FIELDS, body
    assert_uuid(body["id"])
    assert_uuid(body["market"])
    assert body["side"] in ("YES", "NO")
    assert body["action"] in ("BUY", "SELL")
    assert_decimal_string(body["price"])
    assert isinstance(body["size"], int) and isinstance(body["filled"], int)
    assert body["status"] in ("open", "partial", "filled", "cancelled", "expired")
    assert body["time_in_force"] in ("GTC", "GTD", "IOC", "FOK")
    assert isinstance(body["post_only"], bool)
    if body["expires_at"] is not None:
        assert_time(body["expires_at"])
    assert_time(body["created_at"])


def assert_trade_shape(body: dict, fields: set[str] = TRADE_FIELDS) -> None:
    assert fields <= set(body), body
    assert_uuid(body["id"])
    assert_uuid(body["market"])
    assert_decimal_string(body["price"])
    assert isinstance(body["size"], int) and body["size"] >= 1
    assert body["taker_side"] in ("YES", "NO")
    assert_time(body["created_at"])


def locked(agent: Agent) -> Decimal:
    return balances(agent)[1]


# --------------------------------------------------------------------------------------------------------------------
# POST /orders/


def test_it_places_a_resting_order_and_reserves_its_cost(make_agent, market, audit_clean):
    alice = make_agent()
    client = api_client(alice)

    response = post_order(client, market, "YES", "BUY", "0.55", 10, client_order_id="first")

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"order", "trades"}
    assert body["trades"] == []
    order = body["order"]
    assert_order_shape(order)
    assert (order["market"], order["side"], order["action"], order["price"]) == (str(market.id), "YES", "BUY", "0.55")
    assert (order["size"], order["filled"], order["status"]) == (10, 0, "open")
    assert (order["time_in_force"], order["post_only"], order["expires_at"]) == ("GTC", False, None)
    assert order["client_order_id"] == "first"
    assert balances(alice) == (Decimal("1000.00"), Decimal("5.50"))
    me = client.get(f"{API}/agents/me/").json()
    assert (me["locked_balance"], me["available_balance"]) == ("5.50", "994.50")
    audit_clean()


def test_it_returns_the_trades_of_an_order_that_crosses(make_agent, market, audit_clean):
    alice, bob = make_agent(), make_agent()
    resting = place(api_client(alice), market, "YES", "BUY", "0.60", 10)["order"]

    response = post_order(api_client(bob), market, "NO", "BUY", "0.45", 4)

    assert response.status_code == 201, response.content
    body = response.json()
    assert_order_shape(body["order"])
    assert (body["order"]["status"], body["order"]["filled"]) == ("filled", 4)
    assert len(body["trades"]) == 1
    trade = body["trades"][0]
    assert_trade_shape(trade)
    # The trade runs at the maker's price, quoted as the YES price; the taker bid in the NO queue.
    assert (trade["market"], trade["price"], trade["size"], trade["taker_side"]) == (str(market.id), "0.60", 4, "NO")
    assert Trade.objects.get(id=trade["id"]).maker_order_id == assert_uuid(resting["id"])
    # bob paid 1 - 0.60 = 0.40 per NO contract and got the price improvement over his 0.45 limit.
    assert balances(bob) == (Decimal("998.40"), Decimal("0.00"))
    assert balances(alice) == (Decimal("997.60"), Decimal("3.60"))
    audit_clean()


def test_it_sells_contracts_held_and_pays_the_seller(make_agent, market, audit_clean):
    alice, bob, carol = make_agent(), make_agent(), make_agent()
    mint(api_client(alice), api_client(bob), market, 5, "0.50")
    place(api_client(carol), market, "YES", "BUY", "0.70", 3)

    sold = place(api_client(alice), market, "YES", "SELL", "0.65", 3)

    assert (sold["order"]["status"], sold["order"]["filled"]) == ("filled", 3)
    assert [(t["price"], t["size"], t["taker_side"]) for t in sold["trades"]] == [("0.70", 3, "NO")]
    assert balances(alice) == (Decimal("1000.00") - Decimal("2.50") + Decimal("2.10"), Decimal("0.00"))
    assert Position.objects.get(agent=alice, market=market).yes_shares == 2
    audit_clean()


@pytest.mark.parametrize(
    ("price", "size", "stored_price", "stored_size"),
    [
        (0.55, 1, "0.55", 1),
        ("0.5", 1, "0.50", 1),
        (" 0.40 ", 1, "0.40", 1),
        ("1e-1", 1, "0.10", 1),
        ("0.01", 1, "0.01", 1),
        ("0.99", 1, "0.99", 1),
        ("0.30", "3", "0.30", 3),
        ("0.30", 2.0, "0.30", 2),
    ],
)
def test_it_accepts_prices_and_sizes_as_strings_or_numbers(price, size, stored_price, stored_size, make_agent, market):
    """DESIGN section 2: requests accept strings or numbers. Whole-valued numbers are whole contracts."""
    order = place(api_client(make_agent()), market, "YES", "BUY", price, size)["order"]
    assert (order["price"], order["size"]) == (stored_price, stored_size)


BAD_ORDERS = {
    "price 0": {"price": 0},
    "price '0'": {"price": "0"},
    "price 1": {"price": 1},
    "price '1.00'": {"price": "1.00"},
    "price 1.5": {"price": 1.5},
    "price '-0.1'": {"price": "-0.1"},
    "price -0.1": {"price": -0.1},
    "price off tick '0.555'": {"price": "0.555"},
    "price off tick 0.555": {"price": 0.555},
    "price off tick '0.001'": {"price": "0.001"},
    "price list": {"price": ["0.50"]},
    "price true": {"price": True},
    "price false": {"price": False},
    "price object": {"price": {"value": "0.50"}},
    "price null": {"price": None},
    "price empty": {"price": ""},
    "price words": {"price": "fifty cents"},
    "price NaN": {"price": "NaN"},
    "price Infinity": {"price": "Infinity"},
    "price comma": {"price": "0,50"},
    "size 0": {"size": 0},
    "size -1": {"size": -1},
    "size 1.5": {"size": 1.5},
    "size '1.5'": {"size": "1.5"},
    "size 10**12": {"size": 10**12},
    "size 10**30": {"size": 10**30},
    "size abc": {"size": "abc"},
    "size null": {"size": None},
    "size true": {"size": True},
    "size list": {"size": [1]},
    "size object": {"size": {"n": 1}},
    "size empty": {"size": ""},
    "side MAYBE": {"side": "MAYBE"},
    "side lowercase": {"side": "yes"},
    "side null": {"side": None},
    "side number": {"side": 1},
    "side list": {"side": ["YES"]},
    "action lowercase": {"action": "buy"},
    "action mixed case": {"action": "Sell"},
    "action HOLD": {"action": "HOLD"},
    "action null": {"action": None},
    "market malformed": {"market": "not-a-uuid"},
    "market number": {"market": 42},
    "market null": {"market": None},
    "market empty": {"market": ""},
    "time_in_force unknown": {"time_in_force": "NOW"},
    "time_in_force lowercase": {"time_in_force": "gtc"},
    "GTD without expires_at": {"time_in_force": "GTD"},
    "GTD in the past": {"time_in_force": "GTD", "expires_at": "2001-01-01T00:00:00Z"},
    "expires_at without GTD": {"expires_at": "2099-01-01T00:00:00Z"},
    "expires_at not a time": {"time_in_force": "GTD", "expires_at": "tomorrow"},
    "post_only with IOC": {"post_only": True, "time_in_force": "IOC"},
    "post_only with FOK": {"post_only": True, "time_in_force": "FOK"},
    "post_only maybe": {"post_only": "maybe"},
    "client_order_id empty": {"client_order_id": ""},
    "client_order_id too long": {"client_order_id": "x" * 65},
    "client_order_id with NUL": {"client_order_id": "a\u0000b"},
    "forecast above 1": {"forecast": "1.5"},
    "forecast negative": {"forecast": -0.2},
    "reasoning too long": {"forecast": "0.5", "reasoning": "r" * 5001},
    "missing market": {"market": "MISSING"},
    "missing side": {"side": "MISSING"},
    "missing action": {"action": "MISSING"},
    "missing price": {"price": "MISSING"},
    "missing size": {"size": "MISSING"},
}


@pytest.fixture
def busy_market(make_agent, market):
    """A market with a resting bid from someone else, so a wrongly accepted order could trade or rest."""
    place(api_client(make_agent()), market, "NO", "BUY", "0.45", 20)
    return market


@pytest.mark.parametrize("change", BAD_ORDERS.values(), ids=BAD_ORDERS.keys())
def test_it_refuses_a_malformed_order_and_changes_nothing(change, make_agent, busy_market, audit_clean):
    alice = make_agent()
    body = {"market": str(busy_market.id), "side": "YES", "action": "BUY", "price": "0.50", "size": 10}
    body.update(change)
    body = {field: value for field, value in body.items() if value != "MISSING"}
    # The service's codes: a price's problem is invalid_price, a size's invalid_size, any other's invalid_request.
    code = {"price": "invalid_price", "size": "invalid_size"}.get(next(iter(change)), "invalid_request")

    with unchanged(audit_clean):
        error = assert_error(api_client(alice).post(f"{API}/orders/", body), 400, code)
    assert error["message"] and error["detail"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "malformed_json"),
        ('{"market": ', "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        ("[1, 2]", "invalid_request"),
        ('"a string"', "invalid_request"),
        ("null", "invalid_request"),
        ("42", "invalid_request"),
    ],
    ids=str,
)
def test_it_refuses_an_order_body_that_is_not_a_json_object(raw, code, make_agent, busy_market, audit_clean):
    alice = make_agent()
    with unchanged(audit_clean):
        response = api_client(alice).post(f"{API}/orders/", raw, content_type="application/json")
        assert_error(response, 400, code)


def test_it_refuses_an_order_sent_as_a_form(make_agent, busy_market, audit_clean):
    alice = make_agent()
    with unchanged(audit_clean):
        response = api_client(alice).post(
            f"{API}/orders/",
            f"market={busy_market.id}&side=YES&action=BUY&price=0.5&size=1",
            content_type="application/x-www-form-urlencoded",
        )
        assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("market_id", ["00000000-0000-0000-0000-000000000000", "2f9ba9b7-facb-43c8-9678-9884ebc53ad8"])
def test_it_answers_404_for_an_order_in_an_unknown_market(market_id, make_agent, busy_market, audit_clean):
    alice = make_agent()
    body = {"market": market_id, "side": "YES", "action": "BUY", "price": "0.50", "size": 1}
    with unchanged(audit_clean):
        assert_error(api_client(alice).post(f"{API}/orders/", body), 404, "not_found")


def test_it_refuses_an_order_beyond_available_balance(make_agent, busy_market, audit_clean):
    alice = make_agent()
    client = api_client(alice)
    with unchanged(audit_clean):
        # 1011 x 0.99 = 1000.89 > 1000.00
        error = assert_error(post_order(client, busy_market, "YES", "BUY", "0.99", 1011), 400, "insufficient_balance")
    assert error["detail"] == {"required": "1000.89", "available": "1000.00"}

    place(client, busy_market, "YES", "BUY", "0.50", 1000)  # reserves 500.00
    with unchanged(audit_clean):
        assert_error(post_order(client, busy_market, "YES", "BUY", "0.50", 1001), 400, "insufficient_balance")
    assert balances(alice) == (Decimal("1000.00"), Decimal("500.00"))


def test_it_refuses_to_sell_contracts_not_held(make_agent, busy_market, audit_clean):
    alice, bob = make_agent(), make_agent()
    with unchanged(audit_clean):
        assert_error(post_order(api_client(alice), busy_market, "YES", "SELL", "0.50", 1), 400, "insufficient_position")
        assert_error(post_order(api_client(alice), busy_market, "NO", "SELL", "0.50", 1), 400, "insufficient_position")

    mint(api_client(alice), api_client(bob), busy_market, 5, "0.50")
    with unchanged(audit_clean):
        error = assert_error(
            post_order(api_client(alice), busy_market, "YES", "SELL", "0.90", 6), 400, "insufficient_position"
        )
    assert error["detail"] == {"side": "YES", "required": 6, "available": 5}

    place(api_client(alice), busy_market, "YES", "SELL", "0.90", 5)  # reserves all five
    with unchanged(audit_clean):
        assert_error(post_order(api_client(alice), busy_market, "YES", "SELL", "0.95", 1), 400, "insufficient_position")


def test_it_refuses_a_post_only_order_that_would_cross(make_agent, market, audit_clean):
    alice, bob = make_agent(), make_agent()
    place(api_client(bob), market, "YES", "BUY", "0.60", 5)

    with unchanged(audit_clean):
        response = post_order(api_client(alice), market, "NO", "BUY", "0.40", 5, post_only=True)
        assert_error(response, 409, "post_only_would_cross")

    rested = place(api_client(alice), market, "NO", "BUY", "0.39", 5, post_only=True)["order"]
    assert (rested["status"], rested["post_only"]) == ("open", True)
    audit_clean()


def test_it_refuses_orders_once_the_market_is_closed(make_agent, market, audit_clean):
    alice = make_agent()
    market_close(market_id=market.id)
    with unchanged(audit_clean):
        assert_error(post_order(api_client(alice), market, "YES", "BUY", "0.50", 1), 409, "market_closed")


def test_it_refuses_orders_after_the_deadline_even_before_the_scheduler_closes_the_market(
    make_agent, market, audit_clean
):
    alice = make_agent()
    Market.objects.filter(id=market.id).update(deadline=timezone.now() - timedelta(seconds=1))
    with unchanged(audit_clean):
        assert_error(post_order(api_client(alice), market, "YES", "BUY", "0.50", 1), 409, "market_closed")


def test_it_refuses_orders_in_a_resolved_market(make_agent, market, audit_clean):
    alice = make_agent()
    market_resolve(market_id=market.id, outcome="NO", resolver=operator_resolver())
    with unchanged(audit_clean):
        assert_error(post_order(api_client(alice), market, "NO", "BUY", "0.50", 1), 409, "market_closed")


def test_it_refuses_orders_from_a_suspended_agent(make_agent, market, audit_clean):
    alice = make_agent()
    agent_suspend(agent_id=alice.id)
    with unchanged(audit_clean):
        assert_error(post_order(api_client(alice), market, "YES", "BUY", "0.50", 1), 403, "agent_suspended")


def test_it_refuses_orders_without_a_valid_key(make_agent, market, audit_clean):
    with unchanged(audit_clean):
        assert_error(post_order(api_client(), market, "YES", "BUY", "0.50", 1), 401, "not_authenticated")
        assert_error(post_order(api_client(key="ms_nope"), market, "YES", "BUY", "0.50", 1), 401, "invalid_api_key")


def test_a_fill_or_kill_order_that_cannot_fill_is_cancelled_without_trading(make_agent, market, audit_clean):
    alice, bob = make_agent(), make_agent()
    place(api_client(bob), market, "YES", "BUY", "0.60", 3)

    placed = place(api_client(alice), market, "NO", "BUY", "0.40", 5, time_in_force="FOK")

    assert placed["trades"] == []
    assert (placed["order"]["status"], placed["order"]["filled"]) == ("cancelled", 0)
    assert placed["order"]["cancel_reason"] == "fok_unfilled"
    assert balances(alice) == (Decimal("1000.00"), Decimal("0.00"))
    audit_clean()


def test_an_immediate_or_cancel_order_fills_what_crosses_and_releases_the_rest(make_agent, market, audit_clean):
    alice, bob = make_agent(), make_agent()
    place(api_client(bob), market, "YES", "BUY", "0.60", 3)

    placed = place(api_client(alice), market, "NO", "BUY", "0.40", 5, time_in_force="IOC")

    assert [t["size"] for t in placed["trades"]] == [3]
    assert (placed["order"]["status"], placed["order"]["filled"]) == ("cancelled", 3)
    assert balances(alice) == (Decimal("998.80"), Decimal("0.00"))
    audit_clean()


def test_a_good_till_date_order_carries_its_expiry(make_agent, market):
    expires = timezone.now() + timedelta(hours=2)
    order = place(
        api_client(make_agent()), market, "YES", "BUY", "0.20", 1, time_in_force="GTD", expires_at=expires.isoformat()
    )["order"]
    assert order["time_in_force"] == "GTD"
    assert assert_time(order["expires_at"]) == expires


# --------------------------------------------------------------------------------------------------------------------
# client_order_id: idempotent retries


def test_a_repeated_client_order_id_returns_the_original_order_and_creates_nothing(make_agent, market, audit_clean):
    alice, bob = make_agent(), make_agent()
    place(api_client(bob), market, "NO", "BUY", "0.45", 2)
    client = api_client(alice)
    first = post_order(client, market, "YES", "BUY", "0.55", 5, client_order_id="retry-me")
    assert first.status_code == 201
    assert len(first.json()["trades"]) == 1

    with unchanged(audit_clean):
        again = post_order(client, market, "YES", "BUY", "0.55", 5, client_order_id="retry-me")

    assert again.status_code == 200
    assert again.json()["order"]["id"] == first.json()["order"]["id"]
    assert again.json()["trades"] == first.json()["trades"]
    assert Order.objects.filter(agent=alice).count() == 1


def test_a_client_order_id_reused_for_a_different_order_is_a_conflict(make_agent, market, audit_clean):
    alice = make_agent()
    client = api_client(alice)
    place(client, market, "YES", "BUY", "0.55", 5, client_order_id="mine")

    with unchanged(audit_clean):
        response = post_order(client, market, "YES", "BUY", "0.56", 5, client_order_id="mine")
        assert_error(response, 409, "client_order_id_conflict")


def test_client_order_ids_are_unique_per_agent_only(make_agent, market):
    place(api_client(make_agent()), market, "YES", "BUY", "0.10", 1, client_order_id="shared")
    assert (
        post_order(api_client(make_agent()), market, "YES", "BUY", "0.10", 1, client_order_id="shared").status_code
        == 201
    )


# --------------------------------------------------------------------------------------------------------------------
# GET /orders/ and /orders/{id}/


def test_it_lists_only_own_orders_newest_first(make_agent, market):
    alice, bob = make_agent(), make_agent()
    mine = [place(api_client(alice), market, "YES", "BUY", f"0.1{n}", 1)["order"]["id"] for n in range(3)]
    theirs = place(api_client(bob), market, "YES", "BUY", "0.20", 1)["order"]["id"]

    response = api_client(alice).get(f"{API}/orders/")

    assert response.status_code == 200
    results = assert_page(response.json())
    for row in results:
        assert_order_shape(row)
    assert [row["id"] for row in results] == list(reversed(mine))
    assert theirs not in {row["id"] for row in results}
    assert [row["id"] for row in assert_page(api_client(bob).get(f"{API}/orders/").json())] == [theirs]


def test_it_filters_own_orders(make_agent, market):
    alice, bob = make_agent(), make_agent()
    before = quote(timezone.now().isoformat())
    other_market = MarketFactory(creator=bob)
    client = api_client(alice)
    resting = place(client, market, "YES", "BUY", "0.30", 2)["order"]["id"]
    cancelled = place(client, market, "NO", "BUY", "0.30", 2)["order"]["id"]
    assert client.delete(f"{API}/orders/{cancelled}/").status_code == 200
    elsewhere = place(client, other_market, "YES", "BUY", "0.30", 2)["order"]["id"]

    def ids(query: str) -> set[str]:
        response = client.get(f"{API}/orders/{query}")
        assert response.status_code == 200, response.content
        return {row["id"] for row in assert_page(response.json())}

    assert ids("?status=resting") == {resting, elsewhere}
    assert ids("?status=open") == {resting, elsewhere}
    assert ids("?status=cancelled") == {cancelled}
    assert ids(f"?market={market.id}") == {resting, cancelled}
    assert ids("?side=NO") == {cancelled}
    assert ids("?action=BUY") == {resting, cancelled, elsewhere}
    assert ids(f"?since={before}") == {resting, cancelled, elsewhere}
    assert ids(f"?until={before}") == set()
    assert ids("?action=SELL") == set()


@pytest.mark.parametrize(
    "query", ["?status=bogus", "?market=not-a-uuid", "?side=MAYBE", "?side=no", "?action=HOLD", "?since=soon"]
)
def test_it_refuses_a_malformed_order_filter(query, make_agent, audit_clean):
    client = api_client(make_agent())
    with unchanged(audit_clean):
        assert_error(client.get(f"{API}/orders/{query}"), 400, "invalid_request")


def test_the_order_list_pages_with_a_cursor(make_agent, market):
    client = api_client(make_agent())
    placed = [place(client, market, "YES", "BUY", "0.10", n + 1)["order"]["id"] for n in range(5)]

    results, pages = walk_pages(client, f"{API}/orders/?page_size=2")

    assert pages == 3
    assert [row["id"] for row in results] == list(reversed(placed))


def test_it_shows_one_own_order(make_agent, market):
    alice = make_agent()
    order = place(api_client(alice), market, "NO", "BUY", "0.35", 4, client_order_id="x-1")["order"]

    response = api_client(alice).get(f"{API}/orders/{order['id']}/")

    assert response.status_code == 200
    assert_order_shape(response.json())
    assert response.json() == order | {"updated_at": response.json()["updated_at"]}


def test_it_hides_another_agents_order(make_agent, market, audit_clean):
    alice, bob = make_agent(), make_agent()
    order = place(api_client(alice), market, "YES", "BUY", "0.40", 10)["order"]

    with unchanged(audit_clean):
        assert_error(api_client(bob).get(f"{API}/orders/{order['id']}/"), 404, "not_found")
        assert_error(api_client(bob).delete(f"{API}/orders/{order['id']}/"), 404, "not_found")

    assert Order.objects.get(id=order["id"]).status == "open"
    assert locked(alice) == Decimal("4.00")


@pytest.mark.parametrize("order_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "12345", "%00"])
def test_it_answers_404_for_an_unknown_order(order_id, make_agent, busy_market, audit_clean):
    client = api_client(make_agent())
    with unchanged(audit_clean):
        assert_error(client.get(f"{API}/orders/{order_id}/"), 404, "not_found")
        assert_error(client.delete(f"{API}/orders/{order_id}/"), 404, "not_found")


# --------------------------------------------------------------------------------------------------------------------
# DELETE /orders/{id}/ and POST /orders/cancel-all/


def test_cancelling_an_order_releases_its_reserve(make_agent, market, audit_clean):
    alice = make_agent()
    client = api_client(alice)
    order = place(client, market, "YES", "BUY", "0.40", 10)["order"]
    assert locked(alice) == Decimal("4.00")

    response = client.delete(f"{API}/orders/{order['id']}/")

    assert response.status_code == 200
    assert_order_shape(response.json())
    assert (response.json()["id"], response.json()["status"]) == (order["id"], "cancelled")
    assert balances(alice) == (Decimal("1000.00"), Decimal("0.00"))
    assert client.get(f"{API}/markets/{market.id}/orderbook/").json()["yes"] == []
    audit_clean()


def test_it_refuses_to_cancel_an_order_twice_or_a_filled_one(make_agent, market, audit_clean):
    alice, bob = make_agent(), make_agent()
    client = api_client(alice)
    order = place(client, market, "YES", "BUY", "0.40", 10)["order"]
    assert client.delete(f"{API}/orders/{order['id']}/").status_code == 200
    filled = place(client, market, "NO", "BUY", "0.50", 2)["order"]
    place(api_client(bob), market, "YES", "BUY", "0.50", 2)

    with unchanged(audit_clean):
        assert_error(client.delete(f"{API}/orders/{order['id']}/"), 409, "order_not_cancellable")
        assert_error(client.delete(f"{API}/orders/{filled['id']}/"), 409, "order_not_cancellable")


def test_cancel_all_cancels_only_own_resting_orders(make_agent, market, audit_clean):
    alice, bob, carol = make_agent(), make_agent(), make_agent()
    other_market = MarketFactory(creator=carol)
    a = api_client(alice)
    mint(a, api_client(carol), market, 4, "0.50")
    mine = {
        place(a, market, "YES", "BUY", "0.20", 5)["order"]["id"],
        place(a, market, "YES", "SELL", "0.90", 4)["order"]["id"],
        place(a, other_market, "NO", "BUY", "0.30", 5)["order"]["id"],
    }
    theirs = place(api_client(bob), market, "YES", "BUY", "0.25", 5)["order"]["id"]
    assert locked(alice) == Decimal("2.50")

    response = a.post(f"{API}/orders/cancel-all/", {})

    assert response.status_code == 200
    assert {row["id"] for row in response.json()} == mine
    assert {row["status"] for row in response.json()} == {"cancelled"}
    assert locked(alice) == Decimal("0.00")
    assert Position.objects.get(agent=alice, market=market).yes_reserved == 0
    assert Order.objects.get(id=theirs).status == "open"
    assert locked(bob) == Decimal("1.25")
    assert a.post(f"{API}/orders/cancel-all/").json() == []
    audit_clean()


def test_cancel_all_can_be_limited_to_one_market(make_agent, market, audit_clean):
    alice = make_agent()
    other_market = MarketFactory()
    client = api_client(alice)
    here = place(client, market, "YES", "BUY", "0.20", 5)["order"]["id"]
    there = place(client, other_market, "YES", "BUY", "0.20", 5)["order"]["id"]

    response = client.post(f"{API}/orders/cancel-all/", {"market": str(market.id)})

    assert response.status_code == 200
    assert [row["id"] for row in response.json()] == [here]
    assert Order.objects.get(id=there).status == "open"
    unknown = client.post(f"{API}/orders/cancel-all/", {"market": "00000000-0000-0000-0000-000000000000"})
    assert (unknown.status_code, unknown.json()) == (200, [])
    audit_clean()


@pytest.mark.parametrize("body", [{"market": "not-a-uuid"}, {"market": 7}, {"market": ["x"]}, [1]], ids=str)
def test_cancel_all_refuses_a_malformed_market(body, make_agent, market, audit_clean):
    alice = make_agent()
    place(api_client(alice), market, "YES", "BUY", "0.20", 5)
    with unchanged(audit_clean):
        assert_error(api_client(alice).post(f"{API}/orders/cancel-all/", body), 400, "invalid_request")


def test_cancel_all_needs_a_key(make_agent, market, audit_clean):
    place(api_client(make_agent()), market, "YES", "BUY", "0.20", 5)
    with unchanged(audit_clean):
        assert_error(api_client().post(f"{API}/orders/cancel-all/", {}), 401, "not_authenticated")


# --------------------------------------------------------------------------------------------------------------------
# GET /positions/ and GET /trades/ (own fills)


@pytest.fixture
def traded(make_agent, market):
    """alice bought 10 YES at 0.60 from bob's 10 NO at 0.40 (alice made, bob took); then dave and erin traded one
    contract at 0.70, which marks the market."""
    alice, bob, dave, erin = make_agent("alice"), make_agent("bob"), make_agent("dave"), make_agent("erin")
    maker = place(api_client(alice), market, "YES", "BUY", "0.60", 10)["order"]
    taker = place(api_client(bob), market, "NO", "BUY", "0.40", 10)
    mint(api_client(dave), api_client(erin), market, 1, "0.70")
    return {
        "alice": alice,
        "bob": bob,
        "dave": dave,
        "erin": erin,
        "market": market,
        "maker_order": maker["id"],
        "taker_order": taker["order"]["id"],
        "trade": taker["trades"][0]["id"],
    }


def test_it_lists_own_positions_with_average_price_and_pnl(traded, audit_clean):
    response = api_client(traded["alice"]).get(f"{API}/positions/")

    assert response.status_code == 200
    rows = assert_page(response.json())
    assert len(rows) == 1
    row = rows[0]
    assert set(row) >= POSITION_FIELDS
    assert row["market"] == str(traded["market"].id)
    assert (row["yes_shares"], row["no_shares"]) == (10, 0)
    assert assert_decimal_string(row["avg_yes_price"], places=None) == Decimal("0.60")
    assert row["avg_no_price"] is None
    assert row["realized_pnl"] == "0.00"
    # Marked at the last YES price 0.70: 10 x 0.70 - 6.00.
    assert row["marked_pnl"] == "1.00"

    bob = assert_page(api_client(traded["bob"]).get(f"{API}/positions/").json())
    assert [(r["yes_shares"], r["no_shares"], r["marked_pnl"]) for r in bob] == [(0, 10, "-1.00")]
    assert assert_decimal_string(bob[0]["avg_no_price"], places=None) == Decimal("0.40")
    audit_clean()


def test_positions_never_show_another_agents_rows(traded, make_agent):
    stranger = make_agent()
    assert assert_page(api_client(stranger).get(f"{API}/positions/").json()) == []
    for name in ("alice", "bob", "dave", "erin"):
        agent = traded[name]
        rows, _ = walk_pages(api_client(agent), f"{API}/positions/")
        assert len(rows) == 1
        assert Position.objects.filter(agent=agent).count() == 1


def test_positions_filter_by_market_and_openness(traded, make_agent, audit_clean):
    client = api_client(traded["alice"])
    other = MarketFactory()
    assert len(assert_page(client.get(f"{API}/positions/?market={traded['market'].id}").json())) == 1
    assert assert_page(client.get(f"{API}/positions/?market={other.id}").json()) == []
    assert len(assert_page(client.get(f"{API}/positions/?open=true").json())) == 1
    assert assert_page(client.get(f"{API}/positions/?open=false").json()) == []
    with unchanged(audit_clean):
        assert_error(client.get(f"{API}/positions/?market=nope"), 400, "invalid_request")
        error = assert_error(client.get(f"{API}/positions/?open=1"), 400, "invalid_request")
        assert "true, false" in error["message"]


def test_it_lists_own_fills_with_order_side_action_and_role(traded):
    response = api_client(traded["alice"]).get(f"{API}/trades/")

    assert response.status_code == 200
    rows = assert_page(response.json())
    assert len(rows) == 1
    fill = rows[0]
    assert_trade_shape(fill, FILL_FIELDS)
    assert fill["id"] == traded["trade"]
    assert (fill["order"], fill["side"], fill["action"], fill["role"]) == (traded["maker_order"], "YES", "BUY", "maker")
    assert (fill["price"], fill["size"], fill["taker_side"]) == ("0.60", 10, "NO")

    bob = assert_page(api_client(traded["bob"]).get(f"{API}/trades/").json())
    assert [(f["id"], f["order"], f["side"], f["action"], f["role"]) for f in bob] == [
        (traded["trade"], traded["taker_order"], "NO", "BUY", "taker")
    ]
    assert bob[0]["price"] == "0.60"  # always the YES price
    assert bob[0]["fill_price"] == "0.40"  # what bob paid per NO contract


def test_own_fills_never_show_another_agents_trades(traded, make_agent):
    assert assert_page(api_client(make_agent()).get(f"{API}/trades/").json()) == []
    dave_fills = assert_page(api_client(traded["dave"]).get(f"{API}/trades/").json())
    assert traded["trade"] not in {f["id"] for f in dave_fills}
    assert len(dave_fills) == 1


def test_own_fills_filter_by_market_and_time(traded, make_agent, audit_clean):
    client = api_client(traded["alice"])
    trade = traded["trade"]
    created = Trade.objects.get(id=trade).created_at

    def ids(query: str) -> list[str]:
        response = client.get(f"{API}/trades/{query}")
        assert response.status_code == 200, response.content
        return [row["id"] for row in assert_page(response.json())]

    assert ids(f"?market={traded['market'].id}") == [trade]
    assert ids(f"?market={MarketFactory().id}") == []
    assert ids(f"?since={quote(created.isoformat())}&until={quote(created.isoformat())}") == [trade]
    assert ids(f"?since={quote((created + timedelta(seconds=1)).isoformat())}") == []
    assert ids(f"?until={quote((created - timedelta(seconds=1)).isoformat())}") == []
    with unchanged(audit_clean):
        assert_error(client.get(f"{API}/trades/?market=nope"), 400, "invalid_request")
        assert_error(client.get(f"{API}/trades/?since=yesterday"), 400, "invalid_request")


def test_own_fills_page_with_a_cursor(make_agent, market):
    alice, bob = make_agent(), make_agent()
    place(api_client(alice), market, "YES", "BUY", "0.50", 5)
    b = api_client(bob)
    taken = [place(b, market, "NO", "BUY", "0.50", 1)["trades"][0]["id"] for _ in range(5)]

    results, pages = walk_pages(b, f"{API}/trades/?page_size=2")

    assert pages == 3
    assert [row["id"] for row in results] == list(reversed(taken))


def test_own_lists_need_a_key(make_agent, market, audit_clean):
    place(api_client(make_agent()), market, "YES", "BUY", "0.20", 1)
    with unchanged(audit_clean):
        for path in ("orders", "positions", "trades", "ledger"):
            assert_error(api_client().get(f"{API}/{path}/"), 401, "not_authenticated")


# --------------------------------------------------------------------------------------------------------------------
# GET /markets/{id}/orderbook/


@pytest.fixture
def book(make_agent, market):
    """YES bids 0.45 x2 and 0.40 x(5+3); NO bids 0.50 x1 and 0.30 x(4 + a SELL YES at 0.70 x2), resting."""
    agents = {name: make_agent(name) for name in ("alice", "bob", "carol", "dave", "erin", "gina", "hank")}
    c = {name: api_client(agent) for name, agent in agents.items()}
    mint(c["gina"], c["hank"], market, 3, "0.60")  # gina holds 3 YES
    orders = {
        "alice": place(c["alice"], market, "YES", "BUY", "0.40", 5)["order"],
        "bob": place(c["bob"], market, "YES", "BUY", "0.40", 3)["order"],
        "carol": place(c["carol"], market, "YES", "BUY", "0.45", 2)["order"],
        "dave": place(c["dave"], market, "NO", "BUY", "0.30", 4)["order"],
        "erin": place(c["erin"], market, "NO", "BUY", "0.50", 1)["order"],
        "gina": place(c["gina"], market, "YES", "SELL", "0.70", 2)["order"],  # a NO bid at 0.30
    }
    return {"clients": c, "orders": orders, "market": market}


def test_the_orderbook_aggregates_levels_best_first_with_no_levels_at_no_prices(book, audit_clean):
    market = book["market"]

    response = api_client().get(f"{API}/markets/{market.id}/orderbook/")

    assert response.status_code == 200
    body = response.json()
    assert {"market", "seq", "yes", "no"} <= set(body)
    assert body["market"] == str(market.id)
    assert body["yes"] == [{"price": "0.45", "size": 2}, {"price": "0.40", "size": 8}]
    assert body["no"] == [{"price": "0.50", "size": 1}, {"price": "0.30", "size": 6}]
    assert (body["best_bid"], body["best_ask"]) == ("0.45", "0.50")
    assert body["seq"] == Market.objects.get(id=market.id).seq
    audit_clean()


def test_the_orderbook_follows_cancels_and_fills_with_the_markets_seq(book, make_agent):
    market = book["market"]
    seq_before = api_client().get(f"{API}/markets/{market.id}/orderbook/").json()["seq"]
    assert book["clients"]["bob"].delete(f"{API}/orders/{book['orders']['bob']['id']}/").status_code == 200
    place(api_client(make_agent()), market, "NO", "BUY", "0.55", 1)  # takes one of carol's two at 0.45

    body = api_client().get(f"{API}/markets/{market.id}/orderbook/").json()

    assert body["yes"] == [{"price": "0.45", "size": 1}, {"price": "0.40", "size": 5}]
    assert body["seq"] == Market.objects.get(id=market.id).seq > seq_before


def test_the_orderbook_can_be_limited_in_depth(book):
    body = api_client().get(f"{API}/markets/{book['market'].id}/orderbook/?depth=1").json()
    assert (body["yes"], body["no"]) == ([{"price": "0.45", "size": 2}], [{"price": "0.50", "size": 1}])


@pytest.mark.parametrize("depth", ["0", "-1", "abc", "1.5", "%00"])
def test_the_orderbook_refuses_a_malformed_depth(depth, market, audit_clean):
    with unchanged(audit_clean):
        assert_error(api_client().get(f"{API}/markets/{market.id}/orderbook/?depth={depth}"), 400, "invalid_request")


def test_the_orderbook_of_an_empty_market_is_empty(market):
    body = api_client().get(f"{API}/markets/{market.id}/orderbook/").json()
    assert (body["yes"], body["no"], body["best_bid"], body["best_ask"]) == ([], [], None, None)
    assert body["seq"] == market.seq


# --------------------------------------------------------------------------------------------------------------------
# GET /markets/{id}/trades/ and /history/


def test_a_markets_trades_are_listed_newest_first_and_page_with_a_cursor(make_agent, market):
    alice, bob = make_agent(), make_agent()
    place(api_client(alice), market, "YES", "BUY", "0.50", 5)
    b = api_client(bob)
    taken = [place(b, market, "NO", "BUY", "0.50", 1)["trades"][0]["id"] for _ in range(5)]
    place(api_client(make_agent()), MarketFactory(), "YES", "BUY", "0.50", 1)  # elsewhere, no trade

    first = api_client().get(f"{API}/markets/{market.id}/trades/?page_size=2")
    assert first.status_code == 200
    for row in assert_page(first.json()):
        assert_trade_shape(row)
        assert row["market"] == str(market.id)
    results, pages = walk_pages(api_client(), f"{API}/markets/{market.id}/trades/?page_size=2")

    assert pages == 3
    assert [row["id"] for row in results] == list(reversed(taken))
    seqs = [row["seq"] for row in results]
    assert seqs == sorted(seqs, reverse=True)
    assert {(row["price"], row["size"], row["taker_side"]) for row in results} == {("0.50", 1, "NO")}


def test_a_markets_history_gives_candles_of_its_trades(make_agent, market):
    alice, bob = make_agent(), make_agent()
    for price in ("0.40", "0.55", "0.45"):
        mint(api_client(alice), api_client(bob), market, 2, price)

    for interval in ("1m", "5m", "1h", "1d"):
        response = api_client().get(f"{API}/markets/{market.id}/history/?interval={interval}")
        assert response.status_code == 200
        body = response.json()
        assert (body["market"], body["interval"]) == (str(market.id), interval)
        candles = body["candles"]
        assert candles, interval
        assert sum(c["volume"] for c in candles) == 6
        starts = [assert_time(c["start"]) for c in candles]
        assert starts == sorted(starts)
        for c in candles:
            o, h, low, close = (assert_decimal_string(c[k]) for k in ("open", "high", "low", "close"))
            assert low <= min(o, close) <= max(o, close) <= h
        assert (candles[0]["open"], candles[-1]["close"]) == ("0.40", "0.45")
        assert max(Decimal(c["high"]) for c in candles) == Decimal("0.55")
    empty = api_client().get(f"{API}/markets/{market.id}/history/?end=2001-01-01T00:00:00Z").json()
    assert empty["candles"] == []


@pytest.mark.parametrize(
    "query", ["?interval=2m", "?interval=", "?start=yesterday", "?end=%00", "?start=2020-13-01T00:00:00Z"]
)
def test_a_markets_history_refuses_a_malformed_query(query, market, audit_clean):
    with unchanged(audit_clean):
        assert_error(api_client().get(f"{API}/markets/{market.id}/history/{query}"), 400, "invalid_request")


def test_a_markets_history_survives_an_end_at_the_beginning_of_time(market):
    response = api_client().get(f"{API}/markets/{market.id}/history/?end=0001-01-01T00:00:00Z")
    assert response.status_code == 200
    assert response.json()["candles"] == []


@pytest.mark.parametrize("action", ["orderbook", "trades", "history"])
@pytest.mark.parametrize("market_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
def test_a_markets_book_trades_and_history_answer_404_for_an_unknown_market(action, market_id, market, audit_clean):
    with unchanged(audit_clean):
        assert_error(api_client().get(f"{API}/markets/{market_id}/{action}/"), 404, "not_found")


# --------------------------------------------------------------------------------------------------------------------
# POST /markets/{id}/resolve/ (an oracle proposes) and POST /markets/{id}/dispute/


@pytest.fixture
def oracle(make_agent):
    return make_agent("oracle", oracle=True)


def settle_due(hours: float = 25):
    """The scheduler's pass, ``hours`` from now: proposals whose dispute window passed undisputed become final."""
    return resolutions_finalize_due(now=timezone.now() + timedelta(hours=hours))


def test_an_oracle_proposes_and_winners_are_paid_when_the_dispute_window_passes(traded, oracle, audit_clean):
    alice, bob, market = traded["alice"], traded["bob"], traded["market"]
    market_close(market_id=market.id)

    response = api_client(oracle).post(f"{API}/markets/{market.id}/resolve/", {"outcome": "YES"})

    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["id"], body["status"], body["outcome"]) == (str(market.id), "closed", None)
    proposal = body["resolution"]
    assert (proposal["outcome"], proposal["status"], proposal["resolver"]) == (
        "YES",
        "proposed",
        {"kind": "oracle", "name": "oracle"},
    )
    window = assert_time(proposal["dispute_until"]) - assert_time(proposal["proposed_at"])
    assert window == timedelta(hours=24)
    assert balances(alice) == (Decimal("994.00"), Decimal("0.00"))  # nothing paid yet

    assert settle_due(hours=23) == []
    [settled] = settle_due()
    assert (settled.id, settled.outcome) == (market.id, "YES")
    # alice paid 6.00 for 10 YES that pay 10.00; bob's 10 NO at 4.00 pay nothing.
    assert balances(alice) == (Decimal("1004.00"), Decimal("0.00"))
    assert balances(bob) == (Decimal("996.00"), Decimal("0.00"))
    me = api_client(alice).get(f"{API}/agents/me/").json()
    assert (me["balance"], me["reputation"]) == ("1004.00", "4.00")
    shown = api_client().get(f"{API}/markets/{market.id}/").json()
    assert (shown["status"], shown["outcome"]) == ("resolved", "YES")
    assert (shown["resolution"]["status"], shown["resolution"]["resolver"]["name"]) == ("final", "oracle")
    assert assert_time(shown["resolution"]["decided_at"]) == assert_time(shown["resolved_at"])
    payouts = assert_page(api_client(alice).get(f"{API}/ledger/?kind=payout").json())
    assert [(p["amount"], p["market"]) for p in payouts] == [("10.00", str(market.id))]
    assert settle_due(hours=48) == []  # once
    audit_clean()


def test_with_no_dispute_window_a_proposal_is_final_at_once(traded, oracle, settings, audit_clean):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "RESOLUTION_DISPUTE_HOURS": 0}
    market_close(market_id=traded["market"].id)

    response = api_client(oracle).post(f"{API}/markets/{traded['market'].id}/resolve/", {"outcome": "VOID"})

    assert response.status_code == 200
    assert (response.json()["outcome"], response.json()["resolution"]["status"]) == ("VOID", "final")
    assert balances(traded["alice"])[0] == Decimal("999.00")  # 1000 - 6.00 + 10 x 0.50
    assert balances(traded["bob"])[0] == Decimal("1001.00")  # 1000 - 4.00 + 10 x 0.50
    audit_clean()


def test_an_oracle_may_not_resolve_an_open_market(traded, oracle, audit_clean):
    with unchanged(audit_clean):
        response = api_client(oracle).post(f"{API}/markets/{traded['market'].id}/resolve/", {"outcome": "NO"})
        assert_error(response, 409, "market_not_closed")
    assert Market.objects.get(id=traded["market"].id).status == "open"


def test_an_oracle_may_not_resolve_a_market_it_created_or_has_a_stake_in(make_agent, oracle, audit_clean):
    other = make_agent("other")
    created = MarketFactory(creator=oracle, question="Mine?")
    ordered, held, forecast = (MarketFactory(creator=other, question=f"Theirs {n}?") for n in range(3))
    place(api_client(oracle), ordered, "YES", "BUY", "0.10", 1)  # an order, never filled
    mint(api_client(oracle), api_client(other), held, 1)  # a position
    api_client(oracle).post(f"{API}/markets/{forecast.id}/forecast/", {"probability": "0.5"})
    order_cancel_all(agent=oracle)
    for market, ties in ((created, ["creator"]), (ordered, ["orders"]), (held, ["orders", "position"])):
        market_close(market_id=market.id)
        with unchanged(audit_clean):
            error = assert_error(
                api_client(oracle).post(f"{API}/markets/{market.id}/resolve/", {"outcome": "NO"}),
                409,
                "conflict_of_interest",
            )
        assert error["detail"]["ties"] == ties
    market_close(market_id=forecast.id)
    error = assert_error(
        api_client(oracle).post(f"{API}/markets/{forecast.id}/resolve/", {"outcome": "NO"}), 409, "conflict_of_interest"
    )
    assert error["detail"]["ties"] == ["forecasts"]


def test_a_market_has_one_proposal_at_a_time_and_resolves_only_once(traded, oracle, make_agent, audit_clean):
    market = traded["market"]
    market_close(market_id=market.id)
    second = make_agent("second-oracle", oracle=True)
    assert api_client(oracle).post(f"{API}/markets/{market.id}/resolve/", {"outcome": "YES"}).status_code == 202
    with unchanged(audit_clean):
        error = assert_error(
            api_client(second).post(f"{API}/markets/{market.id}/resolve/", {"outcome": "NO"}), 409, "resolution_pending"
        )
    assert error["detail"]["resolution"]["outcome"] == "YES"
    settle_due()
    with unchanged(audit_clean):
        for outcome in ("YES", "NO", "VOID"):
            response = api_client(second).post(f"{API}/markets/{market.id}/resolve/", {"outcome": outcome})
            assert_error(response, 409, "market_already_resolved")


def test_only_an_oracle_in_good_standing_may_propose(traded, oracle, audit_clean):
    market = traded["market"]
    market_close(market_id=market.id)
    with unchanged(audit_clean):
        response = api_client(traded["alice"]).post(f"{API}/markets/{market.id}/resolve/", {"outcome": "YES"})
        assert_error(response, 403, "not_oracle")
        assert_error(
            api_client().post(f"{API}/markets/{market.id}/resolve/", {"outcome": "YES"}), 401, "not_authenticated"
        )
        agent_suspend(agent_id=oracle.id)
        assert_error(
            api_client(oracle).post(f"{API}/markets/{market.id}/resolve/", {"outcome": "YES"}), 403, "agent_suspended"
        )
    assert Market.objects.get(id=market.id).status == "closed"


@pytest.mark.parametrize(
    "body", [{}, {"outcome": "MAYBE"}, {"outcome": "yes"}, {"outcome": None}, {"outcome": ["YES"]}, [1]], ids=str
)
def test_it_refuses_a_malformed_resolution(body, traded, oracle, audit_clean):
    with unchanged(audit_clean):
        response = api_client(oracle).post(f"{API}/markets/{traded['market'].id}/resolve/", body)
        assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("market_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
def test_it_answers_404_when_resolving_an_unknown_market(market_id, oracle, market, audit_clean):
    with unchanged(audit_clean):
        response = api_client(oracle).post(f"{API}/markets/{market_id}/resolve/", {"outcome": "YES"})
        assert_error(response, 404, "not_found")
        response = api_client(oracle).post(f"{API}/markets/{market_id}/dispute/", {"reason": "wrong"})
        assert_error(response, 404, "not_found")


def test_a_disputed_proposal_waits_for_an_operator(traded, oracle, audit_clean):
    alice, bob, market = traded["alice"], traded["bob"], traded["market"]
    market_close(market_id=market.id)
    api_client(oracle).post(f"{API}/markets/{market.id}/resolve/", {"outcome": "NO"})

    response = api_client(alice).post(f"{API}/markets/{market.id}/dispute/", {"reason": "The event happened."})

    assert response.status_code == 201, response.content
    assert (response.json()["status"], response.json()["disputes"]) == ("disputed", 1)
    assert api_client(bob).post(f"{API}/markets/{market.id}/dispute/", {"reason": "Me too."}).status_code == 201
    with unchanged(audit_clean):
        again = api_client(alice).post(f"{API}/markets/{market.id}/dispute/", {"reason": "Really."})
        assert_error(again, 409, "already_disputed")
        for reason in ("", "   ", "x" * 2001):
            assert_error(
                api_client(alice).post(f"{API}/markets/{market.id}/dispute/", {"reason": reason}),
                400,
                "invalid_request",
            )
        assert settle_due(hours=48) == []  # not by itself once disputed
    shown = api_client().get(f"{API}/markets/{market.id}/").json()
    assert (shown["status"], shown["resolution"]["status"], shown["resolution"]["disputes"]) == (
        "closed",
        "disputed",
        2,
    )


def test_only_an_open_proposal_can_be_disputed(traded, oracle, market, audit_clean):
    alice = traded["alice"]
    with unchanged(audit_clean):
        response = api_client(alice).post(f"{API}/markets/{market.id}/dispute/", {"reason": "No proposal yet."})
        assert_error(response, 409, "not_disputable")
    market_close(market_id=market.id)
    api_client(oracle).post(f"{API}/markets/{market.id}/resolve/", {"outcome": "NO"})
    Resolution.objects.filter(market=market).update(dispute_until=timezone.now() - timedelta(seconds=1))
    with unchanged(audit_clean):
        response = api_client(alice).post(f"{API}/markets/{market.id}/dispute/", {"reason": "Too late."})
        assert_error(response, 409, "not_disputable")
        assert_error(
            api_client().post(f"{API}/markets/{market.id}/dispute/", {"reason": "x"}), 401, "not_authenticated"
        )


def test_the_plain_order_trade_and_fill_renderings_equal_drfs_own(make_agent, market):
    """OrderSerializer, TradeSerializer and FillSerializer render with ``PlainRendering``; DRF's generic rendering of
    the same fields must give the same JSON, for resting, filled, GTD and cancelled orders alike."""
    import json

    from rest_framework import serializers
    from rest_framework.renderers import JSONRenderer
    from rest_framework.test import APIRequestFactory

    from trading.api import FillSerializer, OrderSerializer, TradeSerializer
    from trading.orders import order_cancel, order_place

    alice, bob = make_agent(), make_agent()
    later = timezone.now() + timedelta(days=1)
    order_place(agent=alice, market_id=market.id, side="YES", action="BUY", price="0.40", size=3, client_order_id="c1")
    order_place(
        agent=alice,
        market_id=market.id,
        side="YES",
        action="BUY",
        price="0.30",
        size=2,
        time_in_force="GTD",
        expires_at=later,
    )
    gone = order_place(agent=alice, market_id=market.id, side="NO", action="BUY", price="0.20", size=1).order
    order_cancel(agent=alice, order_id=gone.id)
    order_place(agent=bob, market_id=market.id, side="NO", action="BUY", price="0.65", size=4)
    request = APIRequestFactory().get("/")
    request.user = alice

    def same(serializer_class, rows, **context):
        for row in rows:
            fast = serializer_class(row, context=context).data
            generic = serializers.ModelSerializer.to_representation(serializer_class(context=context), row)
            assert json.loads(JSONRenderer().render(fast)) == json.loads(JSONRenderer().render(generic))

    same(OrderSerializer, Order.objects.all())
    same(TradeSerializer, Trade.objects.all())
    same(FillSerializer, Trade.objects.all(), request=request)
    assert Trade.objects.exists() and Order.objects.filter(status="cancelled").exists()


# Values each field of an order request may take in the generated requests: valid ones, and the near misses.
_ORDER_VALUES = {
    "market": [
        "9a6c1924-28cc-43e6-b6be-45e91f2f68b8",
        "9a6c192428cc43e6b6be45e91f2f68b8",
        "urn:uuid:9a6c1924-28cc-43e6-b6be-45e91f2f68b8",
        " 9a6c1924-28cc-43e6-b6be-45e91f2f68b8",
        "not-a-uuid",
        7,
        None,
        "",
    ],
    "side": ["YES", "NO", "yes", "MAYBE", None, 1, ""],
    "action": ["BUY", "SELL", "buy", None],
    "price": [
        *("0.55", ".5", "0.5", "0.01", "0.99", "0.550", "1.00", "0.00", "0.555", " 0.55", "5E-1", "0.5_5", "+.5"),
        *("-0.5", "0.5" + "0" * 1200, "NaN", "Infinity", "", "x", 0.55, 1, None, True, ["0.55"]),
    ],
    "size": [
        *(1, 5, 1_000_000, 1_000_001, 0, -1, "5", 5.0, 5.5, True, False, None, "5.0 ", " 5", "+5", "5.", "5_0"),
        *("1e3", 1e3, 1e20, "9" * 1001, [5], "\u0665", "\u00b2"),
    ],
    "time_in_force": ["GTC", "IOC", "FOK", "GTD", "gtc", None, "", 1],
    "post_only": [True, False, "true", "TRUE", "yes", "no", "off", 1, 0, 1.0, 2, None, "null", "", [True]],
    "client_order_id": [
        *("abc-1", "a" * 64, "a" * 65, " " + "a" * 64 + " ", "", " ", " pad", "nul\x00", "\ud800"),
        *(12, 1.5, True, ["a"], None),
    ],
    "expires_at": [
        *(None, "2030-01-01T00:00:00Z", "2030-01-01", "2030-01-01T00:00:00", "2030-01-01T00:00:00+02:00"),
        *("soon", "", 12, "0001-01-01T00:00:00+01:00", "2030-13-01T00:00:00Z"),
    ],
    "forecast": [None, "0.6", 2, "", " ", "0.12345", "0.50000", "1.0000", "1.00000", 0, 1.0, 1e-5, "NaN", True],
    "reasoning": ["", "why", None, " why ", 5, True, "r" * 5000, "r" * 5001, "a\x00", "\udfff", ["x"], "   "],
    "unknown": ["extra"],
}


_PLAIN_ORDER = {
    "market": "9a6c1924-28cc-43e6-b6be-45e91f2f68b8",
    "side": "YES",
    "action": "BUY",
    "price": "0.55",
    "size": 3,
}


def _order_requests():
    """A plain order with each field, and each pair of fields, changed to each of their values; with each required
    field left out; and bodies that are no JSON objects."""
    changes = [(name, value) for name, values in _ORDER_VALUES.items() for value in values]
    for name in _PLAIN_ORDER:
        yield {k: v for k, v in _PLAIN_ORDER.items() if k != name}
    for count in (1, 2):
        for combination in itertools.combinations(changes, count):
            yield {**_PLAIN_ORDER, **dict(combination)}
    yield from ([_PLAIN_ORDER], "a string", None, 42, {})


# Refusals of a combination of fields, which the serializer that describes the request body does not know.
_COMBINATION_RULES = (
    "A GTD order needs expires_at",
    "expires_at is only allowed with time_in_force GTD",
    "post_only cannot be combined with IOC or FOK",
)


def test_the_service_accepts_and_refuses_the_order_requests_the_schemas_serializer_does():
    """The order service is the only validator of an order; the serializer that describes the request body in the
    schema (and validated it until then) stays the reference: every generated request it accepts, the API's reading
    (``order_request``) and the service's parse (``parse_order``) accept with the same values, unless a combination
    rule refuses it; every request it refuses, they refuse with the code of a field at fault (``invalid_price``,
    ``invalid_size``, else ``invalid_request`` naming the field in ``detail``)."""
    from moltstreet.errors import InvalidRequest
    from trading.api import OrderInputSerializer, order_request
    from trading.order_input import parse_order

    codes = {"price": "invalid_price", "size": "invalid_size"}
    accepted = refused = 0
    for data in _order_requests():
        serializer = OrderInputSerializer(data=data)
        try:
            market, fields = order_request(data)
            order, error = parse_order(**fields), None
        except InvalidRequest as exc:
            order, error = None, exc
        if serializer.is_valid():
            if error is not None:
                assert error.code == "invalid_request" and error.message.startswith(_COMBINATION_RULES), data
                continue
            expected = dict(serializer.validated_data)
            assert market == expected.pop("market"), data
            parsed = {name: getattr(order, name) for name in expected}
            assert {k: (v, str(v)) for k, v in parsed.items()} == {k: (v, str(v)) for k, v in expected.items()}, data
            accepted += 1
        else:
            assert error is not None, (data, serializer.errors)
            assert error.code in {codes.get(field, "invalid_request") for field in serializer.errors}, data
            if error.code == "invalid_request":
                assert set(error.detail) & {*serializer.errors, "non_field_errors"}, (data, error.detail)
            refused += 1
    assert accepted > 1000 and refused > 1000


@pytest.mark.parametrize("price", [0.005, 1.5, "abc", 0.555, "0.555", "0", None])
def test_a_bad_price_reaches_the_client_as_invalid_price(price, make_agent, busy_market, audit_clean):
    body = {"market": str(busy_market.id), "side": "YES", "action": "BUY", "price": price, "size": 1}
    alice = make_agent()
    with unchanged(audit_clean):
        error = assert_error(api_client(alice).post(f"{API}/orders/", body), 400, "invalid_price")
    assert error["detail"]["price"] == (str(price) if price is not None else None)
    assert "price" in error["message"]


@pytest.mark.parametrize("size", [0, 10**7, "abc", 1.5])
def test_a_bad_size_reaches_the_client_as_invalid_size(size, make_agent, busy_market, audit_clean):
    body = {"market": str(busy_market.id), "side": "YES", "action": "BUY", "price": "0.50", "size": size}
    alice = make_agent()
    with unchanged(audit_clean):
        error = assert_error(api_client(alice).post(f"{API}/orders/", body), 400, "invalid_size")
    assert str(error["detail"]["size"]) == str(size)
