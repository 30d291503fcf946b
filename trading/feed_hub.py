"""One subscription per market per server process for the market feeds that take batched frames (issue 17).

A market feed opened with ``?batch_ms=`` (docs/realtime.md, "Batched frames") does not join the market's channel-layer
group itself. The first such feed of a market in a process creates that market's :class:`MarketHub`, which joins the
group once with a channel of its own and reads it in one task; every committed transaction's messages (their JSON
texts encoded once by the publisher) reach the process once and are handed to each local feed by a plain method call
(:meth:`trading.consumers.MarketConsumer.take`): no channel-layer entry, queue, task wake-up or dispatch per
subscriber and transaction. Each feed then sends what it took as one frame per ``batch_ms``.

The hub keeps the feeds' failure contract: should its channel layer fail (Redis down), every feed it serves gets
``feed_unavailable`` and is closed with 4503, as a feed joined on its own would be. It leaves the group when its last
feed has gone. Hubs are per event loop (a server process runs one; tests run several one after the other).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from django.conf import settings

from trading import realtime

logger = logging.getLogger(__name__)


class Subscriber(Protocol):
    """What a hub needs of a feed (:class:`trading.consumers.MarketConsumer` in batched mode)."""

    def take(self, messages: list[dict[str, Any]], texts: list[str | None] | None) -> None: ...

    async def close_unavailable(self) -> None: ...


# (id of the event loop, group) -> its hub. A hub holds its loop, so the id is not reused while the hub is here.
_hubs: dict[tuple[int, str], MarketHub] = {}


class MarketHub:
    """The market group ``group`` of ``layer``, joined once in this process and event loop for its batched feeds."""

    def __init__(self, layer: Any, group: str, loop: asyncio.AbstractEventLoop) -> None:
        self.layer, self.group, self.loop = layer, group, loop
        self.subscribers: set[Subscriber] = set()
        self.channel: str | None = None
        self.task: asyncio.Task | None = None
        self.leaving: asyncio.Task | None = None  # leaving the group, once the last feed has gone
        self.joining = asyncio.Lock()

    @classmethod
    def of(cls, layer: Any, group: str) -> MarketHub:
        """The hub of ``group`` on the running event loop, created (not yet joined) if there is none."""
        loop = asyncio.get_running_loop()
        key = (id(loop), group)
        hub = _hubs.get(key)
        if hub is None or hub.layer is not layer or (hub.task is not None and hub.task.done()):
            hub = _hubs[key] = cls(layer, group, loop)
        return hub

    async def add(self, subscriber: Subscriber) -> bool:
        """Serve ``subscriber`` from now on: what is published after this returns ``True`` reaches it. The first
        subscriber joins the group (within ``LIVE_PUBLISH_TIMEOUT`` seconds); ``False`` if that fails (the channel
        layer is unreachable), and the subscriber is not added."""
        async with self.joining:
            if self.task is None:
                try:
                    channel = await self.layer.new_channel()
                    await asyncio.wait_for(
                        self.layer.group_add(self.group, channel), settings.MOLTSTREET["LIVE_PUBLISH_TIMEOUT"]
                    )
                except Exception as exc:  # Redis down: the feed is refused rather than served a feed that never moves
                    logger.warning("live feed hub: joining %s failed (%s: %s)", self.group, type(exc).__name__, exc)
                    self._forget()
                    return False
                self.channel = channel
                self.task = self.loop.create_task(self.run())
                # Serving again after its last feed left (forgotten then): the market's hub for new feeds too.
                _hubs.setdefault((id(self.loop), self.group), self)
            self.subscribers.add(subscriber)
        return True

    def remove(self, subscriber: Subscriber) -> None:
        """Stop serving ``subscriber``; the last one gone, leave the group and stop reading."""
        self.subscribers.discard(subscriber)
        if self.subscribers or self.task is None or self.joining.locked():
            return
        task, self.task = self.task, None
        task.cancel()
        self._forget()
        self.leaving = self.loop.create_task(self._leave(self.channel))

    async def _leave(self, channel: str | None) -> None:
        try:
            await asyncio.wait_for(
                self.layer.group_discard(self.group, channel), settings.MOLTSTREET["LIVE_PUBLISH_TIMEOUT"]
            )
        except Exception as exc:  # best effort: with Redis down the entry expires by itself
            logger.warning("live feed hub: leaving %s failed (%s)", self.group, type(exc).__name__)

    def _forget(self) -> None:
        key = (id(self.loop), self.group)
        if _hubs.get(key) is self:
            del _hubs[key]

    async def run(self) -> None:
        """Read the hub's channel and hand each transaction's messages to every subscriber, in arrival order. On a
        channel-layer failure, every subscriber is closed as unavailable and the hub is forgotten (the next feed
        creates a new one)."""
        try:
            while True:
                message = await self.layer.receive(self.channel)
                if message.get("type") != realtime.MARKET_BATCH:
                    continue
                messages, texts = message["messages"], message.get("texts")
                for subscriber in list(self.subscribers):
                    try:
                        subscriber.take(messages, texts)
                    except Exception:  # a bug of one feed: that feed ends, the others go on
                        logger.exception("live feed hub: a subscriber of %s failed", self.group)
                        self.subscribers.discard(subscriber)
                        self.loop.create_task(subscriber.close_unavailable())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("live feed hub: %s unavailable (%s: %s)", self.group, type(exc).__name__, exc)
            self._forget()
            subscribers, self.subscribers = list(self.subscribers), set()
            for subscriber in subscribers:
                self.loop.create_task(subscriber.close_unavailable())


def hub_count() -> int:
    """How many hubs this process holds (tests check that the last feed's departure removes its hub)."""
    return len(_hubs)
