"""Publishing committed events to the live feed (``trading.realtime``), watched at the channel layer's
``group_send``: what each group receives, how often, and that trading never depends on it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import timedelta
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from agents.models import Agent
from markets.models import MarketEvent
from markets.services import market_create
from testsupport.api import operator_resolver
from trading import realtime
from trading.lifecycle import market_close
from trading.models import Order, Trade
from trading.orders import order_cancel, order_place
from trading.resolution import market_resolve
from trading.tests.factories import mint

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, dict[str, Any]]]:
    """Every ``group_send`` of the channel layer, as ``(group, message)``, instead of sending it."""
    calls: list[tuple[str, dict[str, Any]]] = []

    async def group_send(group: str, message: dict[str, Any]) -> None:
        calls.append((group, message))

    monkeypatch.setattr(get_channel_layer(), "group_send", group_send)
    return calls


def place(agent, market, side: str, action: str, price: str, size: int):
    return order_place(agent=agent, market_id=market.id, side=side, action=action, price=price, size=size)


def to(sent, group: str) -> list[dict[str, Any]]:
    return [message for g, message in sent if g == group]


def test_one_transaction_is_one_group_send_to_its_market_and_one_to_each_involved_agent(market, make_agent, sent):
    alice, bob = make_agent(), make_agent()
    resting = place(alice, market, "YES", "BUY", "0.60", 10).order
    sent.clear()

    taking = place(bob, market, "NO", "BUY", "0.45", 4)

    assert sorted(group for group, _ in sent) == sorted(
        [realtime.market_group(market.id), realtime.agent_group(alice.id), realtime.agent_group(bob.id)]
    )
    [batch] = to(sent, realtime.market_group(market.id))
    assert batch["type"] == "market.batch"
    events = list(MarketEvent.objects.filter(market=market, seq__gt=resting.seq).order_by("seq"))
    assert len(events) == 3
    assert [m["seq"] for m in batch["messages"]] == [e.seq for e in events]
    assert [m["type"] for m in batch["messages"]] == ["book", "trade", "book"]
    taker_book, trade, maker_book = batch["messages"]
    assert taker_book["levels"] == []  # the taker filled at once: no level changed
    assert maker_book["levels"] == [{"side": "YES", "price": "0.60", "size": 6}]
    assert trade["trade"]["id"] == str(taking.trades[0].id)
    assert (trade["trade"]["price"], trade["trade"]["size"], trade["trade"]["taker_side"]) == ("0.60", 4, "NO")
    [alice_batch] = to(sent, realtime.agent_group(alice.id))
    [bob_batch] = to(sent, realtime.agent_group(bob.id))
    assert alice_batch["type"] == bob_batch["type"] == "agent.batch"
    # Each agent's messages in its own sequence: its order and fill messages in market seq order, then its changed
    # position, then its balance.
    assert [m["type"] for m in alice_batch["messages"]] == ["fill", "order", "position", "balance"]
    assert [m["type"] for m in bob_batch["messages"]] == ["order", "fill", "position", "balance"]
    for agent, batch in ((alice, alice_batch), (bob, bob_batch)):
        agent.refresh_from_db()
        assert [m["seq"] for m in batch["messages"]] == list(range(agent.feed_seq - 3, agent.feed_seq + 1))
    assert [m.get("market_seq") for m in bob_batch["messages"]] == [events[0].seq, events[1].seq, None, None]


def test_public_messages_name_no_agent_and_no_order_whatever_happens(market, make_agent, sent):
    alice, bob = make_agent(), make_agent()
    resting = place(alice, market, "YES", "BUY", "0.60", 10).order
    place(bob, market, "NO", "BUY", "0.45", 4)
    place(bob, market, "NO", "BUY", "0.20", 3)
    order_cancel(agent=alice, order_id=resting.id)
    market_close(market_id=market.id)
    market_resolve(market_id=market.id, outcome="YES", resolver=operator_resolver())

    public = json.dumps(to(sent, realtime.market_group(market.id)))
    private_ids = [str(a) for a in Agent.objects.values_list("id", flat=True)]
    private_ids += [str(o) for o in Order.objects.values_list("id", flat=True)]
    assert not [i for i in private_ids if i in public]
    for trade in Trade.objects.all():
        assert str(trade.id) in public
    for message in (m for batch in to(sent, realtime.market_group(market.id)) for m in batch["messages"]):
        assert set(message) <= {"type", "seq", "market", "levels", "trade", "event", "resolution"}, message
        if "resolution" in message:  # who resolved is public by design (DESIGN section 4): a name, never an id
            assert message["resolution"]["resolver"] == {"kind": "operator", "name": "test operator"}


def test_each_party_s_fill_carries_its_own_order_side_action_role_and_price(market, make_agent, sent):
    alice, bob, carol = make_agent(), make_agent(), make_agent()
    mint(alice, bob, market, 5)  # bob holds 5 NO
    selling = place(bob, market, "NO", "SELL", "0.30", 2).order  # rests in the YES queue at 0.70
    sent.clear()

    buying = place(carol, market, "NO", "BUY", "0.30", 2).order

    [bob_batch] = to(sent, realtime.agent_group(bob.id))
    [carol_batch] = to(sent, realtime.agent_group(carol.id))
    [bob_fill] = [m["fill"] for m in bob_batch["messages"] if m["type"] == "fill"]
    [carol_fill] = [m["fill"] for m in carol_batch["messages"] if m["type"] == "fill"]
    expected = {"price": "0.70", "fill_price": "0.30", "size": 2, "side": "NO"}
    assert {key: bob_fill[key] for key in expected} == expected
    assert {key: carol_fill[key] for key in expected} == expected
    assert (bob_fill["order"], bob_fill["action"], bob_fill["role"]) == (str(selling.id), "SELL", "maker")
    assert (carol_fill["order"], carol_fill["action"], carol_fill["role"]) == (str(buying.id), "BUY", "taker")
    assert bob_fill["id"] == carol_fill["id"] == str(Trade.objects.get(taker_order=buying).id)


def test_money_moved_without_an_order_still_reaches_the_agent_as_a_balance(make_agent, sent):
    creator, alice, bob = make_agent(), make_agent(), make_agent()
    [registration] = to(sent, realtime.agent_group(creator.id))
    assert registration["messages"] == [  # the grant: the first message of every agent's feed
        {
            "type": "balance",
            "seq": 1,
            "market": None,
            "balance": "1000.00",
            "locked_balance": "0.00",
            "available_balance": "1000.00",
        }
    ]
    sent.clear()
    market = market_create(creator=creator, question="Will it snow?", deadline=timezone.now() + timedelta(days=1))
    [creation] = to(sent, realtime.agent_group(creator.id))
    assert creation["messages"] == [
        {
            "type": "balance",
            "seq": 2,
            "market": str(market.id),
            "balance": "990.00",
            "locked_balance": "0.00",
            "available_balance": "990.00",
        }
    ]
    mint(alice, bob, market, 10, yes_price="0.40")
    sent.clear()

    market_resolve(
        market_id=market.id, outcome="YES", resolver=operator_resolver()
    )  # alice's 10 YES pay 10.00; bob's NO pay nothing

    # Neither had a resting order left, so these batches hold their settled position and the balance after the
    # payout; bob's balance did not move, but its position did.
    for agent, balance, pnl in ((alice, "1006.00", "6.00"), (bob, "994.00", "-6.00")):  # paid 4.00 and 6.00
        [batch] = to(sent, realtime.agent_group(agent.id))
        position, last = batch["messages"]
        assert (position["type"], last["type"], last["balance"]) == ("position", "balance", balance)
        assert position["position"] == {
            "market": str(market.id),
            "yes_shares": 0,
            "no_shares": 0,
            "yes_reserved": 0,
            "no_reserved": 0,
            "avg_yes_price": None,
            "avg_no_price": None,
            "realized_pnl": pnl,
        }
        assert last["seq"] == position["seq"] + 1


def test_a_rolled_back_transaction_publishes_nothing(market, make_agent, sent):
    alice = make_agent()
    sent.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        place(alice, market, "YES", "BUY", "0.50", 1)
        raise RuntimeError("the caller's transaction fails after the order")
    assert sent == []
    assert not Order.objects.exists()


def test_trading_goes_on_when_the_channel_layer_fails(market, make_agent, monkeypatch, caplog):
    async def down(group: str, message: dict[str, Any]) -> None:
        raise ConnectionError("Redis is unreachable")

    monkeypatch.setattr(get_channel_layer(), "group_send", down)
    alice, bob = make_agent(), make_agent()

    with caplog.at_level(logging.ERROR, logger="trading.realtime"):
        place(alice, market, "YES", "BUY", "0.55", 3)
        taking = place(bob, market, "NO", "BUY", "0.45", 3)

    assert taking.order.status == "filled"
    assert Trade.objects.filter(market=market).count() == 1
    assert any("group_send" in r.getMessage() and "Redis is unreachable" in r.getMessage() for r in caplog.records)


def test_a_publish_that_cannot_finish_holds_a_commit_no_longer_than_the_publish_timeout(
    market, make_agent, monkeypatch, settings, caplog
):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "LIVE_PUBLISH_TIMEOUT": 0.2}

    async def hangs(group: str, message: dict[str, Any]) -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(get_channel_layer(), "group_send", hangs)
    alice = make_agent()

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="trading.realtime"):
        placed = place(alice, market, "YES", "BUY", "0.55", 3)
    elapsed = time.monotonic() - started

    assert placed.order.status == "open"
    assert elapsed < 5, elapsed
    assert any("publishing market" in r.getMessage() for r in caplog.records)


def test_an_idle_subscriber_s_blocking_read_is_not_cut_by_the_redis_socket_timeout():
    """channels-redis waits up to ``brpop_timeout`` seconds in one blocking read of an idle channel; a socket timeout
    at or below that (redis-py's default is 5 s, the same as ``brpop_timeout``) crashes every quiet consumer."""
    layer = get_channel_layer()
    if not hasattr(layer, "brpop_timeout"):
        pytest.skip("not channels-redis")
    timeout = layer.create_pool(0).connection_kwargs.get("socket_timeout")
    assert timeout is None or timeout > layer.brpop_timeout + 1, timeout
