"""Websocket consumers of the live feed (DESIGN section 8; the message contract is docs/realtime.md).

``MarketConsumer`` (``/ws/markets/<id>/``, public) and ``AgentConsumer`` (``/ws/agent/``, API key) only join their
group and forward what ``trading.realtime`` publishes. Both keep their sequence (the market's ``seq``, the agent's
own) the same way (``SequencedFeed``): a snapshot or a ``?since=`` replay on connect, then every ``seq`` once and in
order, refilling from the stored messages what the channel layer did not deliver. Database reads go through
``database_sync_to_async``.

Before either feed's ``connect()`` does any database or channel-layer work, its handshake is held to two limits per
client address (``moltstreet.clients``): websockets open at once in this process (``WEBSOCKETS_PER_ADDRESS``) and
handshakes in a sliding window, counted in the cache across processes (``WEBSOCKET_HANDSHAKE_RATE``). Over either,
the connection is accepted only to say why, then closed with 4429 (docs/realtime.md, "Limits per address").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from asgiref.typing import WebSocketConnectEvent, WebSocketDisconnectEvent
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import InterfaceError, OperationalError
from redis.exceptions import RedisError

from agents.services import api_key_lookup
from moltstreet.clients import network_key, scope_address
from moltstreet.metrics import WEBSOCKETS
from moltstreet.throttling import HandshakeThrottle
from trading import agent_feed, heartbeat, realtime
from trading.feed_hub import MarketHub

logger = logging.getLogger(__name__)

# Close code sent after a ``buffer_overflow`` error (4000-4999 are the application's; 4008 echoes HTTP 408).
CLOSE_BUFFER_OVERFLOW = 4008
# Close code sent after a ``feed_unavailable`` error; 4503 echoes HTTP 503 (RFC 6455's own 1013 "try again later" is
# not a code daphne's websocket library lets a server send).
CLOSE_UNAVAILABLE = 4503
# Close code sent after an ``api_key_revoked`` or ``api_key_in_url`` error on the private feed; 4401 echoes HTTP 401.
CLOSE_KEY_REVOKED = 4401
# Close code sent after a ``rate_limited`` or ``too_many_connections`` error: the client's address is over one of its
# websocket limits. 4429 echoes HTTP 429.
CLOSE_RATE_LIMITED = 4429
# Close code sent after an ``invalid_request`` error (a malformed query parameter); 4400 echoes HTTP 400.
CLOSE_INVALID_REQUEST = 4400
# The longest wait ``?batch_ms=`` may ask for (docs/realtime.md, "Batched frames").
MAX_BATCH_MS = 1000
# The spellings of ``cancel_on_disconnect`` (lower-cased).
_FLAGS = {"true": True, "1": True, "false": False, "0": False}

# What a lost channel layer (Redis down or frozen) or database looks like from a consumer: the feed cannot go on, but
# a reconnect later can. Anything else is a bug, left to daphne (logged, close 1011).
UNAVAILABLE = (RedisError, OSError, OperationalError, InterfaceError)


# Websockets open in this process by client network (moltstreet.clients.network_key), each counted from the moment its
# handshake passes the limits until its consumer returns. Only the event loop touches it, and never with an await
# between a check and its change, so it needs no lock.
_open_by_network: Counter[str] = Counter()


def _release(network: str) -> None:
    _open_by_network[network] -= 1
    if _open_by_network[network] <= 0:
        del _open_by_network[network]  # the map holds only addresses with a websocket open


def query_param(scope: Mapping[str, Any], name: str) -> str | None:
    """The first value of a query-string parameter of the handshake, or ``None``."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None


def api_key_from_scope(scope: Mapping[str, Any]) -> str | None:
    """The API key of a handshake's ``Authorization: Bearer <key>`` header; ``None`` without the header, ``""`` for
    a malformed one (both refused). A key in the URL is never read (``AgentConsumer`` refuses it)."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            parts = value.decode("latin-1").split()
            return parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else ""
    return None


class FeedConsumer(AsyncJsonWebsocketConsumer):
    """What both feeds share: ``{"type": "ping"}`` is answered with ``{"type": "pong"}``; anything else a client
    sends gets an ``invalid_message`` error and the connection stays open.

    If the channel layer (Redis) or the database fails under an open feed, the client gets a ``feed_unavailable``
    error and the connection closes with 4503 at once, rather than staying open with nothing
    coming; a handshake that cannot join its group within ``LIVE_PUBLISH_TIMEOUT`` seconds is refused (HTTP 403).

    A handshake from an address over its limits (``websocket_connect``) gets ``too_many_connections`` or
    ``rate_limited`` and close code 4429, before ``connect()`` runs.
    """

    accepted = False
    counted = False  # counted in the open-connections gauge: accepted to be served, not only to be refused
    disconnected = False
    feed = "feed"  # the label of this feed in the open-connections gauge (moltstreet.metrics.WEBSOCKETS)
    network: str | None = None  # the client network holding a place in _open_by_network, while it holds one

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, without its ``aclose_old_connections()`` before every message: that is a
        ``sync_to_async`` hop, and outside a request every consumer's hop queues on the same one thread, so a market
        with 500 subscribers paid 500 serialized hops per committed transaction. The feeds touch the database only
        through ``database_sync_to_async``, which closes stale connections itself. Measured against channels' own by
        bench/entry_points.py: a quarter to a half less server CPU per delivered message, 1.5-1.8x the messages a
        saturated server delivers (docs/performance.md, "Framework entry points"); trading/tests/test_feed_dispatch.py
        checks what it guarantees."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # scope: the handshake's, as channels has it
        try:
            await super().__call__(scope, receive, send)
        except UNAVAILABLE as exc:
            logger.warning(
                "live feed %s: channel layer or database unavailable (%s: %s)",
                scope.get("path"),
                exc.__class__.__name__,
                exc,
            )
            await self.close_unavailable()
        finally:
            # However the connection ended (a disconnect, a close of ours, an error, the server stopping), it is no
            # longer open once the consumer returns.
            if self.counted:
                WEBSOCKETS.labels(self.feed).dec()
            if self.network is not None:
                _release(self.network)
                self.network = None

    async def websocket_connect(self, message: WebSocketConnectEvent) -> None:
        """Hold the handshake to the limits of its client's address, then channels' own ``websocket_connect``
        (which calls ``connect()``). Over a limit, the client gets ``too_many_connections`` or ``rate_limited`` and
        close code 4429, before anything costs a database query or a channel-layer call."""
        network = network_key(scope_address(self.scope))
        limit = settings.MOLTSTREET["WEBSOCKETS_PER_ADDRESS"]
        if _open_by_network[network] >= limit:
            await self.refuse(
                "too_many_connections",
                f"{limit} websockets are already open from your address; close one before opening another.",
                limit=limit,
            )
            return
        # The place is taken now rather than at accept: connect() awaits, so handshakes of one address that arrive
        # together would otherwise all pass the check above before any of them counted.
        _open_by_network[network] += 1
        self.network = network
        throttle = HandshakeThrottle(network)
        # Off the one thread that runs the database work (database_sync_to_async): a cache check need not queue
        # behind other feeds' queries.
        if not await sync_to_async(throttle.allow, thread_sensitive=False)():
            _release(network)
            self.network = None
            retry_after = throttle.retry_after()
            await self.refuse(
                "rate_limited",
                f"Too many websocket handshakes from your address (at most {throttle.num_requests} in "
                f"{throttle.duration} seconds); retry after {retry_after} seconds.",
                retry_after=retry_after,
            )
            return
        await super().websocket_connect(message)

    async def refuse(self, code: str, message: str, *, close_code: int = CLOSE_RATE_LIMITED, **extra: Any) -> None:
        """Accept only to say why the connection cannot be served (a refused handshake could say nothing), then
        close with ``close_code`` (4429 unless said otherwise). A refused connection is not counted as open: the
        gauge would otherwise hold it until the client's close comes back."""
        await super().accept()
        self.accepted = True
        await self.send_error(code, message, **extra)
        await self.close(code=close_code)

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        await super().accept(subprotocol, headers)
        self.accepted = self.counted = True
        WEBSOCKETS.labels(self.feed).inc()

    async def close_unavailable(self) -> None:
        """Refuse the handshake (HTTP 403) if not yet accepted; else send ``feed_unavailable`` and close with 4503."""
        if self.disconnected:
            return
        if self.accepted:
            await self.send_error(
                "feed_unavailable",
                "The live feed is unavailable for now; reconnect shortly" + self.resume_hint() + ".",
                **self.resume_fields(),
            )
            await self.close(code=CLOSE_UNAVAILABLE)
        else:
            await self.close()

    def resume_hint(self) -> str:
        return ""

    def resume_fields(self) -> dict[str, Any]:
        return {}

    async def websocket_disconnect(self, message: WebSocketDisconnectEvent) -> None:
        """Leave the groups (best effort, bounded: with Redis down the entries expire by themselves), then stop."""
        self.disconnected = True
        timeout = settings.MOLTSTREET["LIVE_PUBLISH_TIMEOUT"]
        for group in self.groups:
            try:
                await asyncio.wait_for(self.channel_layer.group_discard(group, self.channel_name), timeout)
            except UNAVAILABLE as exc:
                logger.warning("live feed: leaving %s failed (%s)", group, exc.__class__.__name__)
        self.groups = []
        await self.disconnect(message.get("code"))
        raise StopConsumer()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        try:
            content = json.loads(text_data) if text_data is not None else None
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser recurses ("[" * 100_000)
            content = None
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_error("invalid_message", 'The feed accepts only {"type": "ping"}.')

    async def send_error(self, code: str, message: str, **extra: Any) -> None:
        await self.send_json({"type": "error", "code": code, "message": message, **extra})

    async def join(self, group: str) -> bool:
        """Join ``group`` (left again on disconnect); ``False`` if the channel layer is unreachable or does not
        answer within ``LIVE_PUBLISH_TIMEOUT`` seconds."""
        try:
            await asyncio.wait_for(
                self.channel_layer.group_add(group, self.channel_name), settings.MOLTSTREET["LIVE_PUBLISH_TIMEOUT"]
            )
        except Exception as exc:  # Redis down: refuse the handshake rather than serve a feed that never updates
            logger.warning("live feed: joining %s failed (%s: %s)", group, exc.__class__.__name__, exc)
            return False
        self.groups.append(group)
        return True


class SequencedFeed(FeedConsumer):
    """What both feeds' sequences share: a ``snapshot`` on connect (or the ``?since=`` replay), then every committed
    message by ``seq``, each exactly once and in order (docs/realtime.md, "Resuming", "Order and gaps").

    ``last_seq`` is the last ``seq`` sent. Each incoming batch is cut to what is newer; a jump in ``seq`` (a
    transaction published late by another process, or batches dropped because this subscriber's buffer was full)
    is filled from the stored messages, up to ``LIVE_REPLAY_LIMIT``; beyond that the client gets ``buffer_overflow``
    and the connection closes with 4008 (docs/realtime.md, "Slow clients").

    A feed says what its sequence is through :meth:`read_snapshot`, :meth:`read_current_seq` and
    :meth:`read_stored`; it calls :meth:`start_sequence` once it has joined its group and accepted, and hands each
    batch the channel layer brings to :meth:`receive_batch`.
    """

    sequence = "sequence"  # what the sequence belongs to, for the log
    last_seq: int
    overflowed: bool
    limit: int
    # Messages received ahead of a gap, by seq, each with its encoded text (or None), waiting for the gap to fill.
    pending: dict[int, tuple[dict[str, Any], str | None]]
    gap_timer: asyncio.TimerHandle | None = None

    # Batched frames (``?batch_ms=``, docs/realtime.md): the sequenced messages are sent as JSON arrays, one frame
    # per ``batch_s`` at most; ``outbox`` holds the texts not sent yet, ``wake`` tells ``flusher`` there are some.
    batch_s = 0.0
    outbox: list[str]
    outbox_first = 0  # the seq of the first message in outbox
    wake: asyncio.Event | None = None
    flusher: asyncio.Task | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_seq, self.overflowed = 0, False
        self.pending, self.lock = {}, asyncio.Lock()
        self.limit = settings.MOLTSTREET["LIVE_REPLAY_LIMIT"]
        self.outbox = []

    async def read_snapshot(self, reason: str) -> dict[str, Any] | None:
        """The feed's ``snapshot`` message with ``reason``; ``None`` when what it shows is gone."""
        raise NotImplementedError

    async def read_current_seq(self) -> int | None:
        """The sequence's last ``seq``; ``None`` when what it numbers is gone."""
        raise NotImplementedError

    async def read_stored(self, after: int, until: int) -> list[dict[str, Any]]:
        """The stored messages ``after < seq <= until``, in order, at most ``limit``."""
        raise NotImplementedError

    async def start_sequence(self) -> None:
        """After accepting: the ``snapshot``, or what ``?since=`` asks for (an ``invalid_since`` error and a
        snapshot for a ``since`` that is not a whole number)."""
        since = query_param(self.scope, "since")
        if since is None:
            await self.send_snapshot("connect")
            return
        if not since.isascii() or not since.isdigit():
            await self.send_error("invalid_since", "since must be a sequence number (a whole number >= 0).")
            await self.send_snapshot("connect")
            return
        await self.replay(int(since))

    def resume_hint(self) -> str:
        return f" with ?since={self.last_seq}"

    def resume_fields(self) -> dict[str, Any]:
        return {"last_seq": self.last_seq}

    async def replay(self, since: int) -> None:
        """Send the stored messages after ``since``, or a ``since_too_old`` snapshot when it cannot be replayed."""
        current = await self.read_current_seq()
        if current is None or since > current or current - since > self.limit:
            await self.send_snapshot("since_too_old")
            return
        self.last_seq = since
        if since < current:
            await self.fill(current)

    async def send_snapshot(self, reason: str) -> None:
        snapshot = await self.read_snapshot(reason)
        if snapshot is None:  # deleted under us
            await self.close()
            return
        self.last_seq = snapshot["seq"]
        await self.send_json(snapshot)

    async def fill(self, until: int) -> bool:
        """Send the stored messages ``last_seq + 1 .. until``. Beyond ``LIVE_REPLAY_LIMIT`` of them: send
        ``buffer_overflow``, close with 4008 and return ``False``. Should the store not hold them all (it always
        does, each sequence is numbered in commit order), a ``resync`` snapshot replaces them."""
        if until - self.last_seq > self.limit:
            await self.overflow()
            return False
        messages = await self.read_stored(self.last_seq, until)
        if [m["seq"] for m in messages] != list(range(self.last_seq + 1, until + 1)):
            logger.warning("live feed: %s messages %d-%d missing; resyncing", self.sequence, self.last_seq, until)
            await self.send_snapshot("resync")
            return True
        for message in messages:
            await self.emit(message)
        self.last_seq = until
        return True

    async def overflow(self, last_sent: int | None = None) -> None:
        """The connection fell more than ``limit`` messages behind: ``buffer_overflow`` with the last ``seq`` the
        client was sent (``last_sent``, by default ``last_seq``), and close with 4008."""
        self.overflowed = True
        if last_sent is not None:
            self.last_seq = last_sent
        await self.send_error(
            "buffer_overflow",
            f"This connection fell more than {self.limit} changes behind; reconnect with ?since={self.last_seq}.",
            last_seq=self.last_seq,
        )
        await self.close(code=CLOSE_BUFFER_OVERFLOW)

    async def emit(self, message: dict[str, Any], text: str | None = None) -> None:
        """Send one sequenced message (``text``: its JSON, if the publisher encoded it): a frame of its own, or, with
        batched frames, into the next array."""
        if self.batch_s:
            self.enqueue(message["seq"], text if text is not None else json.dumps(message))
        elif text is None:
            await self.send_json(message)
        else:
            await self.send(text_data=text)

    # ---- batched frames --------------------------------------------------------------------------------------------

    def enqueue(self, seq: int, text: str) -> None:
        """Put the text of the message ``seq`` into the next batched frame. More than ``limit`` waiting (the client
        does not read what it is sent): ``buffer_overflow`` from the last ``seq`` it was sent, and close."""
        if self.overflowed:
            return
        if not self.outbox:
            self.outbox_first = seq
        self.outbox.append(text)
        if len(self.outbox) > self.limit:
            self.overflowed = True
            self.outbox = []
            asyncio.get_running_loop().create_task(self.overflow(last_sent=self.outbox_first - 1))
        elif self.wake is not None:
            self.wake.set()

    def start_batching(self, batch_ms: int) -> None:
        """From now on, sequenced messages go out as arrays, one frame per ``batch_ms`` at most."""
        self.batch_s = batch_ms / 1000
        self.wake = asyncio.Event()
        self.flusher = asyncio.get_running_loop().create_task(self.flush_every())

    async def flush_every(self) -> None:
        """The batched frames: ``batch_s`` after the first message waiting, everything waiting as one frame."""
        assert self.wake is not None
        try:
            while True:
                await self.wake.wait()
                await asyncio.sleep(self.batch_s)
                self.wake.clear()
                await self.flush()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection went away under a send; its disconnect ends the feed
            logger.info("live feed %s: batched send failed (%s)", self.sequence, exc.__class__.__name__)

    async def flush(self) -> None:
        """Send what waits as one JSON array (nothing if nothing waits)."""
        if self.outbox:
            frame, self.outbox = "[" + ",".join(self.outbox) + "]", []
            await super().send(text_data=frame)

    async def send(  # type: ignore[override]  # the signature of channels' AsyncWebsocketConsumer.send
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        """Any frame that is not a batch (a snapshot, an error, a pong) goes after the messages waiting to be sent,
        so the client sees everything in ``seq`` order."""
        if self.outbox:
            await self.flush()
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)

    async def receive_batch(self, messages: list[dict[str, Any]], texts: list[str | None] | None = None) -> None:
        """One committed transaction's messages, each with its JSON text if the publisher encoded it (``texts``).

        Transactions commit in seq order but are published from several threads and processes, so a batch may
        arrive before the one just below it. A batch past a gap waits (``LIVE_GAP_WAIT`` seconds) for the missing
        seqs to arrive; only then is the rest read from the stored messages, so out-of-order publishing does not
        cost every subscriber a database read."""
        if not self.accepted or self.overflowed:  # refused after joining its group, or closing: nothing to send
            return
        texts = texts or [None] * len(messages)
        async with self.lock:
            for message, text in zip(messages, texts, strict=True):
                if message["seq"] > self.last_seq:
                    self.pending[message["seq"]] = (message, text)
            await self.send_pending()
            if self.pending and self.gap_timer is None and not self.overflowed:
                loop = asyncio.get_running_loop()
                self.gap_timer = loop.call_later(
                    settings.MOLTSTREET["LIVE_GAP_WAIT"], lambda: loop.create_task(self.close_gap())
                )

    async def send_pending(self) -> None:
        """Send the pending messages that follow ``last_seq`` without a gap."""
        while not self.overflowed and (entry := self.pending.pop(self.last_seq + 1, None)) is not None:
            message, text = entry
            await self.emit(message, text)
            self.last_seq = message["seq"]
        if not self.pending and self.gap_timer is not None:
            self.gap_timer.cancel()
            self.gap_timer = None

    async def close_gap(self) -> None:
        """The wait for a gap is over: read what is still missing from the stored messages, then go on."""
        async with self.lock:
            self.gap_timer = None
            if not self.pending or self.overflowed or self.disconnected:
                return
            if not await self.fill(min(self.pending) - 1):
                self.pending.clear()
                return
            for seq in [seq for seq in self.pending if seq <= self.last_seq]:
                del self.pending[seq]
            await self.send_pending()
            if self.pending:  # another gap further on
                loop = asyncio.get_running_loop()
                self.gap_timer = loop.call_later(0, lambda: loop.create_task(self.close_gap()))

    async def websocket_disconnect(self, message: WebSocketDisconnectEvent) -> None:
        if self.gap_timer is not None:
            self.gap_timer.cancel()
        self.stop_batching()
        await super().websocket_disconnect(message)

    def stop_batching(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
            self.flusher = None


class MarketConsumer(SequencedFeed):
    """``/ws/markets/<id>/``: a ``snapshot`` (or the ``?since=`` replay), then every committed change of the market,
    by the market's ``seq`` (:class:`SequencedFeed`).

    With ``?batch_ms=N`` (1-1000; docs/realtime.md, "Batched frames") the changes come as JSON arrays, one frame per
    ``N`` ms at most, and the feed is served by its market's :class:`~trading.feed_hub.MarketHub` (one subscription
    per market and process) instead of joining the group itself. A ``batch_ms`` that is not a whole number from 0 to
    1000 gets ``invalid_request`` and close code 4400; 0 is the default, a frame per message."""

    feed = "market"
    market_id: str
    hub: MarketHub | None = None
    started = False  # the snapshot or replay is sent: what the hub hands over can go out
    early: list[tuple[list[dict[str, Any]], list[str | None] | None]]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # however the feed ended, its hub no longer serves it
            self.leave_hub()

    async def connect(self) -> None:
        self.market_id = str(self.scope["url_route"]["kwargs"]["market_id"])
        self.sequence = f"market {self.market_id}"
        batch_ms = query_param(self.scope, "batch_ms")
        if batch_ms is not None and not (batch_ms.isascii() and batch_ms.isdigit() and int(batch_ms) <= MAX_BATCH_MS):
            await self.refuse(
                "invalid_request",
                f"batch_ms must be a whole number of milliseconds from 0 to {MAX_BATCH_MS}.",
                close_code=CLOSE_INVALID_REQUEST,
            )
            return
        if not await database_sync_to_async(realtime.market_exists)(self.market_id):
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        # Join first, then read: whatever commits after the read is published after the join and reaches us;
        # what arrives twice (committed between join and read) is cut by seq.
        group = realtime.market_group(self.market_id)
        if batch_ms is not None and int(batch_ms) > 0:
            self.early = []
            self.hub = MarketHub.of(self.channel_layer, group)
            joined = await self.hub.add(self)
        else:
            joined = await self.join(group)
        if not joined:
            self.hub = None
            await self.close()
            return
        await self.accept()
        if self.hub is not None:
            self.start_batching(int(batch_ms or 0))
        await self.start_sequence()
        self.started = True
        if self.hub is not None:  # what the hub handed over during the snapshot or replay, cut by seq
            early, self.early = self.early, []
            for messages, texts in early:
                await self.receive_batch(messages, texts)

    def take(self, messages: list[dict[str, Any]], texts: list[str | None] | None) -> None:
        """One committed transaction's messages, from the hub (batched frames). In the common case (the next seqs,
        nothing pending, no refill running) they go straight into the next frame, without an await; anything else
        (a gap, a refill under way) takes the path of :meth:`receive_batch`, in a task of its own."""
        if self.overflowed or self.disconnected:
            return
        if not self.started:
            self.early.append((messages, texts))
            return
        texts = texts or [None] * len(messages)
        if self.pending or self.lock.locked():
            asyncio.get_running_loop().create_task(self.receive_batch(messages, texts))
            return
        for index, message in enumerate(messages):
            seq = message["seq"]
            if seq <= self.last_seq:
                continue
            if seq != self.last_seq + 1:  # a gap: waited for, then refilled, as receive_batch does
                asyncio.get_running_loop().create_task(self.receive_batch(messages[index:], texts[index:]))
                return
            text = texts[index]
            self.enqueue(seq, text if text is not None else json.dumps(message))
            self.last_seq = seq

    def leave_hub(self) -> None:
        self.stop_batching()
        if self.hub is not None:
            self.hub.remove(self)
            self.hub = None

    async def websocket_disconnect(self, message: WebSocketDisconnectEvent) -> None:
        self.leave_hub()
        await super().websocket_disconnect(message)

    async def read_snapshot(self, reason: str) -> dict[str, Any] | None:
        return await database_sync_to_async(realtime.market_snapshot)(self.market_id, reason)

    async def read_current_seq(self) -> int | None:
        return await database_sync_to_async(realtime.current_seq)(self.market_id)

    async def read_stored(self, after: int, until: int) -> list[dict[str, Any]]:
        return await database_sync_to_async(realtime.stored_messages)(self.market_id, after, until, self.limit)

    async def market_batch(self, event: dict[str, Any]) -> None:
        """One committed transaction's public messages (``trading.realtime.MARKET_BATCH``), each with its JSON text
        encoded once by the publisher for every subscriber (``texts``)."""
        await self.receive_batch(event["messages"], event.get("texts"))


class AgentConsumer(SequencedFeed):
    """``/ws/agent/``: the authenticated agent's own ``order``, ``fill``, ``position`` and ``balance`` messages, by
    the agent's ``seq``, after a ``snapshot`` (or the ``?since=`` replay) (:class:`SequencedFeed`).

    The key comes in the ``Authorization: Bearer`` header only. A handshake with ``?api_key=`` in its URL is accepted
    only to say so (``api_key_in_url``), then closed with 4401: a key in a URL ends up in logs. A missing, unknown or
    revoked key closes the connection before accepting it (HTTP 403). When the key is revoked while the feed is open,
    the client gets an ``api_key_revoked`` error and the connection closes with 4401. The key is never logged.
    """

    feed = "agent"
    agent_id: str
    cancel_on_disconnect = False

    async def connect(self) -> None:
        flag = query_param(self.scope, "cancel_on_disconnect")
        if flag is not None and flag.lower() not in _FLAGS:
            await self.refuse(
                "invalid_request", "cancel_on_disconnect must be true or false.", close_code=CLOSE_INVALID_REQUEST
            )
            return
        if query_param(self.scope, "api_key") is not None:
            await self.refuse(
                "api_key_in_url",
                "Send the API key in the Authorization header (Authorization: Bearer <api_key>), not in the URL: "
                "URLs are written to logs. Revoke this key if the URL may have been logged.",
                close_code=CLOSE_KEY_REVOKED,
            )
            return
        raw = api_key_from_scope(self.scope)
        if not raw:
            await self.close()
            return
        lookup = database_sync_to_async(api_key_lookup)
        key = await lookup(raw)
        if (
            key is None
            or not await self.join(realtime.agent_group(key.agent_id))
            or not await self.join(realtime.key_group(key.id))
            # Revoked between the lookup and joining its group: the notice may have gone out before we listened.
            or await lookup(raw) is None
        ):
            await self.close()
            return
        self.agent_id = str(key.agent_id)
        self.sequence = f"agent {self.agent_id}"
        self.cancel_on_disconnect = flag is not None and _FLAGS[flag.lower()]
        await self.accept()
        await self.start_sequence()

    async def read_snapshot(self, reason: str) -> dict[str, Any] | None:
        return await database_sync_to_async(agent_feed.agent_snapshot)(self.agent_id, reason)

    async def read_current_seq(self) -> int | None:
        return await database_sync_to_async(agent_feed.current_seq)(self.agent_id)

    async def read_stored(self, after: int, until: int) -> list[dict[str, Any]]:
        return await database_sync_to_async(agent_feed.stored_messages)(self.agent_id, after, until, self.limit)

    async def disconnect(self, code: int | None) -> None:
        """With ``?cancel_on_disconnect=true``: the connection closed (the client went away, or the server closed
        it), so every resting order of the agent is cancelled now, reason ``disconnected``
        (:func:`trading.heartbeat.orders_cancel_on_disconnect`). A server that dies takes no action: the heartbeat
        (``POST /agents/me/heartbeat/``) covers that."""
        if not (self.cancel_on_disconnect and self.counted):
            return
        try:
            await database_sync_to_async(heartbeat.orders_cancel_on_disconnect)(agent_id=self.agent_id)
        except Exception:
            logger.exception("cancel on disconnect failed for agent %s", self.agent_id)

    async def key_revoked(self, event: dict[str, Any]) -> None:
        """The key of this feed was revoked (``trading.realtime.KEY_REVOKED``): say so and close with 4401."""
        await self.send_error("api_key_revoked", "The API key of this feed was revoked; reconnect with an active key.")
        await self.close(code=CLOSE_KEY_REVOKED)

    async def agent_batch(self, event: dict[str, Any]) -> None:
        """One committed transaction's messages for this agent (``trading.realtime.AGENT_BATCH``)."""
        await self.receive_batch(event["messages"], event.get("texts"))
