"""A local HTTP server standing in for Kalshi, Polymarket and Manifold in tests (DESIGN section 10).

Not a test file: the source clients' tests and the poller's use it. The server runs in a thread on 127.0.0.1 (a
free port), answers from a route table, and logs every request it receives::

    def test_something(source_server):              # the fixture below: started, settings pointed at it
        page = source_server.load("kalshi/sdv_markets_page.json")
        source_server.route("GET", KALSHI + "/markets", Reply(429, headers={"Retry-After": "1"}), Reply(json=page))
        ...                                         # KalshiClient() now talks to the server
        assert len(source_server.requests_to(KALSHI + "/markets")) == 2

A route is a method, a path and optionally the query parameters it needs (``query={"cursor": "abc"}``: those
parameters must be present with those values; others may be too). The most specific matching route answers (most
query parameters; among equals the last registered). A route answers with its replies in turn and repeats the last
one: ``Reply(500), Reply(json=...)`` is "500, then 200 for ever"; ``*down(3), Reply(json=...)`` is "down for 3
requests". A request no route matches gets a 404 (``{"error": "no route"}``) and is logged like the others.

A :class:`Reply` is a status, headers and a body: ``json=`` (encoded here), ``body=`` (raw bytes, e.g. not JSON),
or ``Reply.file("polymarket/ra1nty_clob_book.json")`` (a recorded response served byte for byte from
``/work/shared/data/sources``, found as ``Path(settings.BASE_DIR).parent / "shared" / "data" / "sources"``). ``delay``
holds the response back that many seconds (a timeout); ``trickle`` sends the body in pieces that many seconds apart
(a source that answers, slowly). Delays end early when the server stops.

Where no recording exists for a case (a 429, a second page, a settled market), derive it in the test from a recorded
one (``copy.deepcopy(server.load(...))``, change fields) and say in a comment what was changed.

Each source's base URL is the server's URL plus a prefix, so one server serves all of them: ``KALSHI``
(``/trade-api/v2``, as the real base), ``GAMMA`` (``/gamma``), ``CLOB`` (``/clob``) and ``MANIFOLD`` (``/manifold``;
Manifold's paths then start with ``/v0/``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

KALSHI = "/trade-api/v2"
GAMMA = "/gamma"
CLOB = "/clob"
MANIFOLD = "/manifold"

# Fast retries and short timeouts for tests: 3 attempts a few hundredths of a second apart.
FAST_SOURCE_HTTP = {
    "CONNECT_TIMEOUT": 0.5,
    "TIMEOUT": 1.0,
    "RETRY_ATTEMPTS": 3,
    "RETRY_WAIT_MIN": 0.01,
    "RETRY_WAIT_MAX": 0.05,
    "RETRY_AFTER_MAX": 5.0,
}


def data_dir() -> Path:
    """``/work/shared/data/sources``, the recorded responses; fails the test with a clear message when missing."""
    from django.conf import settings

    path = Path(settings.BASE_DIR).parent / "shared" / "data" / "sources"
    if not path.is_dir():
        pytest.fail(
            f"The recorded source responses are missing: no directory {path} "
            "(the shared data set of Kalshi, Polymarket and Manifold responses, see its README.md)."
        )
    return path


@dataclass(frozen=True)
class Reply:
    """One response: ``status``, ``headers``, and a body from ``json`` (any JSON value) or ``body`` (raw bytes).

    ``delay``: seconds to wait before answering. ``trickle``: seconds between the pieces of the body (sent in
    ``pieces`` parts), after the headers.
    """

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float = 0.0
    pieces: int = 4

    @classmethod
    def file(cls, relative_path: str, **kwargs: Any) -> Reply:
        """A recorded response under ``/work/shared/data/sources``, served byte for byte as JSON."""
        return cls(body=(data_dir() / relative_path).read_bytes(), **kwargs)

    def encoded(self) -> tuple[bytes, str]:
        """The body and its content type."""
        if self.body is not None:
            return self.body, self.headers.get("Content-Type", "application/json")
        if self.json is None and self.status == 204:
            return b"", "application/json"
        return json.dumps(self.json).encode(), "application/json"


def down(requests: int, status: int = 503, **kwargs: Any) -> list[Reply]:
    """``requests`` error replies in a row: ``route(..., *down(3), Reply(json=...))``."""
    return [Reply(status=status, json={"error": "unavailable"}, **kwargs) for _ in range(requests)]


@dataclass
class Route:
    """A method, a path and the query parameters it needs; its replies in turn, the last one repeated."""

    method: str
    path: str
    query: dict[str, str]
    replies: list[Reply]
    served: int = 0

    def matches(self, method: str, path: str, query: dict[str, str]) -> bool:
        return (
            method == self.method
            and path == self.path
            and all(query.get(key) == value for key, value in self.query.items())
        )

    def next_reply(self) -> Reply:
        reply = self.replies[min(self.served, len(self.replies) - 1)]
        self.served += 1
        return reply


@dataclass(frozen=True)
class SeenRequest:
    """A request the server received: ``query`` holds the last value of each parameter, ``at`` is
    ``time.monotonic()`` on arrival."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float


class SourceServer:
    """The server: :meth:`route` to script it, :attr:`requests` (or :meth:`requests_to`) to see what it received.

    ``url`` is ``http://127.0.0.1:<port>`` once :meth:`start` ran. Use as a context manager or call
    :meth:`start`/:meth:`stop`; the :func:`source_server` fixture does both.
    """

    def __init__(self) -> None:
        self.data = data_dir()
        self._routes: list[Route] = []
        self._requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # Scripting

    def route(self, method: str, path: str, *replies: Reply, query: dict[str, Any] | None = None) -> Route:
        """Answer ``method path`` (with at least ``query``'s parameters) with ``replies`` in turn, then the last again.

        ``path`` includes the source's prefix (``KALSHI + "/markets"``). Returns the route (``route.served`` counts
        its answers).
        """
        if not replies:
            raise ValueError("a route needs at least one reply")
        new = Route(method.upper(), path, {k: str(v) for k, v in (query or {}).items()}, list(replies))
        with self._lock:
            self._routes.append(new)
        return new

    def load(self, relative_path: str) -> Any:
        """A recorded response under ``/work/shared/data/sources``, parsed (deep-copy it before changing it, or
        load it again: every call parses the file anew)."""
        return json.loads((self.data / relative_path).read_text())

    def reset(self) -> None:
        """Forget the routes and the requests seen."""
        with self._lock:
            self._routes.clear()
            self._requests.clear()

    # What it saw

    @property
    def requests(self) -> list[SeenRequest]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str, method: str = "GET") -> list[SeenRequest]:
        """The requests received for ``method path``."""
        return [seen for seen in self.requests if seen.path == path and seen.method == method.upper()]

    # Life

    def start(self) -> SourceServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # A short poll interval: stop() waits up to one for the serving loop to notice (0.5 s by default, per test).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="source-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes delayed and trickling replies, so shutdown does not wait for them
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SourceServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # Serving (the handler's thread)

    def _answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        with self._lock:
            self._requests.append(SeenRequest(method, parts.path, query, headers, body, time.monotonic()))
            matching = [
                (len(route.query), index, route)
                for index, route in enumerate(self._routes)
                if route.matches(method, parts.path, query)
            ]
            if not matching:
                return Reply(404, json={"error": "no route", "method": method, "path": parts.path})
            return max(matching, key=lambda found: found[:2])[2].next_reply()

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; ``False`` when the server stopped meanwhile."""
        return not self._stopping.wait(seconds) if seconds > 0 else not self._stopping.is_set()


def _handler_for(server: SourceServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received = self.rfile.read(length) if length else b""
            reply = server._answer(self.command, self.path, dict(self.headers.items()), received)
            if not server._pause(reply.delay):
                return
            body, content_type = reply.encoded()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in reply.headers.items():
                    if name.lower() not in ("content-type", "content-length"):
                        self.send_header(name, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if reply.trickle > 0 and body:
                    size = max(1, -(-len(body) // max(1, reply.pieces)))
                    for start in range(0, len(body), size):
                        self.wfile.write(body[start : start + size])
                        self.wfile.flush()
                        if not server._pause(reply.trickle):
                            return
                else:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first (a timeout test): nothing to answer to

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the request log is server.requests

    return Handler


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` of a port nothing listens on (bound, then closed): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def point_settings_at(settings: Any, url: str) -> None:
    """Point the sources' base URLs at ``url`` (a :class:`SourceServer`'s, or a closed port's) and make their
    retries fast (``FAST_SOURCE_HTTP``). ``settings`` is pytest-django's fixture, which restores them after the
    test."""
    settings.KALSHI_API_BASE = url + KALSHI
    settings.POLYMARKET_GAMMA_BASE = url + GAMMA
    settings.POLYMARKET_CLOB_BASE = url + CLOB
    settings.MANIFOLD_API_BASE = url + MANIFOLD
    settings.SOURCE_HTTP = {**settings.SOURCE_HTTP, **FAST_SOURCE_HTTP}


@pytest.fixture
def source_server(settings) -> Iterator[SourceServer]:
    """A started :class:`SourceServer` with no routes, the settings' base URLs pointed at it and fast retries
    (``FAST_SOURCE_HTTP``); stopped after the test. Build clients inside the test, after this fixture ran: they read
    the settings when built."""
    with SourceServer() as server:
        point_settings_at(settings, server.url)
        yield server


@pytest.fixture
def unreachable_sources(settings) -> str:
    """The settings' base URLs pointed at a closed port (connection refused), with fast retries; returns its URL."""
    url = closed_port_url()
    point_settings_at(settings, url)
    return url
