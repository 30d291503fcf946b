"""ASGI entry point served by daphne: HTTP (API, pages, admin) and the live feed's websockets (DESIGN section 8)."""

import os
from typing import Any
from urllib.parse import urlparse

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moltstreet.settings")


class SyncChainASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the whole middleware chain and the view run synchronously in one worker thread.

    Every view here is synchronous (DRF, the pages, the admin). Django's own ASGI handler runs the middleware chain
    in async mode, where each ``MiddlewareMixin`` middleware hands its ``process_request`` and ``process_response``
    to a thread with ``sync_to_async``: more than a dozen thread switches per request. Here the chain is built
    synchronous, as under WSGI, and entered once with ``sync_to_async(thread_sensitive=True)``; reading the body, the
    signals and sending the response stay async. Measured against Django's own ``get_asgi_application()`` by
    bench/entry_points.py: 14-21 % less server CPU per order, 12-30 % per read, a p50 0.76-0.99 times as long
    (docs/performance.md, "Framework entry points"); moltstreet/tests/test_asgi.py checks what it guarantees.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        # Django's private attribute, which the stubs do not type.
        self._middleware_chain = sync_to_async(self._middleware_chain, thread_sensitive=True)  # type: ignore[has-type]


django.setup(set_prefix=False)
django_asgi_app = SyncChainASGIHandler()

# Django must be set up before these imports.
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import WebsocketDenier  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402

from trading.routing import websocket_urlpatterns  # noqa: E402


class AllowedHostsWebsocketValidator:
    """Refuse a websocket handshake (HTTP 403) unless its ``Host`` and, when sent, its ``Origin`` are in
    ``ALLOWED_HOSTS``, as Django checks ``Host`` for HTTP.

    Browsers always send ``Origin``, so a page of another site cannot open our feeds; agents' own clients (Python
    ``websockets``, curl) send none and are let through: nothing here authenticates with cookies, the private feed
    needs the API key. ``Origin: null`` (sandboxed pages, files) is refused. Settings are read per connection, so
    test overrides apply.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    @staticmethod
    def allowed_hosts() -> list[str]:
        hosts = settings.ALLOWED_HOSTS
        if settings.DEBUG and not hosts:  # Django's own default while debugging
            hosts = [".localhost", "127.0.0.1", "[::1]"]
        return hosts

    def allowed(self, scope: dict[str, Any]) -> bool:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
        allowed = self.allowed_hosts()
        if "host" in headers:
            domain, _port = split_domain_port(headers["host"])
            if not domain or not validate_host(domain, allowed):
                return False
        if "origin" in headers:
            hostname = urlparse(headers["origin"]).hostname
            if hostname and ":" in hostname:  # urlparse unbrackets IPv6 literals; ALLOWED_HOSTS has them bracketed
                hostname = f"[{hostname}]"
            if not hostname or not validate_host(hostname, allowed):
                return False
        return True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:  # a websocket handshake's ASGI scope
        if not self.allowed(scope):
            return await WebsocketDenier.as_asgi()(scope, receive, send)
        return await self.application(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The routes are ASGI applications routed by path() (trading/routing.py says why the stubs disagree).
        "websocket": AllowedHostsWebsocketValidator(URLRouter(websocket_urlpatterns)),  # type: ignore[arg-type]
    }
)
