"""Log lines as JSON objects (or plain text), each carrying the request id and the ids bound while it is handled.

``LOG_FORMAT=text`` (the default, as under ``make run``) writes ``<time> <level> <logger> <message> key=value ...``
for a person at a terminal. ``LOG_FORMAT=json`` (production: the Dockerfile and docker-compose.yml set it) writes
every line as one JSON object: ``timestamp``, ``level``, ``logger``, ``message``, ``request_id``, then whatever the
code bound (:func:`bind`, :func:`log_context`: ``agent_id``, ``market_id``, ``order_id``) or passed as ``extra``.

The fields live in a :class:`contextvars.ContextVar`, so each request (set up by
``moltstreet.middleware.AccessLogMiddleware``) and each management command sees only its own. Both formatters
redact anything shaped like an API key, wherever it appears in the line: whatever a caller logs, no key reaches disk.

This module imports only the standard library and python-json-logger, so uvicorn's own log configuration
(``moltstreet/uvicorn-logging.json``) can use it before Django is set up.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

# Anything shaped like a MoltStreet API key (``ms_`` and its token), wherever it appears; the request log
# (moltstreet/middleware.py) redacts query strings with it too.
KEY_PATTERN = re.compile(r"ms_[A-Za-z0-9_\-]{8,}")
REDACTED = "[redacted]"

# The fields every line logged in this context carries. Always replaced, never mutated: a copied context (a thread
# started by ``sync_to_async``, a task) then keeps what it had.
_fields: ContextVar[dict[str, Any]] = ContextVar("moltstreet_log_fields", default={})  # noqa: B039 (never mutated)


def current_fields() -> dict[str, Any]:
    """The fields bound in this context (a copy)."""
    return dict(_fields.get())


def bind(**fields: Any) -> None:
    """Add ``fields`` to every line logged from here to the end of the current context (a request: the middleware
    starts each one empty). ``None`` values are left out. Use :func:`log_context` where no request bounds it."""
    _fields.set({**_fields.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` for the lines logged inside the ``with`` block only."""
    token = _fields.set({**_fields.get(), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _fields.reset(token)


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """A fresh set of fields holding only ``request_id``, for the lines of one request."""
    token = _fields.set({"request_id": request_id})
    try:
        yield
    finally:
        _fields.reset(token)


class ContextFilter(logging.Filter):
    """Copy the context's fields onto each record (``request_id`` always, ``None`` outside a request); a field the
    call passed itself as ``extra`` wins. Django logs a response's 4xx/5xx after the middleware is done, with the
    request as ``extra``: its line takes the id from the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _fields.get()
        if not hasattr(record, "request_id"):
            record.request_id = fields.get("request_id") or getattr(
                getattr(record, "request", None), "request_id", None
            )
        for name, value in fields.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def redact(text: str) -> str:
    """``text`` with every substring shaped like an API key replaced by ``[redacted]``."""
    return KEY_PATTERN.sub(REDACTED, text) if "ms_" in text else text


# Record attributes that are not fields of a line: the standard ones, and Django's ``request`` (an object whose repr
# holds the raw query string) and ``server_time``.
_NOT_FIELDS = {*RESERVED_ATTRS, "taskName", "request", "server_time", "color_message"}


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: ``timestamp`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``,
    ``request_id``, then the context's fields and the call's ``extra``; ``exc_info`` holds a traceback."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=sorted(_NOT_FIELDS),
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["timestamp"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)
        log_data.setdefault("request_id", None)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# The access line's fields that its message already says (``GET /api/v1/orders/ 201 3.1ms``): a text line leaves
# them out; a JSON line keeps them, for machines.
_ACCESS_LOGGER = "moltstreet.access"
_IN_ACCESS_MESSAGE = frozenset({"method", "path", "route", "status", "duration_ms"})


class TextFormatter(logging.Formatter):
    """One line a record, for a person at a terminal: time, level, logger, message, then the fields that are not
    in the message (``key=value``: the ids bound while it was logged, the request id last but one)::

        2026-01-01 12:00:00,000 INFO    moltstreet.access POST /api/v1/orders/ 201 3.1ms request_id=… agent_id=…

    A traceback stays below its line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        left_out = _IN_ACCESS_MESSAGE if record.name == _ACCESS_LOGGER else ()
        fields = [
            f"{name}={value}"
            for name, value in record.__dict__.items()
            if name not in _NOT_FIELDS and name not in left_out and not name.startswith("_") and value is not None
        ]
        if fields:
            head, newline, rest = line.partition("\n")  # a traceback stays below the first line
            line = f"{head} {' '.join(fields)}{newline}{rest}"
        return redact(line)


def log_format() -> str:
    """``json`` or ``text``: ``LOG_FORMAT`` (either, any case); ``text`` when it is unset or empty. Raises
    ``ValueError`` for anything else."""
    chosen = os.environ.get("LOG_FORMAT", "").strip().lower() or "text"
    if chosen not in ("json", "text"):
        raise ValueError(f"LOG_FORMAT must be json or text, not {chosen!r}")
    return chosen


def formatter(kind: str | None = None, **kwargs: Any) -> logging.Formatter:
    """The formatter of ``kind`` (``json`` or ``text``; default :func:`log_format`), as a ``logging.config``
    factory: ``{"()": "moltstreet.logs.formatter"}``."""
    return JsonFormatter() if (kind or log_format()) == "json" else TextFormatter()
