"""The websocket feeds through ``moltstreet.asgi.application`` (docs/realtime.md is the contract checked here).

Each test is sync (pytest-asyncio is not used) and runs its websocket part with ``async_to_sync``; trading happens
through the trading services via ``sync_to_async``, so it commits (``transaction=True``), publishes from
``on_commit`` through the real channel layer (channels-redis on the tests' Redis, under a key prefix of the test's
own that is flushed afterwards) and the consumers read committed rows.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from agents.models import Agent, ApiKey
from agents.services import api_key_revoke
from agents.tests.factories import ApiKeyFactory
from markets import services as market_services
from markets.models import Market
from moltstreet.asgi import application
from testsupport.api import operator_resolver
from trading import feed_hub, realtime
from trading.consumers import (
    CLOSE_BUFFER_OVERFLOW,
    CLOSE_INVALID_REQUEST,
    CLOSE_KEY_REVOKED,
    CLOSE_RATE_LIMITED,
    HandshakeThrottle,
)
from trading.lifecycle import market_close
from trading.models import Order
from trading.orders import order_cancel, order_cancel_all, order_place
from trading.resolution import market_resolve
from trading.selectors import book_levels
from trading.tests.factories import new_market

pytestmark = pytest.mark.django_db(transaction=True)

STEP = 5.0  # seconds any one awaited message may take


@pytest.fixture(autouse=True)
def channel_layer(settings):
    """The configured channel layer under a key prefix of this test's own, flushed afterwards."""
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    if "redis" in layers["default"]["BACKEND"]:
        layers["default"]["CONFIG"]["prefix"] = f"test-ws-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = layers  # channels drops its cached layers when this setting changes
    layer = get_channel_layer()
    yield layer
    realtime.release_channel_layer(layer)  # the publisher's own connections, on its own loop
    async_to_sync(layer.flush)()


def run(scenario: Callable[[], Any]) -> Any:
    """Run an async scenario from a sync test."""
    return async_to_sync(scenario)()


def place(agent, market, side: str, action: str, price: str, size: int, **kwargs):
    return order_place(agent=agent, market_id=market.id, side=side, action=action, price=price, size=size, **kwargs)


aplace = sync_to_async(place)


class Feed:
    """A websocket client of ``application`` that keeps every JSON message it received."""

    def __init__(self, path: str, headers: list[tuple[bytes, bytes]] | None = None, client: str | None = None) -> None:
        self.communicator = WebsocketCommunicator(application, path, headers=headers)
        if client is not None:  # the client's address, as the server's socket sees it
            self.communicator.scope["client"] = (client, 50000)
        self.received: list[dict[str, Any]] = []
        self.frames: list[Any] = []  # every frame as received: an object, or a batch (a list of them)
        self.waiting: deque[dict[str, Any]] = deque()  # the rest of the last batch
        self.close_code: int | None = None

    async def connect(self) -> bool:
        connected, _code = await self.communicator.connect(timeout=STEP)
        return connected

    async def recv(self) -> dict[str, Any]:
        """The next message: of the last batched frame, or the next frame's (a batch is a JSON array)."""
        if not self.waiting:
            frame = await self.communicator.receive_json_from(timeout=STEP)
            self.frames.append(frame)
            self.waiting.extend(frame if isinstance(frame, list) else [frame])
        message = self.waiting.popleft()
        self.received.append(message)
        return message

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Receive until a message satisfies ``predicate``; returns it."""
        while True:
            message = await self.recv()
            if predicate(message):
                return message

    async def until_seq(self, seq: int) -> list[dict[str, Any]]:
        """Receive up to the message with ``seq``; returns the messages received on the way, that one included."""
        start = len(self.received)
        await self.until(lambda m: m.get("seq") == seq)
        return self.received[start:]

    async def closed(self) -> int:
        """Wait for the server to close the connection; returns the close code."""
        output = await self.communicator.receive_output(timeout=STEP)
        assert output["type"] == "websocket.close", output
        return output.get("code", 1000)

    async def disconnect(self) -> None:
        await self.communicator.disconnect()


# The framing of the market feeds the tests open: ``batch_ms`` None (a frame per message) unless ``framing`` says so.
FRAMING: dict[str, int | None] = {"batch_ms": None}


@pytest.fixture(params=["frame per message", "batched"])
def framing(request, monkeypatch) -> str:
    """Run the test on both framings of the market feed: a frame per message, and ``?batch_ms=20`` (served by the
    market's hub, docs/realtime.md "Batched frames"), whose contract is the same message for message."""
    monkeypatch.setitem(FRAMING, "batch_ms", 20 if request.param == "batched" else None)
    return request.param


def market_path(market, since: Any = None, batch_ms: Any = None) -> str:
    batch_ms = FRAMING["batch_ms"] if batch_ms is None else batch_ms
    query = [f"since={since}"] if since is not None else []
    query += [f"batch_ms={batch_ms}"] if batch_ms is not None else []
    return f"/ws/markets/{market.id}/" + ("?" + "&".join(query) if query else "")


def seq_of(market) -> int:
    return Market.objects.values_list("seq", flat=True).get(id=market.id)


aseq_of = sync_to_async(seq_of)


def book_of(market) -> dict[str, list[dict[str, Any]]]:
    levels = book_levels(market)
    return {"yes": levels["yes"], "no": levels["no"]}


def apply_book(book: dict[str, list[dict[str, Any]]], message: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A client's book after a ``book`` message: each level set to its absolute size, size 0 removes it."""
    sizes = {(side, level["price"]): level["size"] for side in ("yes", "no") for level in book[side]}
    for level in message["levels"]:
        sizes[(level["side"].lower(), level["price"])] = level["size"]
    return {
        side: [
            {"price": price, "size": size}
            for (s, price), size in sorted(sizes.items(), key=lambda item: Decimal(item[0][1]), reverse=True)
            if s == side and size
        ]
        for side in ("yes", "no")
    }


def trade_some(market, alice, bob) -> None:
    """Resting bids on both sides, a partial fill, a full fill and a cancel: every kind of book change."""
    place(alice, market, "YES", "BUY", "0.40", 5)
    place(alice, market, "YES", "BUY", "0.45", 3)
    resting_no = place(bob, market, "NO", "BUY", "0.30", 4).order
    place(bob, market, "NO", "BUY", "0.60", 4)  # takes 3 at YES 0.45, then 1 at YES 0.40
    place(alice, market, "YES", "SELL", "0.60", 2)  # sells 2 of its 4 YES: rests as a NO bid at 0.40
    order_cancel(agent=bob, order_id=resting_no.id)


# --------------------------------------------------------------------------------------------------------------------
# The public market feed


def test_a_new_subscriber_gets_a_snapshot_whose_seq_matches_its_book_trades_and_market(market, make_agent):
    alice, bob = make_agent(), make_agent()
    trade_some(market, alice, bob)
    market.refresh_from_db()

    async def scenario():
        feed = Feed(market_path(market))
        assert await feed.connect()
        snapshot = await feed.recv()
        await feed.disconnect()
        return snapshot

    snapshot = run(scenario)
    assert snapshot["type"] == "snapshot"
    assert (snapshot["reason"], snapshot["seq"]) == ("connect", market.seq)
    assert snapshot["book"] == book_of(market)
    assert snapshot["book"]["yes"] == [{"price": "0.40", "size": 4}]
    assert snapshot["book"]["no"] == [{"price": "0.40", "size": 2}]
    trades = snapshot["trades"]
    assert [(t["price"], t["size"], t["taker_side"]) for t in trades] == [("0.40", 1, "NO"), ("0.45", 3, "NO")]
    assert [t["seq"] for t in trades] == sorted((t["seq"] for t in trades), reverse=True)
    assert all(t["seq"] <= market.seq for t in trades)
    assert snapshot["market"] == {
        "id": str(market.id),
        "question": market.question,
        "status": "open",
        "outcome": None,
        "yes_price": "0.40",
        "no_price": "0.60",
        "best_bid": "0.40",
        "best_ask": "0.60",
        "volume": 4,
        "deadline": market.deadline.isoformat().replace("+00:00", "Z"),
        "reference_price": None,  # a market created here has no source
    }


def test_changes_arrive_with_consecutive_seq_and_rebuild_the_book_from_the_snapshot(market, make_agent, framing):
    alice, bob = make_agent(), make_agent()

    async def scenario():
        feed = Feed(market_path(market))
        assert await feed.connect()
        snapshot = await feed.recv()
        await sync_to_async(trade_some)(market, alice, bob)
        live = await feed.until_seq(await aseq_of(market))
        await feed.disconnect()
        return snapshot, live

    snapshot, live = run(scenario)
    market.refresh_from_db()
    assert [m["seq"] for m in live] == list(range(snapshot["seq"] + 1, market.seq + 1))
    assert {m["type"] for m in live} == {"book", "trade"}
    assert all(m["market"] == str(market.id) for m in live)
    book = snapshot["book"]
    for message in live:
        if message["type"] == "book":
            book = apply_book(book, message)
    assert book == book_of(market)
    trades = [m["trade"] for m in live if m["type"] == "trade"]
    assert [(t["price"], t["size"], t["taker_side"]) for t in trades] == [("0.45", 3, "NO"), ("0.40", 1, "NO")]
    assert [t["seq"] for t in trades] == [m["seq"] for m in live if m["type"] == "trade"]
    assert all(datetime.fromisoformat(t["created_at"]).tzinfo is not None for t in trades)
    # Absolute sizes: the YES 0.45 bid is taken whole (0 removes it), the 0.40 bid drops from 5 to 4.
    sizes = [(lv["side"], lv["price"], lv["size"]) for m in live if m["type"] == "book" for lv in m["levels"]]
    assert ("YES", "0.45", 0) in sizes
    assert ("YES", "0.40", 4) in sizes
    assert sizes[-1] == ("NO", "0.30", 0)  # the cancel, last


def test_closing_and_resolving_the_market_send_market_messages(market, make_agent, framing):
    alice = make_agent()

    async def scenario():
        feed = Feed(market_path(market))
        assert await feed.connect()
        await feed.recv()
        await aplace(alice, market, "YES", "BUY", "0.30", 2)
        await sync_to_async(market_close)(market_id=market.id)
        await sync_to_async(market_resolve)(market_id=market.id, outcome="NO", resolver=operator_resolver())
        live = await feed.until_seq(await aseq_of(market))
        await feed.disconnect()
        return live

    live = run(scenario)
    assert [m["type"] for m in live] == ["book", "book", "market", "market"]
    assert live[1]["levels"] == [{"side": "YES", "price": "0.30", "size": 0}]  # closing cancels the bid
    closed, resolved = live[2], live[3]
    assert (closed["event"], closed["market"]["status"], closed["market"]["outcome"]) == ("closed", "closed", None)
    assert (resolved["event"], resolved["market"]["status"], resolved["market"]["outcome"]) == (
        "resolved",
        "resolved",
        "NO",
    )
    assert resolved["market"]["id"] == str(market.id)
    assert resolved["market"]["question"] == market.question
    assert (resolved["market"]["best_bid"], resolved["market"]["best_ask"]) == (None, None)


def test_since_replays_exactly_the_missed_changes_then_goes_live(market, make_agent, framing):
    alice, bob = make_agent(), make_agent()

    async def scenario():
        first = Feed(market_path(market))
        assert await first.connect()
        await first.recv()
        await sync_to_async(trade_some)(market, alice, bob)
        end = await aseq_of(market)
        seen = await first.until_seq(end)
        await first.disconnect()

        k = seen[2]["seq"]  # the client applied up to k, then its connection dropped
        again = Feed(market_path(market, since=k))
        assert await again.connect()
        replayed = [await again.recv() for _ in range(end - k)]
        await aplace(bob, market, "NO", "BUY", "0.20", 1)
        live = await again.recv()
        await again.disconnect()
        return seen, k, replayed, live

    seen, k, replayed, live = run(scenario)
    assert replayed == [m for m in seen if m["seq"] > k]  # the same messages, no snapshot
    assert live["seq"] == replayed[-1]["seq"] + 1
    assert live["levels"] == [{"side": "NO", "price": "0.20", "size": 1}]


def test_a_since_that_cannot_be_replayed_gets_a_snapshot_saying_so(market, make_agent, settings, framing):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "LIVE_REPLAY_LIMIT": 3}
    alice = make_agent()
    for price in ("0.10", "0.11", "0.12", "0.13"):
        place(alice, market, "YES", "BUY", price, 1)
    current = seq_of(market)

    async def first_messages(since: str, count: int) -> list[dict[str, Any]]:
        feed = Feed(market_path(market, since=since))
        assert await feed.connect()
        messages = [await feed.recv() for _ in range(count)]
        await feed.disconnect()
        return messages

    async def scenario():
        return {
            "too old": await first_messages(str(current - 4), 1),
            "just in reach": await first_messages(str(current - 3), 3),
            "ahead": await first_messages(str(current + 1), 1),
            "garbage": await first_messages("yesterday", 2),
            "negative": await first_messages("-1", 2),
        }

    got = run(scenario)
    for case in ("too old", "ahead"):
        [snapshot] = got[case]
        assert (snapshot["type"], snapshot["reason"], snapshot["seq"]) == ("snapshot", "since_too_old", current), case
    assert [m["seq"] for m in got["just in reach"]] == [current - 2, current - 1, current]
    for case in ("garbage", "negative"):
        error, snapshot = got[case]
        assert (error["type"], error["code"]) == ("error", "invalid_since"), case
        assert (snapshot["type"], snapshot["reason"], snapshot["seq"]) == ("snapshot", "connect", current), case


def test_a_ping_gets_a_pong_and_any_other_message_an_error_on_an_open_connection(market, framing):
    async def scenario():
        feed = Feed(market_path(market))
        assert await feed.connect()
        await feed.recv()
        answers = []
        for frame in ('{"type": "ping"}', '{"type": "subscribe"}', "not json", "[1, 2]", '{"type": "ping"}'):
            await feed.communicator.send_to(text_data=frame)
            answers.append(await feed.recv())
        await feed.communicator.send_to(bytes_data=b"\x00")
        answers.append(await feed.recv())
        await feed.communicator.send_json_to({"type": "ping"})
        answers.append(await feed.recv())
        await feed.disconnect()
        return answers

    answers = run(scenario)
    assert answers[0] == answers[4] == answers[6] == {"type": "pong"}
    for error in (answers[1], answers[2], answers[3], answers[5]):
        assert (error["type"], error["code"]) == ("error", "invalid_message")
        assert error["message"]


def test_a_frame_nested_too_deep_to_parse_gets_invalid_message_and_both_feeds_stay_open(market, make_agent):
    """100,000 ``[`` make ``json.loads`` raise RecursionError, not ValueError: the frame is answered like any other
    that is not a ping, and the connection goes on (it used to end with daphne's close 1011)."""
    alice = make_agent()

    async def answers_of(feed: Feed, greeting: int) -> list[dict[str, Any]]:
        assert await feed.connect()
        for _ in range(greeting):
            await feed.recv()
        await feed.communicator.send_to(text_data="[" * 100_000)
        answers = [await feed.recv()]
        await feed.communicator.send_json_to({"type": "ping"})
        answers.append(await feed.recv())
        await feed.disconnect()
        return answers

    async def scenario():
        return {
            "market": await answers_of(Feed(market_path(market)), greeting=1),  # after its snapshot
            "agent": await answers_of(agent_feed(alice), greeting=1),  # after its snapshot
        }

    for feed, (error, pong) in run(scenario).items():
        assert (error["type"], error["code"]) == ("error", "invalid_message"), (feed, error)
        assert pong == {"type": "pong"}, feed


async def connects(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> bool:
    """Whether a handshake on ``path`` (with ``headers``) is accepted; an accepted feed is closed again."""
    feed = Feed(path, headers)
    connected = await feed.connect()
    if connected:
        await feed.disconnect()
    return connected


def test_an_unknown_market_a_malformed_path_or_a_foreign_origin_is_refused_at_the_handshake(market):
    async def scenario():
        ok = market_path(market)
        return {
            "unknown market": await connects(f"/ws/markets/{uuid.uuid4()}/"),
            "malformed id": await connects("/ws/markets/not-a-uuid/"),
            "unknown path": await connects("/ws/elsewhere/"),
            "foreign origin": await connects(ok, [(b"origin", b"https://evil.example")]),
            "null origin": await connects(ok, [(b"origin", b"null")]),
            "foreign host": await connects(ok, [(b"host", b"evil.example")]),
            "own origin": await connects(ok, [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")]),
            "no origin (an agent's client)": await connects(ok, [(b"host", b"localhost:8000")]),
        }

    assert run(scenario) == {
        "unknown market": False,
        "malformed id": False,
        "unknown path": False,
        "foreign origin": False,
        "null origin": False,
        "foreign host": False,
        "own origin": True,
        "no origin (an agent's client)": True,
    }


# --------------------------------------------------------------------------------------------------------------------
# The private agent feed


def agent_feed(agent, since: Any = None, *, key: str | None = None, client: str | None = None) -> Feed:
    """A client of ``agent``'s private feed, its key (``agent.api_key`` unless ``key``) in the Authorization header."""
    path = "/ws/agent/" + (f"?since={since}" if since is not None else "")
    return Feed(path, [(b"authorization", f"Bearer {key or agent.api_key}".encode())], client=client)


def feed_seq_of(agent) -> int:
    return Agent.objects.values_list("feed_seq", flat=True).get(id=agent.id)


afeed_seq_of = sync_to_async(feed_seq_of)


def test_each_agent_feed_carries_its_own_orders_fills_positions_and_balances_and_nothing_of_others(
    market, make_agent, audit_clean
):
    alice, bob, carol = make_agent(), make_agent(), make_agent()

    async def scenario():
        public = Feed(market_path(market))
        feeds = {"alice": agent_feed(alice), "bob": agent_feed(bob), "carol": agent_feed(carol)}
        for feed in (public, *feeds.values()):
            assert await feed.connect()
            await feed.recv()  # the snapshot
        resting = await aplace(alice, market, "YES", "BUY", "0.60", 10)
        taking = await aplace(bob, market, "NO", "BUY", "0.45", 4)
        await aplace(carol, market, "NO", "BUY", "0.01", 1)
        for name, agent in (("alice", alice), ("bob", bob), ("carol", carol)):
            await feeds[name].until_seq(await afeed_seq_of(agent))
        await public.until_seq(await aseq_of(market))
        for feed in (public, *feeds.values()):
            await feed.disconnect()
        return public.received, {name: feed.received for name, feed in feeds.items()}, resting, taking

    public, private, resting, taking = run(scenario)
    alice_order, bob_order = str(resting.order.id), str(taking.order.id)
    [trade] = taking.trades

    def kinds(messages):
        return [m["type"] for m in messages]

    assert kinds(private["alice"]) == ["snapshot", "order", "balance", "fill", "order", "position", "balance"]
    assert kinds(private["bob"]) == ["snapshot", "order", "fill", "position", "balance"]
    assert kinds(private["carol"]) == ["snapshot", "order", "balance"]
    # The agent's own seq: consecutive from the snapshot's, whatever the message.
    for name, messages in private.items():
        start = messages[0]["seq"]
        assert [m["seq"] for m in messages[1:]] == list(range(start + 1, start + len(messages))), name
    placed = private["alice"][1]
    assert (placed["event"], placed["market"], placed["market_seq"]) == ("placed", str(market.id), resting.order.seq)
    assert {key: placed["order"][key] for key in ("id", "side", "action", "price", "size", "filled", "status")} == {
        "id": alice_order,
        "side": "YES",
        "action": "BUY",
        "price": "0.60",
        "size": 10,
        "filled": 0,
        "status": "open",
    }
    # The maker's fill reaches the maker, with the maker's seq, then its order's new state.
    maker_fill, partial = private["alice"][3], private["alice"][4]
    assert maker_fill["seq"] == private["alice"][2]["seq"] + 1
    assert maker_fill["market_seq"] == trade.seq
    assert maker_fill["fill"] == {
        "id": str(trade.id),
        "market": str(market.id),
        "seq": trade.seq,
        "price": "0.60",
        "size": 4,
        "taker_side": "NO",
        "created_at": maker_fill["fill"]["created_at"],
        "order": alice_order,
        "side": "YES",
        "action": "BUY",
        "role": "maker",
        "fill_price": "0.60",
    }
    assert (partial["event"], partial["order"]["filled"], partial["order"]["status"]) == ("partial", 4, "partial")
    assert private["alice"][5]["position"]["yes_shares"] == 4
    bob_fill = private["bob"][2]["fill"]
    assert (bob_fill["order"], bob_fill["side"], bob_fill["role"], bob_fill["price"], bob_fill["fill_price"]) == (
        bob_order,
        "NO",
        "taker",
        "0.60",
        "0.40",
    )
    for name, agent in (("alice", alice), ("bob", bob), ("carol", carol)):
        agent.refresh_from_db()
        balance = private[name][-1]
        assert balance["seq"] == agent.feed_seq
        assert (balance["balance"], balance["locked_balance"], balance["available_balance"]) == (
            str(agent.balance),
            str(agent.locked_balance),
            str(agent.available_balance),
        )
    # Nothing of anyone else's, and the public feed names no agent and no order.
    ids = {
        name: {str(agent.id), *(str(o) for o in Order.objects.filter(agent=agent).values_list("id", flat=True))}
        for name, agent in (("alice", alice), ("bob", bob), ("carol", carol))
    }
    for name, messages in private.items():
        text = json.dumps(messages)
        for other, other_ids in ids.items():
            if other != name:
                assert not any(i in text for i in other_ids), (name, other)
    public_text = json.dumps(public)
    assert not any(i in public_text for other_ids in ids.values() for i in other_ids)
    assert str(trade.id) in public_text
    audit_clean()


def test_a_new_private_subscriber_gets_a_snapshot_of_its_orders_positions_and_balance_at_its_seq(market, make_agent):
    alice, bob = make_agent(), make_agent()
    trade_some(market, alice, bob)
    alice.refresh_from_db()

    async def scenario():
        feed = agent_feed(alice)
        assert await feed.connect()
        snapshot = await feed.recv()
        await feed.disconnect()
        return snapshot

    snapshot = run(scenario)
    assert (snapshot["type"], snapshot["reason"], snapshot["seq"]) == ("snapshot", "connect", alice.feed_seq)
    assert (snapshot["balance"], snapshot["locked_balance"], snapshot["available_balance"]) == (
        str(alice.balance),
        str(alice.locked_balance),
        str(alice.available_balance),
    )
    resting = Order.objects.filter(agent=alice, status__in=Order.RESTING).order_by("-created_at")
    assert [o["id"] for o in snapshot["orders"]] == [str(o.id) for o in resting]
    assert [(o["side"], o["action"], o["price"], o["filled"]) for o in snapshot["orders"]] == [
        ("YES", "SELL", "0.60", 0),
        ("YES", "BUY", "0.40", 1),
    ]
    assert [(p["market"], p["yes_shares"], p["yes_reserved"]) for p in snapshot["positions"]] == [
        (str(market.id), 4, 2)
    ]


def test_the_agent_seq_runs_on_across_markets_and_kinds_of_message(make_agent):
    alice, bob = make_agent(), make_agent()
    first, second = new_market(), new_market(question="Will it snow?")

    async def scenario():
        feed = agent_feed(alice)
        assert await feed.connect()
        snapshot = await feed.recv()
        await aplace(alice, first, "YES", "BUY", "0.40", 2)
        await aplace(alice, second, "NO", "BUY", "0.30", 3)
        await aplace(bob, first, "NO", "BUY", "0.60", 2)  # fills alice in the first market
        await aplace(bob, second, "YES", "BUY", "0.70", 1)  # and partly in the second
        await sync_to_async(order_cancel_all)(agent=alice)
        live = await feed.until_seq(await afeed_seq_of(alice))
        await feed.disconnect()
        return snapshot, live

    snapshot, live = run(scenario)
    assert [m["seq"] for m in live] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(live)))
    assert [(m["type"], m["market"] == str(first.id)) for m in live] == [
        ("order", True),
        ("balance", True),
        ("order", False),
        ("balance", False),
        ("fill", True),
        ("order", True),
        ("position", True),
        ("balance", True),
        ("fill", False),
        ("order", False),
        ("position", False),
        ("balance", False),
        ("order", False),  # cancel-all: the second market's order is the only one still resting
        ("balance", False),
    ]
    assert [m["event"] for m in live if m["type"] == "order"] == ["placed", "placed", "filled", "partial", "cancelled"]


def test_since_replays_exactly_the_agent_s_missed_messages_then_goes_live(market, make_agent, audit_clean):
    alice, bob = make_agent(), make_agent()
    other = new_market(question="Will it snow?")

    async def scenario():
        witness = agent_feed(alice)  # stays connected throughout
        first = agent_feed(alice)
        for feed in (witness, first):
            assert await feed.connect()
            await feed.recv()
        await sync_to_async(trade_some)(market, alice, bob)
        seen = await first.until_seq(await afeed_seq_of(alice))
        await first.disconnect()

        k = seen[3]["seq"]  # the client applied up to k, then its connection dropped
        # Activity while it is away, in two markets.
        await aplace(bob, market, "YES", "BUY", "0.60", 1)  # takes 1 of the 2 YES alice offers
        await aplace(alice, other, "NO", "BUY", "0.25", 2)
        end = await afeed_seq_of(alice)
        again = agent_feed(alice, since=k)
        assert await again.connect()
        replayed = [await again.recv() for _ in range(end - k)]
        await aplace(alice, market, "NO", "BUY", "0.20", 1)
        live = await again.recv()
        await witness.until_seq(live["seq"])
        for feed in (again, witness):
            await feed.disconnect()
        return k, replayed, live, witness.received

    k, replayed, live, witnessed = run(scenario)
    # The same messages the connected witness saw, no snapshot, then the next one live.
    assert replayed == [m for m in witnessed if m["type"] != "snapshot" and k < m["seq"] < live["seq"]]
    assert {m["type"] for m in replayed} >= {"order", "fill", "position", "balance"}
    assert live == witnessed[-1]
    assert live["seq"] == replayed[-1]["seq"] + 1
    audit_clean()


def test_an_agent_since_that_cannot_be_replayed_gets_a_snapshot_saying_so(market, make_agent, settings):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "LIVE_REPLAY_LIMIT": 3}
    alice = make_agent()
    for price in ("0.10", "0.11"):
        place(alice, market, "YES", "BUY", price, 1)  # two messages each: order, balance
    current = feed_seq_of(alice)

    async def first_messages(since: str, count: int) -> list[dict[str, Any]]:
        feed = agent_feed(alice, since=since)
        assert await feed.connect()
        messages = [await feed.recv() for _ in range(count)]
        await feed.disconnect()
        return messages

    async def scenario():
        return {
            "too old": await first_messages(str(current - 4), 1),
            "just in reach": await first_messages(str(current - 3), 3),
            "up to date": await first_messages(str(current), 0),
            "ahead": await first_messages(str(current + 1), 1),
            "garbage": await first_messages("yesterday", 2),
            "negative": await first_messages("-1", 2),
        }

    got = run(scenario)
    for case in ("too old", "ahead"):
        [snapshot] = got[case]
        assert (snapshot["type"], snapshot["reason"], snapshot["seq"]) == ("snapshot", "since_too_old", current), case
        assert [o["price"] for o in snapshot["orders"]] == ["0.11", "0.10"], case
    assert [(m["type"], m["seq"]) for m in got["just in reach"]] == [
        ("balance", current - 2),
        ("order", current - 1),
        ("balance", current),
    ]
    for case in ("garbage", "negative"):
        error, snapshot = got[case]
        assert (error["type"], error["code"]) == ("error", "invalid_since"), case
        assert (snapshot["type"], snapshot["reason"], snapshot["seq"]) == ("snapshot", "connect", current), case


def test_a_gap_in_the_agent_s_seq_is_filled_from_its_stored_messages_in_order(market, make_agent):
    alice = make_agent()

    async def scenario():
        feed = agent_feed(alice)
        assert await feed.connect()
        snapshot = await feed.recv()
        await sync_to_async(unpublished)(
            lambda: [place(alice, market, "YES", "BUY", p, 1) for p in ("0.10", "0.11", "0.12")]
        )
        await aplace(alice, market, "YES", "BUY", "0.13", 1)
        live = await feed.until_seq(await afeed_seq_of(alice))
        await feed.disconnect()
        return snapshot, live

    snapshot, live = run(scenario)
    assert [m["seq"] for m in live] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 9))
    assert [m["order"]["price"] for m in live if m["type"] == "order"] == ["0.10", "0.11", "0.12", "0.13"]


def test_a_key_in_the_url_is_refused_with_api_key_in_url_and_4401(make_agent):
    alice = make_agent()

    async def scenario():
        got = {}
        for name, feed in (
            ("query only", Feed(f"/ws/agent/?api_key={alice.api_key}")),
            (
                "query and header",
                Feed(f"/ws/agent/?api_key={alice.api_key}", agent_feed(alice).communicator.scope["headers"]),
            ),
        ):
            got[name] = await refusal(feed)
        return got

    for name, (message, code) in run(scenario).items():
        assert (message["type"], message["code"]) == ("error", "api_key_in_url"), name
        assert "Authorization" in message["message"] and alice.api_key not in message["message"], name
        assert code == CLOSE_KEY_REVOKED == 4401, name


def test_a_missing_bad_or_revoked_key_is_refused_at_the_handshake(make_agent):
    alice = make_agent()
    revoked = make_agent()
    key = ApiKey.objects.get(agent=revoked)
    api_key_revoke(agent=revoked, key_id=key.id, allow_last=True)

    async def scenario():
        return {
            "missing": await connects("/ws/agent/"),
            "revoked": await connects("/ws/agent/", agent_feed(revoked).communicator.scope["headers"]),
            "bad header": await connects("/ws/agent/", [(b"authorization", b"Bearer ms_wrong")]),
            "not bearer": await connects("/ws/agent/", [(b"authorization", f"Basic {alice.api_key}".encode())]),
            "header": await connects("/ws/agent/", [(b"authorization", f"Bearer {alice.api_key}".encode())]),
        }

    assert run(scenario) == {
        "missing": False,
        "revoked": False,
        "bad header": False,
        "not bearer": False,
        "header": True,
    }


def test_revoking_a_key_closes_the_private_feeds_opened_with_it_and_no_other(market, make_agent):
    """Alice has two keys with a feed open on each; revoking one closes its feed at once (``api_key_revoked``, 4401)
    and the feed on the other key goes on receiving her updates."""
    alice = make_agent()
    second = ApiKeyFactory(agent=alice)
    first = ApiKey.objects.exclude(id=second.id).get(agent=alice)

    async def scenario():
        doomed, kept = agent_feed(alice), agent_feed(alice, key=second.raw_key)
        assert await doomed.connect() and await kept.connect()
        await doomed.recv()
        await kept.recv()
        await sync_to_async(api_key_revoke)(agent=alice, key_id=first.id)
        error = await doomed.recv()
        code = await doomed.closed()
        placed = await aplace(alice, market, "YES", "BUY", "0.40", 3)
        update = await kept.until(lambda m: m["type"] == "order")
        await kept.disconnect()
        return error, code, update, placed

    error, code, update, placed = run(scenario)
    assert (error["type"], error["code"]) == ("error", "api_key_revoked"), error
    assert code == CLOSE_KEY_REVOKED
    assert update["order"]["id"] == str(placed.order.id), update


# --------------------------------------------------------------------------------------------------------------------
# Gaps, out-of-order batches and slow subscribers


def unpublished(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the live feed's publishing switched off: its changes are stored, never published, as if the
    channel layer had dropped them."""
    saved = list(market_services.EVENT_SUBSCRIBERS)
    market_services.EVENT_SUBSCRIBERS.clear()
    try:
        return fn()
    finally:
        market_services.EVENT_SUBSCRIBERS[:] = saved


def test_a_gap_in_seq_is_filled_from_the_stored_events_in_order(market, make_agent, framing):
    alice = make_agent()

    async def scenario():
        feed = Feed(market_path(market))
        assert await feed.connect()
        snapshot = await feed.recv()
        await sync_to_async(unpublished)(
            lambda: [place(alice, market, "YES", "BUY", p, 1) for p in ("0.10", "0.11", "0.12")]
        )
        await aplace(alice, market, "YES", "BUY", "0.13", 1)
        live = await feed.until_seq(await aseq_of(market))
        await feed.disconnect()
        return snapshot, live

    snapshot, live = run(scenario)
    assert [m["seq"] for m in live] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 5))
    assert [m["levels"][0]["price"] for m in live] == ["0.10", "0.11", "0.12", "0.13"]


def test_batches_arriving_out_of_order_reach_the_client_once_and_in_order(market, make_agent, monkeypatch, framing):
    alice = make_agent()
    held: list[tuple[str, dict[str, Any]]] = []
    send_all = realtime._group_send_all
    holding = {"on": True}
    monkeypatch.setattr(
        realtime, "_group_send_all", lambda sends: held.extend(sends) if holding["on"] else send_all(sends)
    )

    async def scenario():
        feed = Feed(market_path(market))
        assert await feed.connect()
        snapshot = await feed.recv()
        for price in ("0.10", "0.11", "0.12"):
            await aplace(alice, market, "YES", "BUY", price, 1)
        holding["on"] = False
        layer = get_channel_layer()
        public = [(group, message) for group, message in held if group == realtime.market_group(market.id)]
        for group, message in reversed(public):  # as if three processes' publishes crossed in flight
            await layer.group_send(group, message)
        live = await feed.until_seq(await aseq_of(market))
        # One more, published normally: the channel is first-in first-out, so the late batches were handled before
        # it, and whatever they made the consumer send would come before this message.
        await aplace(alice, market, "YES", "BUY", "0.13", 1)
        after = await feed.recv()
        await feed.disconnect()
        return snapshot, live, after

    snapshot, live, after = run(scenario)
    assert [m["seq"] for m in live] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 4))
    assert [m["levels"][0]["price"] for m in live] == ["0.10", "0.11", "0.12"]
    assert (after["seq"], after["levels"][0]["price"]) == (snapshot["seq"] + 4, "0.13")


def test_a_batch_that_arrives_late_is_awaited_rather_than_read_from_the_database(
    market, make_agent, monkeypatch, framing
):
    """Batches published out of order within ``LIVE_GAP_WAIT`` are put back in order by the consumer itself: no
    subscriber reads the stored events for them (with 500 subscribers that was 500 reads per crossing)."""
    alice = make_agent()
    held: list[tuple[str, dict[str, Any]]] = []
    send_all = realtime._group_send_all
    holding = {"on": True}
    monkeypatch.setattr(
        realtime, "_group_send_all", lambda sends: held.extend(sends) if holding["on"] else send_all(sends)
    )
    reads = []
    stored = realtime.stored_messages
    monkeypatch.setattr(realtime, "stored_messages", lambda *args: reads.append(args) or stored(*args))

    async def scenario():
        feed = Feed(market_path(market))
        assert await feed.connect()
        snapshot = await feed.recv()
        for price in ("0.10", "0.11"):
            await aplace(alice, market, "YES", "BUY", price, 1)
        holding["on"] = False
        layer = get_channel_layer()
        first, second = [m for group, m in held if group == realtime.market_group(market.id)]
        await layer.group_send(realtime.market_group(market.id), second)  # the later transaction's batch first
        await layer.group_send(realtime.market_group(market.id), first)
        live = await feed.until_seq(await aseq_of(market))
        await feed.disconnect()
        return snapshot, live

    snapshot, live = run(scenario)
    assert [m["seq"] for m in live] == [snapshot["seq"] + 1, snapshot["seq"] + 2]
    assert reads == []


def test_a_gap_beyond_the_bound_tells_the_client_buffer_overflow_and_closes_4008(market, make_agent, settings, framing):
    settings.MOLTSTREET = {**settings.MOLTSTREET, "LIVE_REPLAY_LIMIT": 3}
    alice = make_agent()

    async def scenario():
        feed = Feed(market_path(market))
        assert await feed.connect()
        snapshot = await feed.recv()
        await sync_to_async(unpublished)(
            lambda: [place(alice, market, "YES", "BUY", p, 1) for p in ("0.10", "0.11", "0.12", "0.13")]
        )
        await aplace(alice, market, "YES", "BUY", "0.14", 1)
        error = await feed.recv()
        code = await feed.closed()
        return snapshot, error, code

    snapshot, error, code = run(scenario)
    assert (error["type"], error["code"], error["last_seq"]) == ("error", "buffer_overflow", snapshot["seq"])
    assert "since" in error["message"]
    assert code == CLOSE_BUFFER_OVERFLOW == 4008


def test_a_stuck_subscriber_neither_slows_trading_nor_costs_other_subscribers_a_message(
    market, make_agent, channel_layer, monkeypatch, caplog, settings
):
    """A subscriber that never reads: its buffer fills to ``capacity`` and the layer drops the rest for it alone."""
    if not hasattr(channel_layer, "capacity"):
        pytest.skip("a per-subscriber buffer is RedisChannelLayer's; the pub/sub layer has none in Redis")
    capacity, orders = 40, 200
    alice, bob = make_agent(), make_agent()  # before publishes are counted: registering publishes a balance
    monkeypatch.setattr(channel_layer, "capacity", capacity)
    publishes: list[float] = []
    send_all = realtime._group_send_all

    def timed(sends):
        started = time.monotonic()
        send_all(sends)
        publishes.append(time.monotonic() - started)

    monkeypatch.setattr(realtime, "_group_send_all", timed)
    stuck = f"stuck-{uuid.uuid4().hex}"

    async def scenario():
        await channel_layer.group_add(realtime.market_group(market.id), stuck)
        feed = Feed(market_path(market))
        assert await feed.connect()
        snapshot = await feed.recv()
        for i in range(orders // 2):
            await aplace(alice, market, "YES", "BUY", "0.50", 1)
            result = await aplace(bob, market, "NO", "BUY", "0.50", 1)
            assert result.order.status == "filled", i
        live = await feed.until_seq(await aseq_of(market))
        await feed.disconnect()
        buffered = await channel_layer.connection(0).zcard(channel_layer.prefix + stuck)
        return snapshot, live, buffered

    with caplog.at_level("INFO", logger="trading.realtime"):
        snapshot, live, buffered = run(scenario)
    assert [m["seq"] for m in live] == list(range(snapshot["seq"] + 1, seq_of(market) + 1))
    assert sum(m["type"] == "trade" for m in live) == orders // 2
    # The stuck buffer is full and holds nothing beyond: the later transactions were dropped for it, not waited on.
    assert buffered == capacity
    assert len(publishes) == orders
    assert not [r for r in caplog.records if r.name == "trading.realtime"], "a publish failed or timed out"
    # Waiting on the stuck subscriber would have held every publish up to the timeout; none came near it.
    assert max(publishes) < settings.MOLTSTREET["LIVE_PUBLISH_TIMEOUT"] / 2, max(publishes)


# --------------------------------------------------------------------------------------------------------------------
# Limits per client address


def limits(settings, *, open_at_once: int = 100000, handshakes: str = "100000/min") -> None:
    settings.MOLTSTREET = {
        **settings.MOLTSTREET,
        "WEBSOCKETS_PER_ADDRESS": open_at_once,
        "WEBSOCKET_HANDSHAKE_RATE": handshakes,
    }


async def refusal(feed: Feed) -> tuple[dict[str, Any], int]:
    """The one message of a feed accepted only to be told why it cannot be served, and its close code."""
    assert await feed.connect()
    message = await feed.recv()
    code = await feed.closed()
    await feed.disconnect()
    return message, code


def test_an_address_past_its_open_websockets_is_told_too_many_connections_and_closed_4429(market, make_agent, settings):
    """Two open at once per address, counted across both feeds, an IPv6 client by its /64; another address is not
    affected, and a connection that ends, however it ends, frees its place."""
    limits(settings, open_at_once=2)
    alice = make_agent()
    home, neighbour, elsewhere = "2001:db8:1:2::10", "2001:db8:1:2::99", "203.0.113.8"

    async def scenario():
        got: dict[str, Any] = {}
        first, second = Feed(market_path(market), client=home), agent_feed(alice, client=home)
        assert await first.connect()
        await first.recv()
        # A handshake refused by connect() itself (HTTP 403) gives its place back when it ends.
        unknown = Feed(f"/ws/markets/{uuid.uuid4()}/", client=home)
        got["unknown market"] = await unknown.connect()
        await unknown.disconnect()  # as daphne reports the refused handshake
        assert await second.connect()
        got["third"] = await refusal(Feed(market_path(market), client=neighbour))
        other = Feed(market_path(market), client=elsewhere)
        assert await other.connect()
        got["other address"] = (await other.recv())["type"]
        await first.disconnect()
        again = Feed(market_path(market), client=neighbour)
        assert await again.connect()
        got["after a close"] = (await again.recv())["type"]
        for feed in (second, other, again):
            await feed.disconnect()
        return got

    got = run(scenario)
    assert got["unknown market"] is False
    message, code = got["third"]
    assert message == {"type": "error", "code": "too_many_connections", "message": message["message"], "limit": 2}
    assert "2 websockets" in message["message"]
    assert code == CLOSE_RATE_LIMITED == 4429
    assert got["other address"] == got["after a close"] == "snapshot"


def test_a_handshake_past_the_address_s_rate_is_told_rate_limited_with_retry_after_and_closed_4429(
    market, make_agent, settings
):
    limits(settings, handshakes="3/min")
    alice = make_agent()
    address = "198.51.100.23"

    async def scenario():
        served = []
        for feed in (
            Feed(market_path(market), client=address),
            agent_feed(alice, client=address),
            Feed(market_path(market), client=address),
        ):
            served.append(await feed.connect())
            await feed.disconnect()  # nothing stays open: only the handshakes count
        fourth = await refusal(agent_feed(alice, client=address))
        other = Feed(market_path(market), client="198.51.100.24")
        assert await other.connect()
        other_first = (await other.recv())["type"]
        await other.disconnect()
        return served, fourth, other_first

    served, (message, code), other_first = run(scenario)
    assert served == [True, True, True]
    assert (message["type"], message["code"]) == ("error", "rate_limited")
    assert isinstance(message["retry_after"], int) and 0 < message["retry_after"] <= 60, message
    assert f"retry after {message['retry_after']} seconds" in message["message"]
    assert code == CLOSE_RATE_LIMITED
    assert other_first == "snapshot"


class _DownCache:
    """A cache whose every call fails the way the Redis client does when Redis is unreachable."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

        return fail


def test_handshakes_go_through_when_the_cache_is_down(market, settings, monkeypatch, caplog):
    limits(settings, handshakes="1/min")
    monkeypatch.setattr(HandshakeThrottle, "cache", _DownCache())

    async def scenario():
        firsts = []
        for _ in range(3):
            feed = Feed(market_path(market), client="192.0.2.55")
            assert await feed.connect()
            firsts.append((await feed.recv())["type"])
            await feed.disconnect()
        return firsts

    with caplog.at_level(logging.WARNING, logger="moltstreet.throttling"):
        assert run(scenario) == ["snapshot"] * 3
    assert any(
        "websocket_handshake" in r.getMessage() and "cache unavailable" in r.getMessage() for r in caplog.records
    )


# --------------------------------------------------------------------------------------------------------------------
# Batched frames (?batch_ms=): one subscription per market and process, arrays of messages


def test_batched_frames_are_arrays_of_every_change_in_order_from_one_subscription_per_market(market, make_agent):
    """Two batched feeds of one market share its hub (one subscription in this process); changes committed within
    ``batch_ms`` of each other arrive as one JSON array; both feeds get every message once, in seq order; the hub
    leaves with the last feed."""
    alice = make_agent()

    async def scenario():
        feeds = [Feed(market_path(market, batch_ms=300)) for _ in range(2)]
        for feed in feeds:
            assert await feed.connect()
        snapshots = [await feed.recv() for feed in feeds]
        hub = feed_hub._hubs[(id(asyncio.get_running_loop()), realtime.market_group(market.id))]
        sharing = (feed_hub.hub_count(), len(hub.subscribers))
        for price in ("0.10", "0.11", "0.12"):
            await aplace(alice, market, "YES", "BUY", price, 1)
        end = await aseq_of(market)
        lives = [await feed.until_seq(end) for feed in feeds]
        for feed in feeds:
            await feed.disconnect()
        hubs_after = feed_hub.hub_count()
        assert hub.leaving is not None
        await hub.leaving  # the hub leaves the group on the loop, after its last feed
        return snapshots, sharing, lives, [feed.frames for feed in feeds], hubs_after

    snapshots, sharing, lives, frames, hubs_after = run(scenario)
    assert sharing == (1, 2)
    start = snapshots[0]["seq"]
    assert snapshots[1]["seq"] == start
    for live, feed_frames in zip(lives, frames, strict=True):
        assert [m["seq"] for m in live] == [start + 1, start + 2, start + 3]
        assert [m["levels"][0]["price"] for m in live] == ["0.10", "0.11", "0.12"]
        assert isinstance(feed_frames[0], dict) and feed_frames[0]["type"] == "snapshot"
        batches = feed_frames[1:]
        assert all(isinstance(frame, list) for frame in batches), batches
        assert len(batches) < 3, batches  # three transactions within 300 ms: fewer frames than messages
    assert lives[0] == lives[1]
    assert hubs_after == 0


@pytest.mark.parametrize("value", ["soon", "-1", "1001", "1.5", "²"])
def test_a_malformed_batch_ms_is_refused_with_invalid_request_and_4400(market, value):
    async def scenario():
        return await refusal(Feed(f"/ws/markets/{market.id}/?batch_ms={value}"))

    error, code = run(scenario)
    assert (error["type"], error["code"]) == ("error", "invalid_request")
    assert "batch_ms" in error["message"]
    assert code == CLOSE_INVALID_REQUEST == 4400


def test_a_batched_feed_whose_frame_would_exceed_the_bound_gets_buffer_overflow_and_4008(market, make_agent, settings):
    """More than ``LIVE_REPLAY_LIMIT`` messages waiting for one batched frame: ``buffer_overflow`` from the last seq
    the client was sent (none of the waiting ones), and close 4008."""
    settings.MOLTSTREET = {**settings.MOLTSTREET, "LIVE_REPLAY_LIMIT": 3}
    alice = make_agent()

    async def scenario():
        feed = Feed(market_path(market, batch_ms=1000))
        assert await feed.connect()
        snapshot = await feed.recv()
        for price in ("0.10", "0.11", "0.12", "0.13"):
            await aplace(alice, market, "YES", "BUY", price, 1)
        error = await feed.recv()
        code = await feed.closed()
        await feed.disconnect()
        return snapshot, error, code

    snapshot, error, code = run(scenario)
    assert (error["type"], error["code"], error["last_seq"]) == ("error", "buffer_overflow", snapshot["seq"])
    assert code == CLOSE_BUFFER_OVERFLOW


def test_batched_frames_work_on_the_in_memory_channel_layer_of_make_run(market, make_agent, settings):
    """``make run`` serves on the in-memory channel layer (one process), where the market page asks for batched
    frames: its hub joins and reads that layer the same way."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    alice = make_agent()

    async def scenario():
        feed = Feed(market_path(market, batch_ms=50))
        assert await feed.connect()
        snapshot = await feed.recv()
        for price in ("0.10", "0.11"):
            await aplace(alice, market, "YES", "BUY", price, 1)
        live = await feed.until_seq(await aseq_of(market))
        await feed.disconnect()
        return snapshot, live, feed.frames

    snapshot, live, frames = run(scenario)
    assert [m["seq"] for m in live] == [snapshot["seq"] + 1, snapshot["seq"] + 2]
    assert all(isinstance(frame, list) for frame in frames[1:])
