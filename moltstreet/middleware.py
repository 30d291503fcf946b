"""Request logging without secrets.

The server's own access log (daphne's) writes the raw HTTP request line, query string included, so a client that
puts its API key in a URL (``?api_key=`` is how browsers authenticate the private websocket, and clients copy it to
HTTP requests) would have its key written to disk. ``make run``, the Dockerfile and the tests therefore start daphne with ``-v 0`` (no access log), and
:class:`AccessLogMiddleware` writes one line per HTTP request instead, with secrets in the query string redacted.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qsl, urlencode

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

logger = logging.getLogger("moltstreet.access")

# Query parameters whose values are secrets, and any value that looks like a MoltStreet key wherever it appears.
SECRET_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "password", "secret"})
KEY_PATTERN = re.compile(r"ms_[A-Za-z0-9_\-]{8,}")
REDACTED = "[redacted]"


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


class AccessLogMiddleware:
    """One INFO line per HTTP request on the ``moltstreet.access`` logger: ``METHOD path?query status duration``,
    with secrets redacted (:func:`redact_query`), and a ``Server-Timing: app;dur=<ms>`` response header. Works in both sync and async stacks without a thread switch."""

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
        response = self.get_response(request)
        self._log(request, response, started)
        return response

    async def _acall(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        self._log(request, response, started)
        return response

    @staticmethod
    def _log(request, response, started: float) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        # W3C Server-Timing: the time the app spent on the request, so clients and benchmarks can tell it apart
        # from the network and the server's queue (bench/README.md).
        response["Server-Timing"] = f"app;dur={elapsed_ms:.2f}"
        logger.info("%s %s %s %.1fms", request.method, loggable_path(request), response.status_code, elapsed_ms)
