"""The private feed's messages as the trading services store them (``trading.agent_feed``, DESIGN section 8): built
in the transaction of the change, numbered per agent without gaps, rendered as the API renders the same things, and
exactly the difference between two snapshots. The websocket side is trading/tests/test_consumers.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from agents.models import Agent, AgentEvent
from agents.services import agent_grant_credits
from markets.services import market_create
from testsupport.api import api_client, operator_resolver
from trading import agent_feed, book_store
from trading.lifecycle import market_close, orders_expire
from trading.models import Order, Trade
from trading.orders import order_cancel, order_cancel_all
from trading.resolution import market_resolve
from trading.suspension import agent_suspend
from trading.tests.factories import mint, new_market, place

pytestmark = pytest.mark.django_db

API = "/api/v1"


def _soon(days: int = 0) -> datetime:
    return timezone.now() + timedelta(days=days, hours=1)


def feed_seq(agent: Agent) -> int:
    return Agent.objects.values_list("feed_seq", flat=True).get(id=agent.id)


def messages_after(agent: Agent, seq: int) -> list[dict[str, Any]]:
    return agent_feed.stored_messages(agent.id, seq)


def apply(state: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """A client's state (a snapshot's contents) after one message: an order rests or leaves, a position holds or
    empties, the balance is replaced; fills are history and change no state."""
    state = {**state, "orders": dict(state["orders"]), "positions": dict(state["positions"])}
    if message["type"] == "order":
        order = message["order"]
        if order["status"] in Order.RESTING:
            state["orders"][order["id"]] = order
        else:
            state["orders"].pop(order["id"], None)
    elif message["type"] == "position":
        position = message["position"]
        if position["yes_shares"] or position["no_shares"]:
            state["positions"][position["market"]] = position
        else:
            state["positions"].pop(position["market"], None)
    elif message["type"] == "balance":
        state.update({key: message[key] for key in ("balance", "locked_balance", "available_balance")})
    state["seq"] = message["seq"]
    return state


def as_state(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": snapshot["seq"],
        "balance": snapshot["balance"],
        "locked_balance": snapshot["locked_balance"],
        "available_balance": snapshot["available_balance"],
        "orders": {o["id"]: o for o in snapshot["orders"]},
        "positions": {p["market"]: p for p in snapshot["positions"]},
    }


def test_a_trade_stores_each_party_s_messages_numbered_in_its_own_sequence(market, make_agent):
    alice, bob = make_agent(), make_agent()
    before = {a.id: feed_seq(a) for a in (alice, bob)}
    resting = place(alice, market, "YES", "BUY", "0.60", 10).order
    taking = place(bob, market, "NO", "BUY", "0.45", 4)

    alice_messages = messages_after(alice, before[alice.id])
    bob_messages = messages_after(bob, before[bob.id])
    assert [m["type"] for m in alice_messages] == ["order", "balance", "fill", "order", "position", "balance"]
    assert [m["type"] for m in bob_messages] == ["order", "fill", "position", "balance"]
    for agent, messages in ((alice, alice_messages), (bob, bob_messages)):
        assert [m["seq"] for m in messages] == list(range(before[agent.id] + 1, feed_seq(agent) + 1))
    placed, _, maker_fill, partial, position, balance = alice_messages
    assert (placed["event"], placed["order"]["status"], placed["order"]["filled"]) == ("placed", "open", 0)
    assert (partial["event"], partial["order"]["status"], partial["order"]["filled"]) == ("partial", "partial", 4)
    [trade] = taking.trades
    assert maker_fill["fill"]["id"] == str(trade.id)
    assert (maker_fill["fill"]["order"], maker_fill["fill"]["role"]) == (str(resting.id), "maker")
    assert maker_fill["market_seq"] == maker_fill["fill"]["seq"] == trade.seq
    assert (bob_messages[0]["event"], bob_messages[0]["order"]["status"]) == ("filled", "filled")
    assert position["position"]["yes_shares"] == 4
    alice.refresh_from_db()
    assert (balance["balance"], balance["locked_balance"], balance["available_balance"]) == (
        str(alice.balance),
        str(alice.locked_balance),
        str(alice.available_balance),
    )
    assert all(m["market"] == str(market.id) for m in alice_messages + bob_messages)


def test_orders_fills_and_positions_are_rendered_as_the_api_renders_them(market, make_agent):
    alice, bob = make_agent(), make_agent()
    before = feed_seq(bob)
    place(alice, market, "YES", "BUY", "0.60", 3, client_order_id="alice-1")
    taking = place(bob, market, "NO", "BUY", "0.45", 3, client_order_id="bob-1", time_in_force="IOC")

    order, fill, position, _ = messages_after(bob, before)
    client = api_client(bob)
    assert order["order"] == client.get(f"{API}/orders/{taking.order.id}/").json()
    assert order["order"]["client_order_id"] == "bob-1"
    [api_fill] = client.get(f"{API}/trades/").json()["results"]
    assert fill["fill"] == api_fill
    [api_position] = client.get(f"{API}/positions/").json()["results"]
    assert position["position"] == {key: api_position[key] for key in position["position"]}


def test_the_feed_s_cheaper_rendering_gives_what_the_api_s_serializers_give(make_agent):
    """``agent_feed.render`` against ``trading.api``'s own rendering (``PlainRendering``, itself checked against DRF),
    over orders of every status, time in force and side, and every party of every trade."""
    from trading.api import FillSerializer, OrderSerializer

    alice, bob = make_agent(), make_agent()
    market = new_market()
    place(alice, market, "YES", "BUY", "0.37", 5, client_order_id="a-1")
    place(alice, market, "NO", "BUY", "0.21", 2, time_in_force="GTD", expires_at=_soon(days=2))
    place(bob, market, "NO", "BUY", "0.70", 3)  # fills 3 of alice's YES 0.37
    place(bob, market, "NO", "SELL", "0.30", 2, time_in_force="IOC")  # crosses nothing: its rest is cancelled
    place(alice, market, "YES", "SELL", "0.60", 1)  # rests as a NO bid at 0.40
    place(bob, market, "YES", "BUY", "0.65", 1)  # takes it at 0.60
    order_cancel_all(agent=alice)
    place(bob, market, "NO", "BUY", "0.05", 1, time_in_force="FOK")
    place(alice, market, "YES", "BUY", "0.44", 4)
    place(bob, market, "NO", "BUY", "0.56", 1)  # alice's bid is partly filled
    orders = list(Order.objects.all())
    assert {o.status for o in orders} == {"partial", "filled", "cancelled"}
    assert {o.cancel_reason for o in orders} >= {"user", "ioc_remainder", "fok_unfilled"}
    for order in orders:
        assert agent_feed.order_view(order) == OrderSerializer().to_representation(order), order
    for trade in Trade.objects.select_related("maker_order", "taker_order"):
        for agent_id in (trade.maker_agent_id, trade.taker_agent_id):
            context = {"request": SimpleNamespace(user=SimpleNamespace(id=agent_id))}
            assert agent_feed.fill_view(trade, agent_id) == FillSerializer(context=context).to_representation(trade)


def test_every_kind_of_change_leaves_the_snapshot_equal_to_the_last_one_plus_the_messages_since(make_agent):
    """Applied in order to a snapshot, the messages stored since rebuild the next snapshot exactly: orders placed,
    filled, cancelled (by the agent, self-trade, IOC, close, suspension), expired, a SELL's reserve, netting, a
    payout, another market, an operator's adjustment."""
    alice, bob, carol = make_agent(), make_agent(), make_agent()
    first, second = new_market(carol), new_market(carol, question="Will it snow?")
    start = agent_feed.agent_snapshot(alice.id, "connect")
    state = as_state(start)

    mint(alice, bob, first, 6, yes_price="0.40")  # alice holds 6 YES
    place(alice, first, "YES", "SELL", "0.70", 2)  # reserves 2 YES
    place(alice, first, "NO", "BUY", "0.20", 5)  # rests; would net against YES once filled
    place(bob, first, "YES", "BUY", "0.75", 1)  # takes 1 of alice's SELL
    place(alice, second, "YES", "BUY", "0.30", 4)
    resting = place(alice, second, "NO", "BUY", "0.10", 2, time_in_force="GTD", expires_at=_soon()).order
    place(alice, second, "NO", "BUY", "0.72", 2, time_in_force="IOC")  # self-trade: cancels the YES bid, then IOC
    order_cancel(agent=alice, order_id=Order.objects.filter(agent=alice, market=first, action="SELL").get().id)
    orders_expire(market_id=second.id, now=resting.expires_at)
    place(bob, first, "YES", "BUY", "0.80", 5)  # fills alice's NO 0.20 bid: nets 5 pairs
    agent_grant_credits(agent_id=alice.id, amount=Decimal("25.00"), memo="operator")
    place(alice, second, "YES", "BUY", "0.25", 1)
    market_close(market_id=first.id)
    market_resolve(market_id=first.id, outcome="YES", resolver=operator_resolver())
    place(alice, second, "NO", "BUY", "0.15", 3)
    agent_suspend(agent_id=alice.id)

    messages = messages_after(alice, start["seq"])
    assert [m["seq"] for m in messages] == list(range(start["seq"] + 1, feed_seq(alice) + 1))
    assert {m["type"] for m in messages} == {"order", "fill", "position", "balance"}
    events = {m["event"] for m in messages if m["type"] == "order"}
    assert events == {"placed", "partial", "filled", "cancelled", "expired"}
    for message in messages:
        state = apply(state, message)
    assert state == as_state(agent_feed.agent_snapshot(alice.id, "connect"))


def test_a_rolled_back_order_stores_no_message_and_takes_no_seq(market, make_agent):
    alice = make_agent()
    before = feed_seq(alice)
    with pytest.raises(RuntimeError), transaction.atomic():
        place(alice, market, "YES", "BUY", "0.50", 1)
        assert feed_seq(alice) == before + 2  # order, balance: in the transaction
        raise RuntimeError("the caller's transaction fails after the order")
    assert feed_seq(alice) == before
    assert not AgentEvent.objects.filter(agent=alice, seq__gt=before).exists()
    place(alice, market, "YES", "BUY", "0.50", 1)
    assert [m["seq"] for m in messages_after(alice, before)] == [before + 1, before + 2]


def test_money_outside_a_market_transaction_is_a_balance_message_too(make_agent):
    alice = make_agent()
    assert [(m["seq"], m["type"], m["market"], m["balance"]) for m in messages_after(alice, 0)] == [
        (1, "balance", None, "1000.00")  # the grant at registration
    ]
    market = market_create(creator=alice, question="Will it hail?", deadline=_soon(days=3))
    agent_grant_credits(agent_id=alice.id, amount=Decimal("-5.00"), memo="operator")
    assert [(m["seq"], m["market"], m["balance"]) for m in messages_after(alice, 1)] == [
        (2, str(market.id), "990.00"),  # the creation fee
        (3, None, "985.00"),
    ]


def test_cancelling_everything_numbers_one_transaction_per_market(make_agent):
    alice = make_agent()
    first, second = new_market(), new_market(question="Will it snow?")
    place(alice, first, "YES", "BUY", "0.30", 1)
    place(alice, second, "YES", "BUY", "0.30", 1)
    before = feed_seq(alice)
    order_cancel_all(agent=alice)
    messages = messages_after(alice, before)
    assert [(m["type"], m["market"]) for m in messages] == sorted(
        [("order", str(first.id)), ("balance", str(first.id)), ("order", str(second.id)), ("balance", str(second.id))],
        key=lambda pair: (pair[1], pair[0] == "balance"),
    )
    assert [m["seq"] for m in messages] == [before + 1, before + 2, before + 3, before + 4]


def test_the_snapshot_holds_resting_orders_and_held_positions_only(market, make_agent):
    alice, bob = make_agent(), make_agent()
    mint(alice, bob, market, 3, yes_price="0.40")
    resting = place(alice, market, "YES", "BUY", "0.30", 2).order
    cancelled = place(alice, market, "YES", "BUY", "0.20", 2).order
    order_cancel(agent=alice, order_id=cancelled.id)
    alice.refresh_from_db()

    snapshot = agent_feed.agent_snapshot(alice.id, "connect")
    assert snapshot["seq"] == alice.feed_seq
    assert (snapshot["type"], snapshot["reason"]) == ("snapshot", "connect")
    assert (snapshot["balance"], snapshot["locked_balance"], snapshot["available_balance"]) == (
        str(alice.balance),
        str(alice.locked_balance),
        str(alice.available_balance),
    )
    assert [o["id"] for o in snapshot["orders"]] == [str(resting.id)]
    assert snapshot["orders"][0] == api_client(alice).get(f"{API}/orders/{resting.id}/").json()
    [position] = snapshot["positions"]
    assert (position["market"], position["yes_shares"], position["avg_yes_price"]) == (str(market.id), 3, "0.4000")
    assert agent_feed.agent_snapshot(bob.id, "connect")["positions"][0]["no_shares"] == 3
    assert agent_feed.agent_snapshot("00000000-0000-0000-0000-000000000000", "connect") is None


def test_the_audit_checks_each_agent_s_sequence(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    mint(alice, bob, market, 2)
    audit_clean()


@pytest.mark.django_db(transaction=True)
def test_the_feed_adds_no_round_trip_to_an_order(market, make_agent, monkeypatch):
    """A crossing order is three round trips, as before the feed: the market lock with the crossing orders, the
    parties, and the write, whose one pipeline carries the agents' messages and feed sequences too."""
    alice, bob = make_agent(), make_agent()
    place(alice, market, "YES", "BUY", "0.50", 1)
    pipelines: list[list[str]] = []
    outside: list[str] = []
    pipelined = book_store._pipelined

    @contextmanager
    def counted() -> Iterator[None]:
        pipelines.append([])
        with pipelined():
            yield
        pipelines[-1].append("end")

    def record(execute, sql, params, many, context):
        inside = pipelines and pipelines[-1][-1:] != ["end"]
        (pipelines[-1] if inside else outside).append(sql)
        return execute(sql, params, many, context)

    monkeypatch.setattr(book_store, "_pipelined", counted)
    with connection.execute_wrapper(record):
        taking = place(bob, market, "NO", "BUY", "0.50", 1)
    assert len(taking.trades) == 1
    assert outside == [], outside
    assert len(pipelines) == 3
    write = " ".join(pipelines[-1])
    assert write.count(AgentEvent._meta.db_table) == 1  # one INSERT for all six messages
    assert AgentEvent.objects.filter(agent__in=[alice, bob], kind="fill").count() == 2
