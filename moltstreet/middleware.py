"""Request logging without secrets.

The server's own access log (daphne's) writes the raw HTTP request line, query string included, so a client that
puts its API key in a URL against the guide's advice (the private websocket refuses ``?api_key=`` with
``api_key_in_url``; HTTP requests authenticate only by header) would have its key written to disk. ``make run``, the
Dockerfile and the tests therefore start daphne with ``-v 0`` (no access log), and :class:`AccessLogMiddleware` writes
one line per HTTP request instead, with secrets in the query string redacted.

The same middleware gives each request its id (``X-Request-ID``, carried by every line logged while it is handled:
``moltstreet.logs``) and counts it in the HTTP metrics (``moltstreet.metrics``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import parse_qsl, urlencode

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from moltstreet import metrics
from moltstreet.logs import KEY_PATTERN, REDACTED, request_context

logger = logging.getLogger("moltstreet.access")

# Query parameters whose values are secrets; any value that looks like a MoltStreet key (KEY_PATTERN) is one too.
SECRET_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "password", "secret"})

# An incoming X-Request-ID is kept when it looks like an id (a proxy's, a client's), else replaced by a new one.
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")


def redact_query(query: str) -> str:
    """``query`` with the values of secret parameters and anything shaped like an API key replaced by
    ``[redacted]``; a query that cannot be parsed is redacted whole."""
    if not query:
        return ""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return REDACTED
    cleaned = [
        (name, REDACTED if name.lower() in SECRET_PARAMS else KEY_PATTERN.sub(REDACTED, value)) for name, value in pairs
    ]
    return urlencode(cleaned, safe="[]")


def loggable_path(request) -> str:
    """The request's path and redacted query string, as written to the log."""
    path = KEY_PATTERN.sub(REDACTED, request.path)
    query = redact_query(request.META.get("QUERY_STRING", ""))
    return f"{path}?{query}" if query else path


def request_id_of(request) -> str:
    """The request's ``X-Request-ID`` if it is a well-formed id (1-128 letters, digits and ``._:-``, not shaped
    like an API key), else a new random one (32 hex digits)."""
    sent = request.META.get("HTTP_X_REQUEST_ID", "")
    if sent and _REQUEST_ID.fullmatch(sent) and not KEY_PATTERN.search(sent):
        return sent
    return uuid.uuid4().hex


class AccessLogMiddleware:
    """One INFO line per HTTP request on the ``moltstreet.access`` logger: ``METHOD path?query status duration``,
    with secrets redacted (:func:`redact_query`), the fields ``method``, ``path``, ``route``, ``status`` and
    ``duration_ms``, and whatever the view bound (``moltstreet.logs.bind``: ``agent_id``, ``order_id``, ...).

    Each request gets an id (:func:`request_id_of`) that every line logged while it is handled carries and that is
    returned in ``X-Request-ID``; its route, status and duration go to the HTTP metrics; a
    ``Server-Timing: app;dur=<ms>`` header tells the time spent. Works in both sync and async stacks without a
    thread switch."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        request_id = request.request_id = request_id_of(request)
        with request_context(request_id):
            response = self.get_response(request)
            self._log(request, response, started, request_id)
        return response

    async def _acall(self, request):
        started = time.perf_counter()
        request_id = request.request_id = request_id_of(request)
        with request_context(request_id):
            response = await self.get_response(request)
            self._log(request, response, started, request_id)
        return response

    @staticmethod
    def _log(request, response, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        elapsed_ms = elapsed * 1000
        # W3C Server-Timing: the time the app spent on the request, so clients and benchmarks can tell it apart
        # from the network and the server's queue (bench/README.md).
        response["Server-Timing"] = f"app;dur={elapsed_ms:.2f}"
        response[REQUEST_ID_HEADER] = request_id
        route = metrics.route_of(request)
        metrics.HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        metrics.HTTP_SECONDS.labels(route).observe(elapsed)
        path = loggable_path(request)
        logger.info(
            "%s %s %s %.1fms",
            request.method,
            path,
            response.status_code,
            elapsed_ms,
            extra={
                "method": request.method,
                "path": path,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(elapsed_ms, 2),
            },
        )
