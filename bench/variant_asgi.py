"""The application of ``moltstreet.asgi`` with its two framework entry points picked by the environment, so that
bench/entry_points.py can serve each variant with the real server and compare them (docs/performance.md,
"Framework entry points"). Served as ``variant_asgi:application`` with bench/ on ``PYTHONPATH``
(``harness.running_server(app=harness.VARIANT_APP)``); nothing of the application imports it.

* ``BENCH_ASGI``: ``stock`` serves HTTP with Django's own ``get_asgi_application()`` (the middleware chain built
  async: each ``MiddlewareMixin`` hook and the view handed to a thread with ``sync_to_async``); ``sync-chain`` with
  :class:`SyncChainASGIHandler` below (the chain built synchronous, as under WSGI, and entered once with
  ``sync_to_async``); ``as-is`` (the default) with whatever ``moltstreet.asgi`` serves.
* ``BENCH_DISPATCH``: ``channels`` gives the live feeds' consumers channels' own ``AsyncConsumer.dispatch`` (an
  ``aclose_old_connections()`` hop to the shared thread before every message); ``skip-close`` gives them
  :func:`dispatch_skipping_close` below; ``as-is`` (the default) leaves ``trading.consumers`` as it is.

Both alternatives are copies kept here, so the comparison can be run again whichever one the application serves.
"""

import os
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moltstreet.settings")

from channels.consumer import AsyncConsumer, get_handler_name
from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

from moltstreet import asgi as served
from trading.consumers import FeedConsumer

ASGI = os.environ.get("BENCH_ASGI", "as-is")
DISPATCH = os.environ.get("BENCH_DISPATCH", "as-is")


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler with the whole middleware chain and the view run synchronously in one worker thread,
    entered once with ``sync_to_async(thread_sensitive=True)`` (the override once served by moltstreet.asgi)."""

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        self._middleware_chain = sync_to_async(self._middleware_chain, thread_sensitive=True)


async def dispatch_skipping_close(self: AsyncConsumer, message: dict[str, Any]) -> None:
    """Channels' ``AsyncConsumer.dispatch`` without its ``aclose_old_connections()`` before every message (the
    override once served by trading.consumers.FeedConsumer)."""
    handler = getattr(self, get_handler_name(message), None)
    if handler is None:
        raise ValueError(f"No handler for message type {message['type']}")
    await handler(message)


HTTP = {
    "as-is": lambda: served.application.application_mapping["http"],
    "stock": get_asgi_application,
    "sync-chain": SyncChainASGIHandler,
}
DISPATCHES = {"channels": AsyncConsumer.dispatch, "skip-close": dispatch_skipping_close}

if ASGI not in HTTP:
    raise SystemExit(f"BENCH_ASGI={ASGI!r}: one of {', '.join(HTTP)}")
if DISPATCH != "as-is":
    if DISPATCH not in DISPATCHES:
        raise SystemExit(f"BENCH_DISPATCH={DISPATCH!r}: one of as-is, {', '.join(DISPATCHES)}")
    FeedConsumer.dispatch = DISPATCHES[DISPATCH]  # both feeds' consumers inherit it

application = ProtocolTypeRouter(
    {"http": HTTP[ASGI](), "websocket": served.application.application_mapping["websocket"]}
)
