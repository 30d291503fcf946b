"""``FeedConsumer.dispatch``, the one override of channels' ``AsyncConsumer.dispatch``, kept because
bench/entry_points.py measured it worth more than 10 % on fan-out (docs/performance.md, "Framework entry points").

What it guarantees: a message reaches its handler with no ``sync_to_async`` hop (channels' own dispatch runs
``aclose_old_connections()`` on the one shared thread before every message, so 500 subscribers of a market queued
500 hops per committed transaction); a message of no known type is refused as channels refuses it; and the feeds'
database work still gets fresh connections, through ``database_sync_to_async``, which closes stale ones itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.consumer import AsyncConsumer
from channels.db import DatabaseSyncToAsync, database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from markets.models import Market
from moltstreet.asgi import application
from testsupport.hops import install_hop_counter
from trading import realtime
from trading.consumers import AgentConsumer, FeedConsumer, MarketConsumer

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = 20
STEP = 5.0


@pytest.fixture(autouse=True)
def in_memory_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def count_hops(monkeypatch):
    """``hops()``: how many times a ``sync_to_async`` call has entered its worker thread so far."""
    return install_hop_counter(monkeypatch)


def feed_hops(market: Market, hops) -> tuple[int, list[dict[str, Any]]]:
    """Open the market's feed, then send it ``MESSAGES`` pings and publish ``MESSAGES`` batches (one message each,
    the next seqs) to its group; the hops made while they were delivered, and what the client received."""

    async def scenario() -> tuple[int, list[dict[str, Any]]]:
        feed = WebsocketCommunicator(application, f"/ws/markets/{market.id}/")
        connected, _ = await feed.connect(timeout=STEP)
        assert connected
        snapshot = await feed.receive_json_from(timeout=STEP)
        seq = snapshot["seq"]
        layer = get_channel_layer()
        before = hops()
        received = []
        for i in range(1, MESSAGES + 1):
            await feed.send_json_to({"type": "ping"})
            received.append(await feed.receive_json_from(timeout=STEP))
            message = {"type": "market", "seq": seq + i, "market": {"id": str(market.id)}}
            await layer.group_send(
                realtime.market_group(market.id), {"type": realtime.MARKET_BATCH, "messages": [message]}
            )
            received.append(await feed.receive_json_from(timeout=STEP))
        made = hops() - before
        await feed.disconnect()
        return made, received

    return async_to_sync(scenario)()


def test_both_feeds_dispatch_through_feed_consumer_dispatch_not_channels_own():
    assert FeedConsumer.dispatch is not AsyncConsumer.dispatch
    assert MarketConsumer.dispatch is FeedConsumer.dispatch
    assert AgentConsumer.dispatch is FeedConsumer.dispatch


def test_feed_consumer_dispatch_delivers_client_frames_and_group_messages_without_a_thread_hop(market, count_hops):
    made, received = feed_hops(market, count_hops)

    assert made == 0
    assert received[0::2] == [{"type": "pong"}] * MESSAGES
    assert [m["seq"] for m in received[1::2]] == sorted(m["seq"] for m in received[1::2])
    assert len({m["seq"] for m in received[1::2]}) == MESSAGES


def test_channels_own_dispatch_hops_once_a_message_which_the_test_above_would_see(market, count_hops, monkeypatch):
    """The control: with channels' ``AsyncConsumer.dispatch`` the same feed makes a hop for every message, so the
    test above can fail."""
    monkeypatch.setattr(FeedConsumer, "dispatch", AsyncConsumer.dispatch)

    made, received = feed_hops(market, count_hops)

    assert made >= 2 * MESSAGES
    assert received[0::2] == [{"type": "pong"}] * MESSAGES


def test_a_message_of_no_known_type_is_refused_as_channels_refuses_it():
    consumer = MarketConsumer()
    with pytest.raises(ValueError, match=r"No handler for message type no\.such"):
        async_to_sync(consumer.dispatch)({"type": "no.such"})
    with pytest.raises(ValueError, match="leading underscore"):
        async_to_sync(consumer.dispatch)({"type": "_private"})


def test_the_feeds_database_work_goes_through_database_sync_to_async_which_closes_stale_connections(
    market, monkeypatch
):
    """What channels' dispatch did before every message, the feeds' database calls do themselves: they go through
    ``database_sync_to_async``, which runs ``close_old_connections()`` before and after its work. (Channels' test
    communicators silence ``close_old_connections`` while they run, so the closing is shown on its own below.)"""
    calls = []
    real = DatabaseSyncToAsync.thread_handler

    def spied(self, *args: Any, **kwargs: Any) -> Any:
        calls.append(self.func.__name__)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DatabaseSyncToAsync, "thread_handler", spied)

    async def scenario() -> None:
        feed = WebsocketCommunicator(application, f"/ws/markets/{market.id}/")
        assert (await feed.connect(timeout=STEP))[0]
        assert (await feed.receive_json_from(timeout=STEP))["type"] == "snapshot"
        await feed.disconnect()

    async_to_sync(scenario)()
    assert {"market_exists", "market_snapshot"} <= set(calls)

    closed = []
    monkeypatch.setattr("channels.db.close_old_connections", lambda: closed.append(1))
    async_to_sync(database_sync_to_async(lambda: None))()
    assert len(closed) == 2
