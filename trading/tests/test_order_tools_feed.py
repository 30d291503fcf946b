"""The order tools of issue 16 on the websocket feeds: the dead-man's switch's ``heartbeat`` message,
``/ws/agent/?cancel_on_disconnect=``, and an amend's ``amended`` order message and public ``book`` level.

As trading/tests/test_consumers.py (whose ``Feed`` client and channel-layer fixture these tests use): sync tests that
run their websocket part with ``async_to_sync``, trading through the services via ``sync_to_async`` so that it
commits and publishes through the real channel layer.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agents.models import Agent, AgentEvent
from testsupport.api import assert_time
from trading import heartbeat
from trading.consumers import CLOSE_INVALID_REQUEST
from trading.models import Order
from trading.orders import order_amend
from trading.tests.test_consumers import (  # noqa: F401  (channel_layer: the autouse fixture, used here too)
    STEP,
    Feed,
    agent_feed,
    channel_layer,
    feed_seq_of,
    market_path,
    place,
    refusal,
    run,
    seq_of,
)

pytestmark = pytest.mark.django_db(transaction=True)


def flagged_feed(agent, flag: str | None) -> Feed:
    """A client of ``agent``'s private feed opened with ``?cancel_on_disconnect=<flag>`` (none: without it)."""
    path = "/ws/agent/" + (f"?cancel_on_disconnect={flag}" if flag is not None else "")
    return Feed(path, [(b"authorization", f"Bearer {agent.api_key}".encode())])


async def close(feed: Feed) -> None:
    """Close the connection from the client's side and wait until the server's consumer has finished with it."""
    await feed.communicator.disconnect(timeout=STEP)


def statuses(orders: list[Order]) -> list[tuple[str, str]]:
    return [tuple(Order.objects.values_list("status", "cancel_reason").get(id=o.id)) for o in orders]


def test_the_heartbeat_message_reaches_an_open_private_feed_when_the_switch_fires(market, make_agent, audit_clean):
    alice = make_agent()
    orders = [place(alice, market, "YES", "BUY", price, 2).order for price in ("0.30", "0.31")]
    beat = heartbeat.heartbeat_arm(agent=alice, timeout_seconds=5)

    async def scenario():
        feed = agent_feed(alice)
        assert await feed.connect()
        snapshot = await feed.recv()
        fired = await sync_to_async(heartbeat.heartbeats_expire_due)(now=beat.deadline + timedelta(seconds=1))
        await feed.until(lambda m: m["type"] == "heartbeat")
        await close(feed)
        return snapshot, fired, feed.received[1:]

    snapshot, fired, messages = run(scenario)

    assert fired == 1
    assert [m["seq"] for m in messages] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(messages)))
    cancelled = [m for m in messages if m["type"] == "order"]
    assert sorted(m["order"]["id"] for m in cancelled) == sorted(str(o.id) for o in orders)
    assert {(m["event"], m["order"]["status"], m["order"]["cancel_reason"]) for m in cancelled} == {
        ("cancelled", "cancelled", "heartbeat_expired")
    }
    *_, balance, last = messages
    assert (balance["type"], balance["locked_balance"]) == ("balance", "0.00")
    assert last == {
        "type": "heartbeat",
        "seq": feed_seq_of(alice),
        "event": "expired",
        "deadline": last["deadline"],
        "cancelled": last["cancelled"],
    }
    assert assert_time(last["deadline"]) == beat.deadline
    assert sorted(last["cancelled"]) == sorted(str(o.id) for o in orders)
    audit_clean()


def test_a_private_feed_opened_with_cancel_on_disconnect_cancels_the_resting_orders_when_it_closes(
    market, make_agent, audit_clean
):
    alice, bob = make_agent(), make_agent()
    orders = [place(alice, market, "YES", "BUY", "0.30", 2).order, place(alice, market, "NO", "BUY", "0.20", 3).order]
    bobs = place(bob, market, "YES", "BUY", "0.10", 1).order
    heartbeat.heartbeat_arm(agent=alice, timeout_seconds=60)

    async def scenario():
        watching, guarded = agent_feed(alice), flagged_feed(alice, "true")
        assert await watching.connect() and await guarded.connect()
        await watching.recv()
        await guarded.recv()
        await close(guarded)
        message = await watching.until(lambda m: m["type"] == "heartbeat")
        await close(watching)
        return message, watching.received

    message, received = run(scenario)

    assert statuses(orders) == [("cancelled", "disconnected")] * 2
    assert statuses([bobs]) == [("open", "")]
    assert {m["order"]["cancel_reason"] for m in received if m["type"] == "order"} == {"disconnected"}
    assert {key: message[key] for key in ("type", "event", "deadline")} == {
        "type": "heartbeat",
        "event": "disconnected",
        "deadline": None,
    }
    assert sorted(message["cancelled"]) == sorted(str(o.id) for o in orders)
    assert Agent.objects.values_list("locked_balance", flat=True).get(id=alice.id) == 0
    # The dead-man's switch stays armed.
    assert Agent.objects.values_list("heartbeat_timeout", flat=True).get(id=alice.id) == 60
    audit_clean()


@pytest.mark.parametrize("flag", [None, "false", "0", "FALSE"])
def test_a_private_feed_without_cancel_on_disconnect_leaves_the_orders_resting_when_it_closes(
    flag, market, make_agent, audit_clean
):
    alice = make_agent()
    order = place(alice, market, "YES", "BUY", "0.30", 2).order

    async def scenario():
        feed = flagged_feed(alice, flag)
        assert await feed.connect()
        await feed.recv()
        await close(feed)

    run(scenario)

    assert statuses([order]) == [("open", "")]
    assert not AgentEvent.objects.filter(agent=alice, kind=AgentEvent.Kind.HEARTBEAT).exists()
    audit_clean()


@pytest.mark.parametrize("flag", ["1", "True"])
def test_cancel_on_disconnect_takes_1_and_any_case_of_true(flag, market, make_agent, audit_clean):
    alice = make_agent()
    order = place(alice, market, "YES", "BUY", "0.30", 2).order

    async def scenario():
        feed = flagged_feed(alice, flag)
        assert await feed.connect()
        await feed.recv()
        await close(feed)

    run(scenario)

    assert statuses([order]) == [("cancelled", "disconnected")]
    audit_clean()


@pytest.mark.parametrize("flag", ["maybe", "yes", "2"])
def test_a_cancel_on_disconnect_that_is_not_true_or_false_is_refused_with_4400(flag, market, make_agent):
    alice = make_agent()
    order = place(alice, market, "YES", "BUY", "0.30", 2).order

    async def scenario():
        return await refusal(flagged_feed(alice, flag))

    message, code = run(scenario)

    assert (message["type"], message["code"]) == ("error", "invalid_request"), message
    assert "cancel_on_disconnect" in message["message"]
    assert code == CLOSE_INVALID_REQUEST == 4400
    # Refused, it was never the agent's feed: its closing cancels nothing.
    assert statuses([order]) == [("open", "")]


def test_an_amend_in_place_reaches_the_private_feed_as_amended_and_the_public_book_as_the_smaller_level(
    market, make_agent, audit_clean
):
    alice, carol = make_agent(), make_agent()
    order = place(alice, market, "YES", "BUY", "0.40", 10).order
    place(carol, market, "YES", "BUY", "0.40", 3)

    async def scenario():
        public, private = Feed(market_path(market)), agent_feed(alice)
        assert await public.connect() and await private.connect()
        await public.recv()
        await private.recv()
        await sync_to_async(order_amend)(agent=alice, order_id=order.id, size=4)
        book = await public.until(lambda m: m["type"] == "book")
        update = await private.until(lambda m: m["type"] == "order")
        balance = await private.until(lambda m: m["type"] == "balance")
        await close(public)
        await close(private)
        return book, update, balance

    book, update, balance = run(scenario)

    assert (book["seq"], book["levels"]) == (seq_of(market), [{"side": "YES", "price": "0.40", "size": 7}])
    assert (update["event"], update["market_seq"]) == ("amended", book["seq"])
    order_message: dict[str, Any] = update["order"]
    assert (order_message["id"], order_message["size"], order_message["remaining"], order_message["status"]) == (
        str(order.id),
        4,
        4,
        "open",
    )
    assert (balance["locked_balance"], balance["seq"]) == ("1.60", feed_seq_of(alice))
    audit_clean()
