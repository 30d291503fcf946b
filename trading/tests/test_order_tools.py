"""The order tools of issue 16 through the API: batches of orders and of cancels, amending an order, previewing one
(``dry_run``) and the dead-man's switch (``POST /agents/me/heartbeat/``), with the rate-limit weight of a batch.

The websocket side (the ``heartbeat`` message, ``cancel_on_disconnect``, an amend's messages) is
trading/tests/test_order_tools_feed.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from agents.models import Agent, AgentEvent
from markets.models import Market, MarketEvent
from testsupport.api import (
    API,
    api_client,
    assert_error,
    assert_time,
    balances,
    mint,
    place,
    post_order,
    unchanged,
)
from trading import heartbeat
from trading.agent_feed import position_view, stored_messages
from trading.lifecycle import market_close
from trading.models import Order, Position, Trade
from trading.order_batch import MAX_BATCH
from trading.tests.factories import holding, new_market

pytestmark = pytest.mark.django_db


def order_body(market: Market, side: str, action: str, price: Any, size: Any, **extra: Any) -> dict[str, Any]:
    """One order as ``POST /orders/`` (and each order of a batch) takes it."""
    return {"market": str(market.id), "side": side, "action": action, "price": price, "size": size, **extra}


def place_batch(client, *orders: Any) -> list[dict[str, Any]]:
    """``POST /orders/batch/`` that must answer 200; returns its entries."""
    response = client.post(f"{API}/orders/batch/", {"orders": list(orders)})
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"orders"} and len(body["orders"]) == len(orders), body
    for entry in body["orders"]:
        assert set(entry) == {"status", "order", "trades", "error"}, entry
    return body["orders"]


def cancel_batch(client, *ids: Any) -> list[dict[str, Any]]:
    """``POST /orders/batch-cancel/`` that must answer 200; returns its entries."""
    response = client.post(f"{API}/orders/batch-cancel/", {"ids": list(ids)})
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"orders"} and len(body["orders"]) == len(ids), body
    for entry in body["orders"]:
        assert set(entry) == {"status", "order", "error"}, entry
    return body["orders"]


def amend(client, order_id: Any, **fields: Any):
    return client.patch(f"{API}/orders/{order_id}/", fields)


def amended(client, order_id: Any, **fields: Any) -> dict[str, Any]:
    """An amend that must answer 200; returns ``{order, replaced, trades}``."""
    response = amend(client, order_id, **fields)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"order", "replaced", "trades"}, body
    return body


def preview(client, market: Market, side: str, action: str, price: Any, size: Any, **extra: Any) -> dict[str, Any]:
    """``POST /orders/`` with ``dry_run: true``, which always answers 200; returns the preview."""
    response = post_order(client, market, side, action, price, size, dry_run=True, **extra)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["dry_run"] is True, body
    return body


def heartbeat_request(client, body: Any):
    return client.post(f"{API}/agents/me/heartbeat/", body)


def market_seq(market: Market) -> int:
    return Market.objects.values_list("seq", flat=True).get(id=market.id)


def feed_seq(agent: Agent) -> int:
    return Agent.objects.values_list("feed_seq", flat=True).get(id=agent.id)


def stored(order: dict[str, Any] | str) -> Order:
    return Order.objects.get(id=order["id"] if isinstance(order, dict) else order)


def status_codes(entries: list[dict[str, Any]]) -> list[tuple[int, str | None]]:
    """Each entry's status and error code (``None`` on success)."""
    return [(entry["status"], entry["error"]["code"] if entry["error"] else None) for entry in entries]


def makers_of(taker: dict[str, Any]) -> list[tuple[str, int]]:
    """The maker orders a taker's trades filled, in execution order, with the contracts of each."""
    trades = Trade.objects.filter(taker_order_id=taker["id"]).order_by("seq")
    return [(str(maker), size) for maker, size in trades.values_list("maker_order_id", "size")]


def book_of(market: Market) -> dict[str, list[tuple[str, int]]]:
    """The market's order book as ``GET /markets/{id}/orderbook/`` shows it: (price, size) levels, best first."""
    book = api_client().get(f"{API}/markets/{market.id}/orderbook/").json()
    return {side: [(level["price"], level["size"]) for level in book[side]] for side in ("yes", "no")}


# --------------------------------------------------------------------------------------------------------------------
# POST /orders/batch/


def test_a_batch_answers_each_order_in_the_order_sent_and_a_refused_order_changes_nothing(
    market, make_agent, audit_clean
):
    alice, bob = make_agent(), make_agent()
    place(api_client(bob), market, "NO", "BUY", "0.55", 2)  # a YES ask at 0.45
    client = api_client(alice)
    refused = [
        order_body(market, "YES", "BUY", "0.405", 1),  # off the tick
        {**order_body(market, "YES", "BUY", "0.40", 1), "market": str(uuid.uuid4())},  # no such market
        order_body(market, "YES", "BUY", "0.90", 2000),  # 1800.00 credits; alice has 1000.00
        order_body(market, "YES", "BUY", "0.50", 1, post_only=True),  # would take bob's bid
    ]
    expected = [
        (400, "invalid_price"),
        (404, "not_found"),
        (400, "insufficient_balance"),
        (409, "post_only_would_cross"),
    ]

    with unchanged(audit_clean):
        before = feed_seq(alice)
        answers = place_batch(client, *refused)
        assert feed_seq(alice) == before
    assert status_codes(answers) == expected
    assert all(entry["order"] is None and entry["trades"] == [] for entry in answers)
    assert answers[0]["error"]["detail"] == {"price": "0.405", "tick": "0.01"}

    seq = market_seq(market)
    answers = place_batch(
        client,
        order_body(market, "YES", "BUY", "0.40", 10, client_order_id="first"),
        *refused,
        order_body(market, "NO", "BUY", "0.30", 5),
    )

    assert status_codes(answers) == [(201, None), *expected, (201, None)]
    first, last = answers[0]["order"], answers[-1]["order"]
    assert (first["side"], first["price"], first["size"], first["status"], first["client_order_id"]) == (
        "YES",
        "0.40",
        10,
        "open",
        "first",
    )
    assert (last["side"], last["price"], last["size"], last["status"]) == ("NO", "0.30", 5, "open")
    assert Order.objects.filter(agent=alice).count() == 2
    assert balances(alice) == (Decimal("1000.00"), Decimal("5.50"))
    # The placed orders took the market's next seqs, in the order sent; the refused ones took none.
    assert [stored(first).seq, stored(last).seq] == [seq + 1, seq + 2]
    assert market_seq(market) == seq + 2
    audit_clean()


def test_the_orders_of_one_market_are_matched_one_after_the_other_in_the_order_given(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    maker = place(api_client(bob), market, "NO", "BUY", "0.45", 5)["order"]  # a YES ask at 0.55 for 5

    first, second = place_batch(
        api_client(alice),
        order_body(market, "YES", "BUY", "0.60", 3),
        order_body(market, "YES", "BUY", "0.60", 4),
    )

    # The first takes 3 of bob's 5; the second finds the 2 it left, then rests its other 2.
    assert [(t["price"], t["size"], t["taker_side"]) for t in first["trades"]] == [("0.55", 3, "YES")]
    assert [(t["price"], t["size"], t["taker_side"]) for t in second["trades"]] == [("0.55", 2, "YES")]
    assert first["trades"][0]["seq"] < second["trades"][0]["seq"]
    assert (first["order"]["status"], second["order"]["status"], second["order"]["filled"]) == ("filled", "partial", 2)
    assert makers_of(first["order"]) == [(maker["id"], 3)] and makers_of(second["order"]) == [(maker["id"], 2)]
    assert stored(maker).status == Order.Status.FILLED
    # 5 contracts at bob's 0.55 (alice's limit was 0.60); 0.60 a contract reserved for the 2 resting.
    assert balances(alice) == (Decimal("997.25"), Decimal("1.20"))
    assert holding(alice, market) == (5, 0, 0, 0)
    assert book_of(market) == {"yes": [("0.60", 2)], "no": []}
    audit_clean()


def test_a_later_order_of_a_batch_sees_the_earlier_one_and_self_trade_cancels_it(market, make_agent, audit_clean):
    alice = make_agent()

    bid, crossing = place_batch(
        api_client(alice),
        order_body(market, "YES", "BUY", "0.40", 5),
        order_body(market, "NO", "BUY", "0.65", 2),  # crosses alice's own bid: 0.40 + 0.65 >= 1
    )

    assert (bid["status"], bid["order"]["status"]) == (201, "open")  # as it stood when it was placed
    assert (crossing["status"], crossing["order"]["status"], crossing["trades"]) == (201, "open", [])
    first = stored(bid["order"])
    assert (first.status, first.cancel_reason) == (Order.Status.CANCELLED, Order.CancelReason.SELF_TRADE)
    assert balances(alice) == (Decimal("1000.00"), Decimal("1.30"))
    assert book_of(market) == {"yes": [], "no": [("0.65", 2)]}
    assert Trade.objects.count() == 0
    audit_clean()


def test_a_batch_across_two_markets_places_each_order_in_its_market_and_answers_in_the_order_sent(
    market, make_agent, audit_clean
):
    alice, bob = make_agent(), make_agent()
    other = new_market(question="Will it snow?")
    place(api_client(bob), other, "YES", "BUY", "0.30", 4)  # a NO ask at 0.70
    seqs = market_seq(market), market_seq(other)

    answers = place_batch(
        api_client(alice),
        order_body(market, "YES", "BUY", "0.20", 1),
        order_body(other, "NO", "BUY", "0.75", 4),
        order_body(market, "YES", "BUY", "0.21", 1),
    )

    assert status_codes(answers) == [(201, None)] * 3
    assert [entry["order"]["market"] for entry in answers] == [str(market.id), str(other.id), str(market.id)]
    assert answers[0]["trades"] == answers[2]["trades"] == []
    assert [(t["market"], t["price"], t["size"], t["taker_side"]) for t in answers[1]["trades"]] == [
        (str(other.id), "0.30", 4, "NO")
    ]
    # Each market numbers its own: the first market's two orders in the order sent.
    assert [stored(answers[0]["order"]).seq, stored(answers[2]["order"]).seq] == [seqs[0] + 1, seqs[0] + 2]
    assert market_seq(market) == seqs[0] + 2
    assert stored(answers[1]["order"]).seq == seqs[1] + 1
    # 0.41 reserved in the first market; 4 NO at 0.70 bought in the other.
    assert balances(alice) == (Decimal("997.20"), Decimal("0.41"))
    assert holding(alice, other) == (0, 4, 0, 0)
    audit_clean()


def test_the_markets_of_a_batch_are_taken_in_the_order_of_their_first_order(market, make_agent, audit_clean):
    # One transaction per market, each market's orders in the order given (trading/order_batch.py): with 10.00
    # credits, both orders of the first market are placed before the other market's, which finds too little left.
    alice = make_agent(credits=Decimal("-990.00"))
    other = new_market(question="Will it snow?")

    answers = place_batch(
        api_client(alice),
        order_body(market, "YES", "BUY", "0.50", 12),  # 6.00
        order_body(other, "YES", "BUY", "0.50", 6),  # 3.00
        order_body(market, "YES", "BUY", "0.50", 4),  # 2.00
    )

    assert status_codes(answers) == [(201, None), (400, "insufficient_balance"), (201, None)]
    assert balances(alice) == (Decimal("10.00"), Decimal("8.00"))
    audit_clean()


def test_a_batch_sent_again_answers_200_with_the_same_orders_and_places_nothing_more(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    place(api_client(bob), market, "NO", "BUY", "0.45", 2)
    client = api_client(alice)
    orders = [
        order_body(market, "YES", "BUY", "0.60", 2, client_order_id="batch-1"),  # takes bob's 2
        order_body(market, "YES", "BUY", "0.30", 3, client_order_id="batch-2"),  # rests
        order_body(market, "YES", "BUY", "0.001", 3, client_order_id="batch-3"),  # refused, both times
    ]
    first = place_batch(client, *orders)
    assert status_codes(first) == [(201, None), (201, None), (400, "invalid_price")]

    with unchanged(audit_clean):
        before = feed_seq(alice), AgentEvent.objects.count()
        again = place_batch(client, *orders)
        assert (feed_seq(alice), AgentEvent.objects.count()) == before

    assert status_codes(again) == [(200, None), (200, None), (400, "invalid_price")]
    assert [entry["order"]["id"] for entry in again[:2]] == [entry["order"]["id"] for entry in first[:2]]
    assert [entry["order"]["status"] for entry in again[:2]] == ["filled", "open"]
    assert again[0]["trades"] == first[0]["trades"] and len(again[0]["trades"]) == 1
    assert Order.objects.filter(agent=alice).count() == 2


def test_a_client_order_id_repeated_within_a_batch_answers_with_the_first_order_or_a_conflict(
    market, make_agent, audit_clean
):
    client = api_client(make_agent())
    same = order_body(market, "YES", "BUY", "0.30", 2, client_order_id="twice")

    answers = place_batch(client, same, same, {**same, "price": "0.31"})

    assert status_codes(answers) == [(201, None), (200, None), (409, "client_order_id_conflict")]
    assert answers[1]["order"] == answers[0]["order"]
    assert answers[2]["error"]["detail"] == {"client_order_id": "twice", "order": answers[0]["order"]["id"]}
    assert Order.objects.filter(client_order_id="twice").count() == 1
    audit_clean()


def test_a_batch_of_the_most_orders_allowed_places_them_all(market, make_agent, audit_clean):
    alice = make_agent()
    prices = [f"0.{n:02d}" for n in range(1, MAX_BATCH + 1)]

    answers = place_batch(api_client(alice), *(order_body(market, "YES", "BUY", p, 1) for p in prices))

    assert [(entry["status"], entry["order"]["price"]) for entry in answers] == [(201, p) for p in prices]
    assert balances(alice)[1] == sum(Decimal(p) for p in prices)
    audit_clean()


def _one(market: Market) -> dict[str, Any]:
    return order_body(market, "YES", "BUY", "0.30", 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: [_one(m)],
        lambda m: {"orders": [_one(m)], "dry_run": True},
        lambda m: {"orders": []},
        lambda m: {"orders": [_one(m)] * (MAX_BATCH + 1)},
        lambda m: {"orders": _one(m)},
        lambda m: {"orders": None},
        lambda m: {},
    ],
    ids=["a list", "an unknown field", "no orders", "21 orders", "an object", "null", "nothing"],
)
def test_a_batch_that_is_not_an_object_with_1_to_20_orders_is_refused_whole(make, market, make_agent, audit_clean):
    client = api_client(make_agent())
    with unchanged(audit_clean):
        error = assert_error(client.post(f"{API}/orders/batch/", make(market)), 400, "invalid_request")
    assert error["detail"], error


def test_an_entry_of_a_batch_that_is_not_an_order_is_refused_in_its_own_entry(market, make_agent, audit_clean):
    client = api_client(make_agent())
    one = _one(market)
    entries = [
        "YES",
        5,
        None,
        [one],
        {**one, "dry_run": True},  # a preview is a request of its own, not an order of a batch
        {**one, "market": "not-a-uuid"},
        {**one, "market": 5},
        {**one, "side": "MAYBE"},
    ]

    with unchanged(audit_clean):
        answers = place_batch(client, *entries)

    assert status_codes(answers) == [(400, "invalid_request")] * len(entries)
    assert list(answers[4]["error"]["detail"]) == ["dry_run"]
    assert list(answers[5]["error"]["detail"]) == ["market"]
    assert list(answers[7]["error"]["detail"]) == ["side"]


# --------------------------------------------------------------------------------------------------------------------
# POST /orders/batch-cancel/


def test_a_batch_cancel_answers_each_id_in_the_order_sent_and_releases_the_reserves_to_the_cent(
    market, make_agent, audit_clean
):
    alice, bob = make_agent(), make_agent()
    other = new_market(question="Will it snow?")
    a, b = api_client(alice), api_client(bob)
    mint(a, b, market, 4, "0.37")  # alice holds 4 YES
    bid = place(a, market, "YES", "BUY", "0.33", 7)["order"]  # 2.31 reserved
    sell = place(a, market, "YES", "SELL", "0.71", 3)["order"]  # 3 YES reserved
    elsewhere = place(a, other, "NO", "BUY", "0.17", 9)["order"]  # 1.53 reserved
    filled = place(a, other, "YES", "BUY", "0.50", 1)["order"]
    place(b, other, "NO", "BUY", "0.50", 1)  # fills it
    bobs = place(b, market, "NO", "BUY", "0.10", 1)["order"]
    balance, locked = balances(alice)
    assert locked == Decimal("3.84") and holding(alice, market) == (4, 0, 3, 0)

    answers = cancel_batch(
        a, bid["id"], filled["id"], bobs["id"], "not-an-id", bid["id"], sell["id"], str(uuid.uuid4()), elsewhere["id"]
    )

    assert status_codes(answers) == [
        (200, None),
        (409, "order_not_cancellable"),
        (404, "not_found"),  # bob's
        (404, "not_found"),
        (409, "order_not_cancellable"),  # named twice: cancelled by its first entry
        (200, None),
        (404, "not_found"),
        (200, None),
    ]
    assert answers[1]["error"]["detail"] == {"order": filled["id"], "status": "filled"}
    assert answers[4]["error"]["detail"] == {"order": bid["id"], "status": "cancelled"}
    assert answers[2]["error"]["detail"] == {"order": bobs["id"]}
    for entry, order in ((answers[0], bid), (answers[5], sell), (answers[7], elsewhere)):
        assert (entry["order"]["id"], entry["order"]["status"], entry["order"]["cancel_reason"]) == (
            order["id"],
            "cancelled",
            "user",
        )
    assert all(entry["order"] is None for entry in answers if entry["error"])
    assert balances(alice) == (balance, Decimal("0.00"))
    assert holding(alice, market) == (4, 0, 0, 0)
    assert stored(bobs).status == Order.Status.OPEN
    assert not Order.objects.filter(agent=alice, status__in=Order.RESTING).exists()
    audit_clean()


@pytest.mark.parametrize(
    "make",
    [
        lambda order: {"ids": []},
        lambda order: {"ids": [order] * (MAX_BATCH + 1)},
        lambda order: {"ids": order},
        lambda order: [order],
        lambda order: {"ids": [order], "market": None},
        lambda order: {},
    ],
    ids=["no ids", "21 ids", "not a list", "a list", "an unknown field", "nothing"],
)
def test_a_batch_cancel_that_is_not_an_object_with_1_to_20_ids_is_refused_whole(make, market, make_agent, audit_clean):
    alice = make_agent()
    client = api_client(alice)
    order = place(client, market, "YES", "BUY", "0.30", 2)["order"]["id"]
    with unchanged(audit_clean):
        assert_error(client.post(f"{API}/orders/batch-cancel/", make(order)), 400, "invalid_request")
    assert stored(order).status == Order.Status.OPEN


# --------------------------------------------------------------------------------------------------------------------
# PATCH /orders/{id}/ (amend)


def test_a_smaller_size_at_the_same_price_is_amended_in_place_and_keeps_its_place_in_the_queue(
    market, make_agent, audit_clean
):
    alice, carol, bob = make_agent(), make_agent(), make_agent()
    a = api_client(alice)
    first = place(a, market, "YES", "BUY", "0.40", 10, client_order_id="keep")["order"]
    second = place(api_client(carol), market, "YES", "BUY", "0.40", 5)["order"]
    priority = stored(first).seq
    seq = market_seq(market)

    answer = amended(a, first["id"], size=4)

    assert answer["replaced"] is None and answer["trades"] == []
    order = answer["order"]
    assert {key: order[key] for key in ("id", "price", "size", "filled", "remaining", "status")} == {
        "id": first["id"],
        "price": "0.40",
        "size": 4,
        "filled": 0,
        "remaining": 4,
        "status": "open",
    }
    assert (order["client_order_id"], order["replaced_by"], order["cancel_reason"]) == ("keep", None, "")
    assert a.get(f"{API}/orders/{first['id']}/").json() == order
    assert assert_time(order["updated_at"]) > assert_time(first["updated_at"])
    assert stored(first).seq == priority
    # The reserve shrank by the 6 contracts taken off, to the cent; one order event, "amended", with the new level.
    assert balances(alice) == (Decimal("1000.00"), Decimal("1.60"))
    assert book_of(market)["yes"] == [("0.40", 9)]
    [event] = MarketEvent.objects.filter(market=market, seq__gt=seq)
    assert (event.seq, event.data["event"], event.data["level"]) == (
        seq + 1,
        "amended",
        {"side": "YES", "price": "0.40", "size": 9},
    )
    assert stored_messages(alice.id, feed_seq(alice) - 2)[0]["event"] == "amended"

    # A taker for 6 meets alice's 4 first (she kept her place), then 2 of carol's.
    taken = place(api_client(bob), market, "NO", "BUY", "0.60", 6)["order"]
    assert makers_of(taken) == [(first["id"], 4), (second["id"], 2)]
    assert stored(first).status == Order.Status.FILLED
    audit_clean()


def test_an_in_place_amend_of_a_sell_gives_back_exactly_the_contracts_taken_off(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    a = api_client(alice)
    mint(a, api_client(bob), market, 6)  # alice holds 6 YES
    sell = place(a, market, "YES", "SELL", "0.70", 5)["order"]
    assert holding(alice, market) == (6, 0, 5, 0)
    before = balances(alice)

    answer = amended(a, sell["id"], size=2)

    assert (answer["order"]["id"], answer["order"]["size"], answer["replaced"]) == (sell["id"], 2, None)
    assert holding(alice, market) == (6, 0, 2, 0)
    assert balances(alice) == before
    assert book_of(market)["no"] == [("0.30", 2)]
    audit_clean()


def test_an_in_place_amend_of_a_sell_nets_the_contracts_it_frees_against_held_no(market, make_agent, audit_clean):
    alice, bob, carol = make_agent(), make_agent(), make_agent()
    a = api_client(alice)
    mint(a, api_client(bob), market, 5)  # alice holds 5 YES
    sell = place(a, market, "YES", "SELL", "0.70", 5)["order"]  # all 5 reserved
    place(api_client(carol), market, "YES", "BUY", "0.40", 3)
    place(a, market, "NO", "BUY", "0.60", 3)  # 3 NO bought; nothing unreserved to merge yet
    assert holding(alice, market) == (5, 3, 5, 0)
    balance = balances(alice)[0]

    amended(a, sell["id"], size=2)

    # The 3 YES taken off the sell are unreserved now and merge with the 3 NO: 3.00 credits back.
    assert holding(alice, market) == (2, 0, 2, 0)
    assert balances(alice) == (balance + Decimal("3.00"), Decimal("0.00"))
    audit_clean()


def test_a_replacement_keeps_a_gtd_order_s_expiry(market, make_agent, audit_clean):
    alice = make_agent()
    a = api_client(alice)
    expires = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    original = place(a, market, "YES", "BUY", "0.40", 5, time_in_force="GTD", expires_at=expires.isoformat())["order"]

    new = amended(a, original["id"], price="0.41", size=6)["order"]

    assert (new["time_in_force"], assert_time(new["expires_at"])) == ("GTD", expires)
    assert (new["price"], new["size"]) == ("0.41", 6)
    audit_clean()


def test_a_replacement_does_not_count_the_order_it_replaces_against_the_agent_s_limits(
    market, make_agent, settings, audit_clean
):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "MAX_OPEN_ORDERS": 2}
    alice = make_agent(max_reserved=Decimal("5.00"), max_position=10)
    a = api_client(alice)
    bid = place(a, market, "YES", "BUY", "0.40", 8)["order"]  # 3.20 reserved, 8 YES could come
    place(a, market, "NO", "BUY", "0.10", 1)  # 2 resting orders: the limit
    assert_error(post_order(a, market, "YES", "BUY", "0.30", 1), 409, "open_order_limit")

    # 0.45 x 10 = 4.50 <= 5.00 reserved, 10 <= 10 YES: within the limits once the replaced order is gone.
    new = amended(a, bid["id"], price="0.45", size=10)["order"]

    assert (new["price"], new["size"], new["status"]) == ("0.45", 10, "open")
    assert balances(alice)[1] == Decimal("4.60")
    with unchanged(audit_clean):
        assert_error(amend(a, new["id"], price="0.40", size=11), 409, "position_limit")  # 4.40 + 0.10 reserved
        assert_error(amend(a, new["id"], price="0.50"), 409, "reserved_limit")  # 5.00 + 0.10 reserved
    audit_clean()


def test_a_new_price_cancels_the_order_and_places_its_replacement_behind_the_queue_at_that_price(
    market, make_agent, audit_clean
):
    alice, carol, bob = make_agent(), make_agent(), make_agent()
    a = api_client(alice)
    original = place(a, market, "YES", "BUY", "0.40", 5, client_order_id="mine")["order"]
    carols = place(api_client(carol), market, "YES", "BUY", "0.42", 5)["order"]

    answer = amended(a, original["id"], price="0.42")

    new, old = answer["order"], answer["replaced"]
    assert new["id"] != original["id"] and answer["trades"] == []
    assert (old["id"], old["status"], old["cancel_reason"], old["replaced_by"]) == (
        original["id"],
        "cancelled",
        "amended",
        new["id"],
    )
    assert {key: new[key] for key in ("side", "action", "price", "size", "filled", "status")} == {
        "side": "YES",
        "action": "BUY",
        "price": "0.42",
        "size": 5,
        "filled": 0,
        "status": "open",
    }
    assert (new["client_order_id"], new["time_in_force"], new["post_only"], new["replaced_by"]) == (
        "mine",
        "GTC",
        False,
        None,
    )
    assert a.get(f"{API}/orders/{original['id']}/").json()["replaced_by"] == new["id"]
    assert stored(old).seq < stored(new).seq
    assert balances(alice) == (Decimal("1000.00"), Decimal("2.10"))  # 0.42 x 5 in place of 0.40 x 5
    assert book_of(market)["yes"] == [("0.42", 10)]

    # The client_order_id now names the replacement: a retry of its request answers with it; the first request's
    # parameters no longer match.
    retry = post_order(a, market, "YES", "BUY", "0.42", 5, client_order_id="mine")
    assert retry.status_code == 200 and retry.json()["order"] == new
    assert_error(
        post_order(a, market, "YES", "BUY", "0.40", 5, client_order_id="mine"), 409, "client_order_id_conflict"
    )

    # Behind carol's now: a taker for 5 at 0.42 fills hers and none of alice's.
    taken = place(api_client(bob), market, "NO", "BUY", "0.58", 5)["order"]
    assert makers_of(taken) == [(carols["id"], 5)]
    assert stored(new).filled == 0
    audit_clean()


def test_a_larger_size_replaces_a_partly_filled_order_with_one_for_what_is_left(market, make_agent, audit_clean):
    alice, bob, carol = make_agent(), make_agent(), make_agent()
    a = api_client(alice)
    original = place(a, market, "YES", "BUY", "0.40", 10)["order"]
    place(api_client(bob), market, "NO", "BUY", "0.60", 3)  # fills 3 of alice's 10
    carols = place(api_client(carol), market, "YES", "BUY", "0.40", 5)["order"]

    answer = amended(a, original["id"], size=12)  # 12 in all: 3 filled, 9 more

    new, old = answer["order"], answer["replaced"]
    assert (new["price"], new["size"], new["filled"], new["status"]) == ("0.40", 9, 0, "open")
    assert (old["id"], old["filled"], old["status"], old["cancel_reason"], old["replaced_by"]) == (
        original["id"],
        3,
        "cancelled",
        "amended",
        new["id"],
    )
    assert balances(alice) == (Decimal("998.80"), Decimal("3.60"))
    assert book_of(market)["yes"] == [("0.40", 14)]
    taken = place(api_client(bob), market, "NO", "BUY", "0.60", 5)["order"]
    assert makers_of(taken) == [(carols["id"], 5)]  # the replacement queues behind carol's
    audit_clean()


def test_a_replacement_that_crosses_trades_at_once(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    a = api_client(alice)
    original = place(a, market, "YES", "BUY", "0.40", 5)["order"]
    bobs = place(api_client(bob), market, "NO", "BUY", "0.50", 3)["order"]  # a YES ask at 0.50

    answer = amended(a, original["id"], price="0.55")

    assert [(t["price"], t["size"], t["taker_side"]) for t in answer["trades"]] == [("0.50", 3, "YES")]
    new = answer["order"]
    assert (new["price"], new["size"], new["filled"], new["status"]) == ("0.55", 5, 3, "partial")
    assert makers_of(new) == [(bobs["id"], 3)]
    assert balances(alice) == (Decimal("998.50"), Decimal("1.10"))  # 3 at 0.50 paid, 2 at 0.55 reserved
    assert holding(alice, market) == (3, 0, 0, 0)
    assert book_of(market) == {"yes": [("0.55", 2)], "no": []}
    audit_clean()


def test_a_post_only_replacement_that_would_cross_is_refused_and_the_order_stays_as_it_was(
    market, make_agent, audit_clean
):
    alice, bob = make_agent(), make_agent()
    a = api_client(alice)
    original = place(a, market, "YES", "BUY", "0.40", 5, post_only=True)["order"]
    place(api_client(bob), market, "NO", "BUY", "0.50", 3)

    with unchanged(audit_clean):
        assert_error(amend(a, original["id"], price="0.55"), 409, "post_only_would_cross")
    assert a.get(f"{API}/orders/{original['id']}/").json() == original

    # One that does not cross goes, post_only still.
    new = amended(a, original["id"], price="0.45")["order"]
    assert (new["price"], new["post_only"], new["status"]) == ("0.45", True, "open")
    audit_clean()


def test_a_size_increase_beyond_the_balance_is_refused_and_the_order_stays_resting(market, make_agent, audit_clean):
    alice = make_agent(credits=Decimal("-990.00"))  # 10.00 credits
    a = api_client(alice)
    original = place(a, market, "YES", "BUY", "0.50", 15)["order"]  # 7.50 reserved

    with unchanged(audit_clean):
        error = assert_error(amend(a, original["id"], size=25), 400, "insufficient_balance")
    assert error["detail"], error
    assert a.get(f"{API}/orders/{original['id']}/").json() == original
    assert balances(alice) == (Decimal("10.00"), Decimal("7.50"))

    # What the balance holds goes: the old reserve is free for the replacement.
    assert amended(a, original["id"], size=20)["order"]["size"] == 20
    assert balances(alice) == (Decimal("10.00"), Decimal("10.00"))
    audit_clean()


def test_an_amend_to_no_more_than_the_filled_contracts_is_refused(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    a = api_client(alice)
    original = place(a, market, "YES", "BUY", "0.40", 10)["order"]
    place(api_client(bob), market, "NO", "BUY", "0.60", 4)

    with unchanged(audit_clean):
        for size in (4, 3):
            error = assert_error(amend(a, original["id"], size=size), 400, "invalid_size")
            assert error["detail"] == {"size": size, "filled": 4}
        assert_error(amend(a, original["id"], size=4, price="0.45"), 400, "invalid_size")

    # One more than filled goes, in place (smaller, same price): 1 contract left to fill.
    order = amended(a, original["id"], size=5)["order"]
    assert (order["id"], order["size"], order["filled"], order["remaining"], order["status"]) == (
        original["id"],
        5,
        4,
        1,
        "partial",
    )
    assert balances(alice)[1] == Decimal("0.40")
    audit_clean()


def test_an_order_that_no_longer_rests_or_is_not_yours_cannot_be_amended(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    a, b = api_client(alice), api_client(bob)
    filled = place(a, market, "YES", "BUY", "0.40", 2)["order"]
    place(b, market, "NO", "BUY", "0.60", 2)
    cancelled = place(a, market, "YES", "BUY", "0.30", 2)["order"]
    assert a.delete(f"{API}/orders/{cancelled['id']}/").status_code == 200
    replaced = place(a, market, "YES", "BUY", "0.20", 2)["order"]
    replacement = amended(a, replaced["id"], price="0.21")["order"]
    bobs = place(b, market, "NO", "BUY", "0.10", 1)["order"]

    with unchanged(audit_clean):
        for order, detail in (
            (filled, {"status": "filled"}),
            (cancelled, {"status": "cancelled"}),
            (replaced, {"status": "cancelled", "replaced_by": replacement["id"]}),
        ):
            error = assert_error(amend(a, order["id"], size=1), 409, "order_not_amendable")
            assert error["detail"] == {"order": order["id"], **detail}
        for missing in (bobs["id"], str(uuid.uuid4()), "not-an-id"):
            assert_error(amend(a, missing, price="0.11"), 404, "not_found")
    assert b.get(f"{API}/orders/{bobs['id']}/").json() == bobs


def test_an_amend_to_the_same_price_and_size_changes_nothing(market, make_agent, audit_clean):
    alice = make_agent()
    a = api_client(alice)
    original = place(a, market, "YES", "BUY", "0.40", 5)["order"]

    with unchanged(audit_clean):
        before = feed_seq(alice)
        for fields in ({"price": "0.40", "size": 5}, {"price": "0.400"}, {"size": 5}):
            answer = amended(a, original["id"], **fields)
            assert (answer["order"], answer["replaced"], answer["trades"]) == (original, None, [])
        assert feed_seq(alice) == before


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_request"),
        ({"price": None, "size": None}, "invalid_request"),
        ({"size": 3, "side": "NO"}, "invalid_request"),
        ({"price": "0.405"}, "invalid_price"),
        ({"price": "1.00"}, "invalid_price"),
        ({"price": ""}, "invalid_price"),
        ({"size": 0}, "invalid_size"),
        ({"size": "many"}, "invalid_size"),
        ({"size": 2.5}, "invalid_size"),
        ({"size": True}, "invalid_size"),
    ],
    ids=str,
)
def test_an_amend_with_a_bad_body_is_refused_naming_what_is_wrong(body, code, market, make_agent, audit_clean):
    alice = make_agent()
    a = api_client(alice)
    original = place(a, market, "YES", "BUY", "0.40", 5)["order"]
    with unchanged(audit_clean):
        error = assert_error(a.patch(f"{API}/orders/{original['id']}/", body), 400, code)
    assert error["detail"], error
    if "side" in body:
        assert list(error["detail"]) == ["side"]


def test_an_amend_whose_body_is_not_an_object_is_refused(market, make_agent, audit_clean):
    alice = make_agent()
    a = api_client(alice)
    original = place(a, market, "YES", "BUY", "0.40", 5)["order"]
    with unchanged(audit_clean):
        for body in ([{"size": 3}], "3", 3):
            assert_error(a.patch(f"{API}/orders/{original['id']}/", body), 400, "invalid_request")


# --------------------------------------------------------------------------------------------------------------------
# POST /orders/ with dry_run (preview)


def everything() -> dict[str, Any]:
    """Counts and sequences a preview must leave alone, besides :func:`testsupport.api.state`."""
    return {
        "orders": Order.objects.count(),
        "trades": Trade.objects.count(),
        "market_events": MarketEvent.objects.count(),
        "agent_events": AgentEvent.objects.count(),
        "market_seqs": list(Market.objects.order_by("id").values_list("id", "seq")),
        "feed_seqs": list(Agent.objects.order_by("id").values_list("id", "feed_seq")),
    }


def test_a_preview_answers_the_fills_reserve_balance_and_position_and_stores_nothing(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    b = api_client(bob)
    place(b, market, "NO", "BUY", "0.45", 3)  # YES asks: 3 at 0.55
    place(b, market, "NO", "BUY", "0.40", 4)  # and 4 at 0.60
    a = api_client(alice)

    with unchanged(audit_clean):
        before = everything()
        answer = preview(a, market, "YES", "BUY", "0.62", 10, client_order_id="try")
        assert everything() == before

    assert set(answer) == {
        "dry_run",
        "status",
        "error",
        "order",
        "fills",
        "self_trade_cancels",
        "reserve",
        "balance",
        "locked_balance",
        "available_balance",
        "position",
    }
    assert (answer["status"], answer["error"], answer["self_trade_cancels"]) == (201, None, [])
    order = answer["order"]
    assert (order["id"], order["created_at"], order["updated_at"]) == (None, None, None)
    assert {key: order[key] for key in ("price", "size", "filled", "status", "client_order_id")} == {
        "price": "0.62",
        "size": 10,
        "filled": 7,
        "status": "partial",
        "client_order_id": "try",
    }
    assert answer["fills"] == [
        {"price": "0.55", "fill_price": "0.55", "size": 3, "taker_side": "YES"},
        {"price": "0.60", "fill_price": "0.60", "size": 4, "taker_side": "YES"},
    ]
    assert answer["reserve"] == {"credits": "1.86", "contracts": 0}  # 3 resting at 0.62
    # 1.65 + 2.40 paid.
    assert (answer["balance"], answer["locked_balance"], answer["available_balance"]) == ("995.95", "1.86", "994.09")
    assert (answer["position"]["market"], answer["position"]["yes_shares"], answer["position"]["no_shares"]) == (
        str(market.id),
        7,
        0,
    )

    # The same order, placed now, does exactly that.
    placed = place(a, market, "YES", "BUY", "0.62", 10, client_order_id="try")
    assert [(t["price"], t["size"], t["taker_side"]) for t in placed["trades"]] == [
        (f["price"], f["size"], f["taker_side"]) for f in answer["fills"]
    ]
    assert {key: value for key, value in placed["order"].items() if key not in ("id", "created_at", "updated_at")} == {
        key: value for key, value in order.items() if key not in ("id", "created_at", "updated_at")
    }
    alice.refresh_from_db()
    assert (str(alice.balance), str(alice.locked_balance), str(alice.available_balance)) == (
        answer["balance"],
        answer["locked_balance"],
        answer["available_balance"],
    )
    assert position_view(Position.objects.get(agent=alice, market=market)) == answer["position"]
    audit_clean()


def test_a_preview_of_a_sell_and_of_a_self_trade_shows_prices_on_the_order_s_own_side(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    a, b = api_client(alice), api_client(bob)
    mint(a, b, market, 5, "0.50")  # alice holds 5 YES
    place(b, market, "YES", "BUY", "0.45", 2)  # bob bids 0.45 for YES: a NO bid at 0.55
    own = place(a, market, "NO", "BUY", "0.20", 1)["order"]  # alice's own NO bid (a YES ask at 0.80)

    with unchanged(audit_clean):
        before = everything()
        sell = preview(a, market, "YES", "SELL", "0.40", 3)
        crossing = preview(a, market, "YES", "BUY", "0.85", 1)
        assert everything() == before

    # Selling YES at 0.40 meets bob's bid at 0.45: 2 sold there, 1 rests as a NO bid, its contract reserved.
    assert sell["fills"] == [{"price": "0.45", "fill_price": "0.45", "size": 2, "taker_side": "NO"}]
    assert sell["reserve"] == {"credits": "0.00", "contracts": 1}
    assert (sell["position"]["yes_shares"], sell["position"]["yes_reserved"]) == (3, 1)
    assert Decimal(sell["balance"]) == balances(alice)[0] + Decimal("0.90")
    # A YES bid at 0.85 would cross alice's own NO bid at 0.20: it would be cancelled, not traded with.
    assert (crossing["fills"], crossing["self_trade_cancels"]) == ([], [own["id"]])
    assert crossing["order"]["status"] == "open"
    assert stored(own).status == Order.Status.OPEN


def test_a_preview_of_a_fill_or_kill_that_cannot_fill_shows_it_cancelled_and_nothing_spent(
    market, make_agent, audit_clean
):
    alice, bob = make_agent(), make_agent()
    place(api_client(bob), market, "NO", "BUY", "0.45", 3)  # 3 YES at 0.55

    with unchanged(audit_clean):
        answer = preview(api_client(alice), market, "YES", "BUY", "0.60", 10, time_in_force="FOK")

    assert (answer["status"], answer["fills"]) == (201, [])
    assert (answer["order"]["status"], answer["order"]["cancel_reason"], answer["order"]["filled"]) == (
        "cancelled",
        "fok_unfilled",
        0,
    )
    assert answer["reserve"] == {"credits": "0.00", "contracts": 0}
    assert (answer["balance"], answer["locked_balance"]) == ("1000.00", "0.00")


def test_a_preview_of_a_buy_of_no_shows_the_no_price_it_pays(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    place(api_client(bob), market, "YES", "BUY", "0.45", 2)

    answer = preview(api_client(alice), market, "NO", "BUY", "0.60", 2)

    assert answer["fills"] == [{"price": "0.45", "fill_price": "0.55", "size": 2, "taker_side": "NO"}]
    assert answer["balance"] == "998.90" and answer["position"]["no_shares"] == 2
    assert answer["reserve"] == {"credits": "0.00", "contracts": 0}


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"price": "0.90", "size": 2000}, 400, "insufficient_balance"),
        ({"price": "0.50", "size": 1, "post_only": True}, 409, "post_only_would_cross"),
        ({"price": "0.405", "size": 1}, 400, "invalid_price"),
        ({"price": "0.40", "size": 0}, 400, "invalid_size"),
        ({"price": "0.40", "size": 1, "time_in_force": "GTD"}, 400, "invalid_request"),
        ({"price": "0.40", "size": 1, "closed": True}, 409, "market_closed"),
        ({"price": "0.40", "size": 1, "unknown_market": True}, 404, "not_found"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_preview_of_an_order_that_would_be_refused_answers_200_with_its_status_and_error(
    fields, status, code, market, make_agent, audit_clean
):
    alice, bob = make_agent(), make_agent()
    place(api_client(bob), market, "NO", "BUY", "0.55", 2)  # a YES ask at 0.45
    fields = dict(fields)
    target = market
    if fields.pop("closed", False):
        market_close(market_id=market.id)
    if fields.pop("unknown_market", False):
        target = Market(id=uuid.uuid4())
    client = api_client(alice)
    price, size = fields.pop("price"), fields.pop("size")

    with unchanged(audit_clean):
        before = everything()
        answer = preview(client, target, "YES", "BUY", price, size, **fields)
        assert everything() == before
        # The same order sent for real gets that error.
        assert_error(post_order(client, target, "YES", "BUY", price, size, **fields), status, code)

    assert (answer["status"], answer["error"]["code"]) == (status, code)
    assert set(answer["error"]) == {"code", "message", "detail"}
    assert (answer["order"], answer["fills"], answer["reserve"], answer["balance"], answer["position"]) == (
        None,
        [],
        None,
        None,
        None,
    )


def test_a_preview_of_a_repeated_client_order_id_answers_200_with_the_stored_order(market, make_agent, audit_clean):
    alice = make_agent()
    a = api_client(alice)
    placed = place(a, market, "YES", "BUY", "0.40", 5, client_order_id="again")["order"]

    with unchanged(audit_clean):
        before = everything()
        answer = preview(a, market, "YES", "BUY", "0.40", 5, client_order_id="again")
        conflict = preview(a, market, "YES", "BUY", "0.41", 5, client_order_id="again")
        assert everything() == before

    assert (answer["status"], answer["error"], answer["order"], answer["fills"]) == (200, None, placed, [])
    assert (conflict["status"], conflict["error"]["code"]) == (409, "client_order_id_conflict")


@pytest.mark.parametrize("flag", [False, "false", 0])
def test_dry_run_false_places_the_order(flag, market, make_agent, audit_clean):
    alice = make_agent()
    response = post_order(api_client(alice), market, "YES", "BUY", "0.40", 5, dry_run=flag)
    assert response.status_code == 201, response.content
    assert set(response.json()) == {"order", "trades"}
    assert Order.objects.filter(agent=alice).count() == 1
    audit_clean()


@pytest.mark.parametrize("flag", ["maybe", 2, None, [], {}])
def test_a_dry_run_that_is_not_true_or_false_is_refused(flag, market, make_agent, audit_clean):
    client = api_client(make_agent())
    with unchanged(audit_clean):
        error = assert_error(post_order(client, market, "YES", "BUY", "0.40", 5, dry_run=flag), 400, "invalid_request")
    assert list(error["detail"]) == ["dry_run"]


# --------------------------------------------------------------------------------------------------------------------
# POST /agents/me/heartbeat/ and the dead-man's switch


def deadline_of(agent: Agent):
    return Agent.objects.values_list("heartbeat_timeout", "heartbeat_deadline").get(id=agent.id)


def expire_now(agent: Agent) -> None:
    """Move the agent's armed switch's deadline into the past, as time passing would."""
    Agent.objects.filter(id=agent.id).update(heartbeat_deadline=timezone.now() - timedelta(seconds=1))


def test_a_heartbeat_arms_the_switch_and_a_zero_timeout_disarms_it(make_agent):
    alice = make_agent()
    client = api_client(alice)

    start = timezone.now()
    response = heartbeat_request(client, {"timeout_seconds": 30})

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"armed", "timeout_seconds", "deadline", "cancelled"}
    assert (body["armed"], body["timeout_seconds"], body["cancelled"]) == (True, 30, 0)
    deadline = assert_time(body["deadline"])
    assert start + timedelta(seconds=30) <= deadline <= timezone.now() + timedelta(seconds=30)
    assert deadline_of(alice) == (30, deadline)

    body = heartbeat_request(client, {"timeout_seconds": 0}).json()
    assert body == {"armed": False, "timeout_seconds": None, "deadline": None, "cancelled": 0}
    assert deadline_of(alice) == (None, None)


@pytest.mark.parametrize(
    "body",
    [
        {"timeout_seconds": 4},
        {"timeout_seconds": 301},
        {"timeout_seconds": -1},
        {"timeout_seconds": "10"},
        {"timeout_seconds": True},
        {"timeout_seconds": 10.0},
        {"timeout_seconds": None},
        {},
        {"timeout_seconds": 10, "agent": "someone"},
        [10],
    ],
    ids=str,
)
def test_a_heartbeat_with_a_bad_timeout_is_refused_and_leaves_the_switch_as_it_was(body, make_agent):
    alice = make_agent()
    client = api_client(alice)
    armed = heartbeat_request(client, {"timeout_seconds": 60}).json()

    error = assert_error(heartbeat_request(client, body), 400, "invalid_request")

    assert error["detail"], error
    if isinstance(body, dict) and "agent" not in body:
        assert list(error["detail"]) == ["timeout_seconds"]
    assert deadline_of(alice) == (60, assert_time(armed["deadline"]))


def test_after_the_deadline_orders_are_refused_until_the_switch_fires(market, make_agent, audit_clean):
    alice = make_agent()
    client = api_client(alice)
    resting = place(client, market, "YES", "BUY", "0.40", 5)["order"]
    assert heartbeat_request(client, {"timeout_seconds": 5}).status_code == 200
    expire_now(alice)

    with unchanged(audit_clean):
        error = assert_error(post_order(client, market, "YES", "BUY", "0.30", 1), 409, "heartbeat_expired")
        assert_time(error["detail"]["deadline"])
        [entry] = place_batch(client, order_body(market, "YES", "BUY", "0.30", 1))
        assert status_codes([entry]) == [(409, "heartbeat_expired")]
        assert_error(amend(client, resting["id"], price="0.41"), 409, "heartbeat_expired")
        would = preview(client, market, "YES", "BUY", "0.30", 1)
        assert (would["status"], would["error"]["code"]) == (409, "heartbeat_expired")

    # Cancelling is still allowed.
    assert client.delete(f"{API}/orders/{resting['id']}/").status_code == 200
    audit_clean()


def test_an_expired_switch_cancels_every_resting_order_releases_the_reserves_disarms_and_says_so(
    market, make_agent, audit_clean
):
    alice, bob, carol = make_agent(), make_agent(), make_agent()
    other = new_market(question="Will it snow?")
    a, b = api_client(alice), api_client(bob)
    mint(a, b, market, 4)  # alice holds 4 YES
    orders = [
        place(a, market, "YES", "BUY", "0.30", 5)["order"],
        place(a, market, "YES", "SELL", "0.80", 3)["order"],
        place(a, other, "NO", "BUY", "0.20", 7)["order"],
    ]
    kept = place(api_client(carol), other, "YES", "BUY", "0.10", 1)["order"]
    armed = heartbeat_request(a, {"timeout_seconds": 5}).json()
    assert heartbeat_request(api_client(carol), {"timeout_seconds": 300}).json()["armed"] is True
    balance = balances(alice)[0]
    deadline = assert_time(armed["deadline"])
    feed = feed_seq(alice)

    assert heartbeat.heartbeats_expire_due(now=timezone.now()) == 0  # not yet
    assert heartbeat.heartbeats_expire_due(now=deadline + timedelta(seconds=1)) == 1

    for order in orders:
        assert (stored(order).status, stored(order).cancel_reason) == ("cancelled", "heartbeat_expired")
    assert balances(alice) == (balance, Decimal("0.00"))
    assert holding(alice, market) == (4, 0, 0, 0)
    assert deadline_of(alice) == (None, None)
    # carol's switch was not due: armed still, and her order rests.
    assert deadline_of(carol)[0] == 300 and stored(kept).status == Order.Status.OPEN
    last = AgentEvent.objects.filter(agent=alice).order_by("-seq").first()
    assert (last.kind, last.seq) == (AgentEvent.Kind.HEARTBEAT, feed_seq(alice))
    message = stored_messages(alice.id, feed)[-1]
    assert message == {
        "type": "heartbeat",
        "seq": feed_seq(alice),
        "event": "expired",
        "deadline": armed["deadline"],  # as the API wrote it
        "cancelled": message["cancelled"],
    }
    assert sorted(message["cancelled"]) == sorted(order["id"] for order in orders)
    # Fired once: a second pass finds nothing due, and alice may trade again.
    assert heartbeat.heartbeats_expire_due(now=deadline + timedelta(seconds=2)) == 0
    place(a, market, "YES", "BUY", "0.30", 1)
    audit_clean()


def test_a_late_heartbeat_fires_the_switch_first_then_arms_it_again(market, make_agent, audit_clean):
    alice = make_agent()
    a = api_client(alice)
    orders = [place(a, market, "YES", "BUY", price, 2)["order"] for price in ("0.30", "0.31")]
    heartbeat_request(a, {"timeout_seconds": 5})
    expire_now(alice)

    body = heartbeat_request(a, {"timeout_seconds": 20}).json()

    assert (body["armed"], body["timeout_seconds"], body["cancelled"]) == (True, 20, 2)
    assert assert_time(body["deadline"]) > timezone.now() + timedelta(seconds=15)
    assert [(stored(o).status, stored(o).cancel_reason) for o in orders] == [("cancelled", "heartbeat_expired")] * 2
    assert balances(alice) == (Decimal("1000.00"), Decimal("0.00"))
    assert AgentEvent.objects.filter(agent=alice, kind=AgentEvent.Kind.HEARTBEAT).count() == 1
    # Armed again, and before its new deadline orders go.
    place(a, market, "YES", "BUY", "0.30", 1)
    audit_clean()


def test_a_heartbeat_before_the_deadline_moves_it_and_keeps_the_orders(market, make_agent, audit_clean):
    alice = make_agent()
    a = api_client(alice)
    order = place(a, market, "YES", "BUY", "0.30", 2)["order"]
    first = assert_time(heartbeat_request(a, {"timeout_seconds": 5}).json()["deadline"])

    second = assert_time(heartbeat_request(a, {"timeout_seconds": 60}).json()["deadline"])

    assert second > first + timedelta(seconds=50)
    assert heartbeat.heartbeats_expire_due(now=first + timedelta(seconds=1)) == 0
    assert stored(order).status == Order.Status.OPEN
    assert not AgentEvent.objects.filter(agent=alice, kind=AgentEvent.Kind.HEARTBEAT).exists()
    audit_clean()


def test_run_scheduler_once_fires_the_switches_that_are_due(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    due = place(api_client(alice), market, "YES", "BUY", "0.30", 2)["order"]
    kept = place(api_client(bob), market, "YES", "BUY", "0.31", 2)["order"]
    for agent in (alice, bob):
        heartbeat_request(api_client(agent), {"timeout_seconds": 60})
    expire_now(alice)

    call_command("run_scheduler", "--once")

    assert (stored(due).status, stored(due).cancel_reason) == ("cancelled", "heartbeat_expired")
    assert stored(kept).status == Order.Status.OPEN
    assert deadline_of(alice) == (None, None) and deadline_of(bob)[0] == 60
    audit_clean()


# --------------------------------------------------------------------------------------------------------------------
# Rate limits: a batch weighs one write per order or id


@pytest.fixture
def write_budget(settings):
    def set_budget(rate: str) -> None:
        settings.MOLTSTREET = {**settings.MOLTSTREET, "RATES": {**settings.MOLTSTREET["RATES"], "agent_write": rate}}

    return set_budget


def test_a_batch_costs_one_write_per_order_or_id_it_carries(write_budget, market, make_agent, audit_clean):
    write_budget("6/min")
    client = api_client(make_agent())
    answers = place_batch(client, *(order_body(market, "YES", "BUY", f"0.1{n}", 1) for n in range(3)))  # 3 of 6

    with unchanged(audit_clean):
        response = client.post(f"{API}/orders/batch/", {"orders": [_one(market)] * 4})  # 3 + 4 > 6
        assert_error(response, 429, "rate_limited")
        assert int(response["Retry-After"]) >= 1

    assert len(cancel_batch(client, answers[0]["order"]["id"], answers[1]["order"]["id"])) == 2  # 5 of 6
    with unchanged(audit_clean):
        assert_error(
            client.post(f"{API}/orders/batch-cancel/", {"ids": [answers[2]["order"]["id"]] * 2}), 429, "rate_limited"
        )
    place_batch(client, _one(market))  # the 6th
    with unchanged(audit_clean):
        assert_error(post_order(client, market, "YES", "BUY", "0.30", 1), 429, "rate_limited")


def test_a_batch_refused_as_a_whole_costs_one_write(write_budget, market, make_agent, audit_clean):
    write_budget("3/min")
    client = api_client(make_agent())

    with unchanged(audit_clean):
        assert_error(client.post(f"{API}/orders/batch/", {"orders": [_one(market)] * 21}), 400, "invalid_request")
        assert_error(client.post(f"{API}/orders/batch-cancel/", {"ids": []}), 400, "invalid_request")
    place_batch(client, _one(market))  # the 3rd write: the two refusals cost one each
    with unchanged(audit_clean):
        assert_error(post_order(client, market, "YES", "BUY", "0.30", 1), 429, "rate_limited")
