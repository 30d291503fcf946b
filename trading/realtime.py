"""The live feed (DESIGN section 8, docs/realtime.md): committed changes turned into websocket messages.

Publishing: :func:`publish_committed_events` is a ``markets.services.EVENT_SUBSCRIBERS`` hook, called after commit
with the stored events of one transaction and the private feed messages it stored (``trading.agent_feed``). It sends
one ``market.batch`` to the market's group (the public ``book``, ``trade`` and ``market`` messages, in ``seq`` order,
with no agent or order ids) and one ``agent.batch`` to each involved agent's group (its ``order``, ``fill``,
``position`` and ``balance`` messages, in its own ``seq`` order), all in one pass over the channel layer;
:func:`publish_agent_messages` does the same for private messages without market events. Neither raises into the
caller nor waits for a subscriber: channel layers drop a message for a subscriber whose buffer is full instead of
blocking.

Reading: :func:`market_snapshot` and :func:`stored_messages` rebuild the same public messages from the database for
the consumers (``trading.consumers``), which replay ``?since=`` and fill gaps from the stored events (the private
feed's counterparts are in ``trading.agent_feed``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import (  # type: ignore[import-untyped]
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.utils import _wrap_close  # type: ignore[import-untyped]
from django.conf import settings
from django.db import connection, transaction
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from markets.models import Market, MarketEvent
from markets.shape import FEED, market_view, recorded_view, render_time
from trading.selectors import book_levels

logger = logging.getLogger(__name__)

Message = dict[str, Any]

# Channel-layer message types; the consumers handle them as ``market_batch`` and ``agent_batch``.
MARKET_BATCH = "market.batch"
AGENT_BATCH = "agent.batch"
KEY_REVOKED = "key.revoked"


def market_group(market_id: uuid.UUID | str) -> str:
    """The channel-layer group of a market's public feed."""
    return f"market.{market_id}"


def agent_group(agent_id: uuid.UUID | str) -> str:
    """The channel-layer group of an agent's private feed."""
    return f"agent.{agent_id}"


def key_group(key_id: uuid.UUID | str) -> str:
    """The channel-layer group of the private feeds opened with one API key (told when it is revoked)."""
    return f"apikey.{key_id}"


# --------------------------------------------------------------------------------------------------------------------
# Public messages


def _market_event_state(data: dict[str, Any], market: Market | None) -> Message:
    """A ``market`` message's object, the feed's market shape (``markets.shape.FEED``): the state recorded with the
    event (``recorded_view``: id, status, outcome, prices, volume, deadline); the question, top of book and reference
    price, which the event does not record, as the market row has them now."""
    state = market_view(market, FEED) if market is not None else {"question": None, "best_bid": None, "best_ask": None}
    state.update({"id": state.get("id"), **recorded_view(data.get("market") or {})})
    if data.get("event") in ("closed", "resolved"):  # closing and resolving cancel every resting order
        state.update(best_bid=None, best_ask=None)
    return state


def _public_trade(event: MarketEvent) -> Message:
    trade = event.data["trade"]
    return {
        "id": trade["id"],
        "seq": event.seq,
        "price": trade["price"],
        "size": trade["size"],
        "taker_side": trade["taker_side"],
        "created_at": render_time(event.created_at),
    }


def public_message(market_id: str, event: MarketEvent, market: Market | None = None) -> Message:
    """The public message of one stored event: ``book``, ``trade``, ``market`` or ``reference`` (docs/realtime.md).

    Fields are copied by name, so nothing private in ``event.data`` (agents, orders) can leak. ``market`` is the
    market row, needed only for ``market`` events (question and top of book). Raises ``ValueError`` for an unknown
    event kind.
    """
    data = event.data or {}
    if event.kind == MarketEvent.Kind.ORDER:
        level = data.get("level")
        levels = [{"side": level["side"], "price": level["price"], "size": level["size"]}] if level else []
        return {"type": "book", "seq": event.seq, "market": market_id, "levels": levels}
    if event.kind == MarketEvent.Kind.TRADE:
        return {"type": "trade", "seq": event.seq, "market": market_id, "trade": _public_trade(event)}
    if event.kind == MarketEvent.Kind.MARKET:
        message = {
            "type": "market",
            "seq": event.seq,
            "event": data.get("event"),
            "market": _market_event_state(data, market),
        }
        if "resolution" in data:  # resolved, resolution_proposed, resolution_disputed: who resolves, and how far
            message["resolution"] = data["resolution"]
        return message
    if event.kind == MarketEvent.Kind.REFERENCE:  # a new snapshot of the source's prices (DESIGN section 10)
        return {"type": "reference", "seq": event.seq, "market": market_id, "reference": data.get("reference")}
    raise ValueError(f"unknown market event kind {event.kind!r}")


def public_messages(market_id: uuid.UUID | str, events: Iterable[MarketEvent]) -> list[Message]:
    """The public messages of stored events, in ``seq`` order; needs the market row if a ``market`` event is among
    them (:func:`_market_of`)."""
    events = sorted(events, key=lambda e: e.seq)
    market = _market_of(market_id, events) if any(e.kind == MarketEvent.Kind.MARKET for e in events) else None
    return [public_message(str(market_id), event, market) for event in events]


def _market_of(market_id: uuid.UUID | str, events: Sequence[MarketEvent]) -> Market | None:
    """The market of ``events``: as the transaction that just committed them wrote it (the events it publishes hold
    it), else read once (stored events, read back for a replay)."""
    market_field = MarketEvent._meta.get_field("market")
    for event in events:
        if market_field.is_cached(event):
            return event.market
    return Market.objects.filter(id=market_id).first()


# --------------------------------------------------------------------------------------------------------------------
# Publishing


def publish_committed_events(
    market_id: uuid.UUID,
    events: Sequence[MarketEvent],
    agent_messages: dict[str, list[Message]] | None = None,
) -> None:
    """``EVENT_SUBSCRIBERS`` hook: publish one committed transaction's events to the live feed.

    Sends ``{"type": "market.batch", "messages": [...]}`` to ``market.<id>`` and ``{"type": "agent.batch",
    "messages": [...]}`` to ``agent.<id>`` of each agent in ``agent_messages`` (the private feed messages the
    transaction stored, ``trading.agent_feed``): one ``group_send`` per group, together, bounded by
    ``MOLTSTREET["LIVE_PUBLISH_TIMEOUT"]`` seconds. Never raises: a failure (the channel layer or Redis down, a
    timeout) is logged and trading goes on; subscribers then find the gap in ``seq`` and read the stored messages.
    """
    try:
        sends = []
        if events:
            public = public_messages(market_id, events)
            # Encoded once here rather than by each of the market's subscribers (bench/fanout.py).
            batch = {"type": MARKET_BATCH, "messages": public, "texts": [json.dumps(m) for m in public]}
            sends.append((market_group(market_id), batch))
        sends += _agent_sends(agent_messages or {})
        if sends:
            _group_send_all(sends)
    except Exception:  # the caller's transaction has committed: nothing here may undo or fail it
        seqs = [e.seq for e in events] or [0]
        logger.exception("live feed: publishing market %s events %d-%d failed", market_id, min(seqs), max(seqs))


def publish_agent_messages(agent_messages: dict[str, list[Message]]) -> None:
    """``agents.services.AGENT_FEED_SUBSCRIBERS`` hook: publish the private feed messages of a committed transaction
    that had no market events (an operator's adjustment, a registration, a market's creation fee), as
    :func:`publish_committed_events` does. Never raises."""
    try:
        _group_send_all(_agent_sends(agent_messages))
    except Exception:  # the transaction has committed: nothing here may undo or fail it
        logger.exception("live feed: publishing the private messages of %d agents failed", len(agent_messages))


def _agent_sends(agent_messages: dict[str, list[Message]]) -> list[tuple[str, Message]]:
    return [
        (agent_group(agent_id), {"type": AGENT_BATCH, "messages": messages})
        for agent_id, messages in agent_messages.items()
        if messages
    ]


def publish_key_revoked(key_id: uuid.UUID) -> None:
    """``agents.services.KEY_REVOKED_SUBSCRIBERS`` hook, after commit: tell the private feeds opened with the key
    ``key_id`` that it was revoked (``{"type": "key.revoked"}`` to ``apikey.<id>``); they close at once. Never raises:
    with the channel layer down the notice is lost, but those feeds are then closed as unavailable anyway and a
    reconnect with the revoked key is refused."""
    try:
        _group_send_all([(key_group(key_id), {"type": KEY_REVOKED})])
    except Exception:  # the revocation has committed: nothing here may undo or fail it
        logger.exception("live feed: announcing the revocation of key %s failed", key_id)


class _PublisherLoop:
    """An event loop of this process's own, in a daemon thread, that carries every publish to a Redis channel layer.

    ``async_to_sync`` from a plain thread (a management command, the scheduler, a test client) starts a new event
    loop, and with it a new Redis connection, for every committed transaction: about 10 ms each. This loop and its
    connections live as long as the process; a forked child (a server worker) starts its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pid = 0

    def run(self, coroutine: Any, timeout: float) -> Any:
        """Run ``coroutine`` on the loop and wait for its result, at most ``timeout`` seconds."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop()).result(timeout)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None or self.pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="moltstreet-publisher", daemon=True).start()
                self.loop, self.pid = loop, os.getpid()
            return self.loop

    def release(self, layer: Any) -> None:
        """Close this loop's connections of a channels-redis ``layer`` (it keeps a pool per event loop): call it
        before flushing or dropping the layer from another loop, which would otherwise close them across loops."""
        loop = self.loop
        pools = getattr(layer, "_layers", None)
        if loop is None or self.pid != os.getpid() or not pools or loop not in pools:
            return
        asyncio.run_coroutine_threadsafe(pools.pop(loop).flush(), loop).result(5)


_publisher = _PublisherLoop()
release_channel_layer = _publisher.release


def _group_send_all(sends: list[tuple[str, Message]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    timeout = settings.MOLTSTREET["LIVE_PUBLISH_TIMEOUT"]

    async def send_all() -> list[Any]:
        # One event loop and connection for the whole transaction; channel layers drop a message for a subscriber
        # whose buffer is full rather than wait, so only the channel layer itself can be slow: bounded here.
        return await asyncio.wait_for(
            asyncio.gather(*(layer.group_send(group, message) for group, message in sends), return_exceptions=True),
            timeout,
        )

    if isinstance(layer, InMemoryChannelLayer):
        # Its queues belong to the server's event loop, where its consumers wait: publish there.
        results = async_to_sync(send_all)()
    else:
        results = _publisher.run(send_all(), timeout + 1)
    for (group, _message), result in zip(sends, results, strict=True):
        if isinstance(result, BaseException):
            logger.error("live feed: group_send to %s failed: %r", group, result)


# --------------------------------------------------------------------------------------------------------------------
# The publish/subscribe channel layer (CHANNEL_LAYER_BACKEND=pubsub)


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """channels-redis's ``RedisPubSubChannelLayer`` (one ``PUBLISH`` per group and message; each server process
    subscribed once per group hands it to its local subscribers), with the feeds' failure contract kept
    (docs/realtime.md): its own receive task swallows a lost Redis connection and retries, so an open feed would wait
    forever; here every local channel is told instead (``receive`` raises ``redis.ConnectionError``, the consumer
    answers ``feed_unavailable`` and closes with 4503). And since ``SUBSCRIBE`` returns before Redis answers, joining
    a group ends with a ``PING``: a handshake against a frozen Redis times out (HTTP 403) instead of being served a
    feed that never updates."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except RuntimeError:  # no running event loop, so no layer of its own to ask: as if it had no such attribute
            raise AttributeError(name) from None

    def _get_layer(self) -> Any:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _PubSubLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer


_LAYER_LOST = "channel_layer.lost"


class _PubSubLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards: list[_PubSubShard] = [_PubSubShard(shard.host, self) for shard in self._shards]

    async def new_channel(self, prefix: str = "specific.") -> str:
        """The consumer's own channel. Called by channels before the consumer can answer its handshake: with Redis
        down the subscription fails here and is left out (the feeds use groups only), so that the consumer's join,
        which does reach Redis, is what refuses the handshake (HTTP 403) rather than an error (HTTP 500)."""
        channel = f"{self.prefix}{prefix}{uuid.uuid4().hex}"
        self.channels[channel] = asyncio.Queue()
        try:
            await self._get_shard(channel).subscribe(channel)
        except (RedisError, OSError) as exc:
            logger.warning("live feed: subscribing %s failed (%s: %s)", channel, exc.__class__.__name__, exc)
        return channel

    async def receive(self, channel: str) -> Any:
        message = await super().receive(channel)
        if message.get("type") == _LAYER_LOST:
            raise RedisConnectionError("the channel layer lost its Redis subscription")
        return message

    async def group_add(self, group: str, channel: str) -> None:
        await super().group_add(group, channel)
        shard = self._get_shard(self._get_group_channel_name(group))
        await shard._redis.ping()


class _PubSubShard(RedisSingleShardConnection):
    async def _do_receiving(self) -> None:
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                logger.warning("live feed: the Redis subscription failed (%s: %s)", exc.__class__.__name__, exc)
                lost = self.channel_layer.channel_layer.serialize({"type": _LAYER_LOST})
                for queue in self.channel_layer.channels.values():
                    queue.put_nowait(lost)
                await asyncio.sleep(1)


# --------------------------------------------------------------------------------------------------------------------
# Reading for the consumers (sync: call through ``database_sync_to_async``)


def market_exists(market_id: uuid.UUID | str) -> bool:
    return Market.objects.filter(id=market_id).exists()


def market_snapshot(market_id: uuid.UUID | str, reason: str) -> Message | None:
    """A ``snapshot`` message: market state, book levels (best first, ``no`` at NO prices), the last trades (newest
    first, ``MOLTSTREET["LIVE_SNAPSHOT_TRADES"]``) and the ``seq`` they all reflect; ``None`` for an unknown market.

    One read transaction; on PostgreSQL at REPEATABLE READ, so every read sees the same committed state and ``seq``
    matches the contents exactly, however busy the market. (SQLite's transaction already holds its lock.)
    """
    outermost = not connection.in_atomic_block  # the isolation level can only be set by a transaction's first query
    with transaction.atomic():
        if connection.vendor == "postgresql" and outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        market = Market.objects.filter(id=market_id).first()
        if market is None:
            return None
        book = book_levels(market)
        trades = list(
            MarketEvent.objects.filter(market=market, kind=MarketEvent.Kind.TRADE, seq__lte=market.seq).order_by(
                "-seq"
            )[: settings.MOLTSTREET["LIVE_SNAPSHOT_TRADES"]]
        )
    if book["seq"] != market.seq:  # only possible inside a caller's transaction at READ COMMITTED
        raise AssertionError(f"snapshot of market {market.id} mixes seq {market.seq} and {book['seq']}")
    return {
        "type": "snapshot",
        "seq": market.seq,
        "reason": reason,
        "market": market_view(market, FEED),
        "book": {"yes": book["yes"], "no": book["no"]},
        "trades": [_public_trade(event) for event in trades],
    }


def stored_messages(
    market_id: uuid.UUID | str, after: int, until: int | None = None, limit: int = 1000
) -> list[Message]:
    """Public messages of the stored events ``after < seq <= until`` (``until`` None: to the newest), in order, at
    most ``limit``. Committed events have no gaps (each transaction numbers its events under the market lock), so
    the result is consecutive from ``after + 1``; callers still check."""
    events = MarketEvent.objects.filter(market_id=market_id, seq__gt=after)
    if until is not None:
        events = events.filter(seq__lte=until)
    return public_messages(market_id, events.order_by("seq")[:limit])


def current_seq(market_id: uuid.UUID | str) -> int | None:
    """The market's last ``seq``, or ``None`` for an unknown market."""
    return Market.objects.filter(id=market_id).values_list("seq", flat=True).first()


__all__ = [
    "AGENT_BATCH",
    "MARKET_BATCH",
    "agent_group",
    "current_seq",
    "market_exists",
    "market_group",
    "market_snapshot",
    "public_message",
    "public_messages",
    "publish_agent_messages",
    "publish_committed_events",
    "stored_messages",
]
