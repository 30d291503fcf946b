"""Websocket routes of the live feed (docs/realtime.md), mounted by ``moltstreet.asgi``."""

from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from trading.consumers import AgentConsumer, MarketConsumer

# django-stubs types path()'s view as a Django view; channels' URLRouter routes ASGI applications with it, as its docs
# show (a gap between the two stub packages), hence the ignores.
websocket_urlpatterns = [
    path("ws/markets/<uuid:market_id>/", MarketConsumer.as_asgi()),  # type: ignore[arg-type]
    path("ws/agent/", AgentConsumer.as_asgi()),  # type: ignore[arg-type]
    # Any other path (a malformed market id included) is refused at the handshake instead of raising in the router.
    re_path(r"", WebsocketDenier.as_asgi()),  # type: ignore[arg-type]
]
