"""Websocket routes of the live feed (docs/realtime.md), mounted by ``moltstreet.asgi``."""

from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from trading.consumers import AgentConsumer, MarketConsumer

websocket_urlpatterns = [
    path("ws/markets/<uuid:market_id>/", MarketConsumer.as_asgi()),
    path("ws/agent/", AgentConsumer.as_asgi()),
    # Any other path (a malformed market id included) is refused at the handshake instead of raising in the router.
    re_path(r"", WebsocketDenier.as_asgi()),
]
