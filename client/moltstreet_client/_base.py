"""What the sync and async clients share: URLs, request bodies, the retry policy and the decoding of answers.

Retry policy (``max_retries`` extra attempts after the first):

* ``429`` and ``503`` answers are retried for every request: the server says it changed nothing. The wait honours
  ``Retry-After`` (never shorter, a little jitter on top); without it the wait is exponential backoff with jitter.
* A connection that could not be made (``httpx.ConnectError``, ``ConnectTimeout``, ``PoolTimeout``: the request
  surely never reached the server) is retried for every request.
* Any other transport failure (a read timeout, a dropped connection) means the server may have acted on it; it is
  retried only for idempotent requests (GET, DELETE, cancel-all) and for keyed ones (an order carries its
  ``client_order_id``, so the server answers a repeat with the original order).
* Nothing else is retried (a 500 is raised at once: the request may have been carried out).
"""

from __future__ import annotations

import email.utils
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from moltstreet_client._version import __version__
from moltstreet_client.errors import MoltStreetError, TransportError, error_from_body

API_PREFIX = "/api/v1"
RETRY_STATUSES = frozenset({429, 503})
USER_AGENT = f"moltstreet-client/{__version__}"

# Failures in which the request was certainly not sent: safe to retry whatever it was.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TICK = Decimal("0.01")


def normalize_base_url(base_url: str) -> str:
    """``http://host:8000/`` or ``http://host:8000/api/v1`` -> ``http://host:8000`` (the site's root)."""
    base = base_url.strip().rstrip("/")
    if base.endswith(API_PREFIX):
        base = base[: -len(API_PREFIX)]
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, not {base_url!r}")
    return base


def ws_base_url(base_url: str) -> str:
    """The websocket root of an HTTP root: ``http://h`` -> ``ws://h``, ``https://h`` -> ``wss://h``."""
    return "ws" + base_url.removeprefix("http")


def new_client_order_id() -> str:
    """A fresh ``client_order_id``: 32 hex digits (a uuid4)."""
    return uuid.uuid4().hex


def ident(value: Any) -> str:
    """An id as the API wants it: a ``str``/``UUID``, or a model with ``.id`` (a :class:`Market`, :class:`Order`)."""
    if value is None:
        raise ValueError("an id is required")
    found = getattr(value, "id", value)
    return str(found)


def optional_ident(value: Any) -> str | None:
    return None if value is None else ident(value)


def price_text(price: Any) -> str:
    """A price as the API's decimal string: ``Decimal("0.55")``, ``"0.55"``, ``0.55`` -> ``"0.55"``. A value off
    the 0.01 tick is sent as it is, for the server to refuse (``invalid_price``) rather than silently rounded."""
    if isinstance(price, float):
        price = repr(price)
    try:
        value = Decimal(str(price))
    except InvalidOperation:
        return str(price)
    if value.is_finite() and value == value.quantize(_TICK):
        return str(value.quantize(_TICK))
    return str(price)


def decimal_text(value: Any) -> str:
    """A probability or amount as a decimal string (floats through ``repr``, never binary noise)."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def time_text(value: datetime | str) -> str:
    """A datetime as ISO 8601 with its zone; a naive one is refused (the API needs a zone)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("datetimes sent to the API must be timezone-aware (e.g. datetime.now(UTC))")
    return value.isoformat()


def clean_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters without the ``None`` ones; datetimes as ISO 8601, booleans as ``true``/``false``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = time_text(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out[key] = value
    return out


def next_params(next_url: str | None) -> dict[str, str] | None:
    """The query of a ``next`` link, to request again on the same path through this client's own base URL (the
    link's host is the server's view of itself, which a proxy may rewrite)."""
    if not next_url:
        return None
    return dict(parse_qsl(urlsplit(next_url).query, keep_blank_values=True))


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date (seconds from now, at least 0); else ``None``."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def decode(response: httpx.Response) -> Any:
    """The JSON body of an answer (``None`` if empty or not JSON)."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def error_of(response: httpx.Response) -> MoltStreetError:
    return error_from_body(
        response.status_code,
        decode(response),
        retry_after=retry_after_seconds(response),
        fallback_message=response.reason_phrase or "",
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: ``max_retries`` extra attempts; backoff ``base * 2**n`` seconds (half of
    it random), at most ``backoff_max``; a ``Retry-After`` longer than ``max_retry_after`` is not waited for (the
    error is raised with its ``retry_after``)."""

    max_retries: int = 3
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    max_retry_after: float = 60.0

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        if retry_after is not None:
            # Never earlier than the server asked; up to 10% (at most 1 s) later so that clients spread out.
            return retry_after + random.uniform(0, min(1.0, retry_after * 0.1))
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def retry_answer(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying this answer, or ``None`` not to retry it."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        retry_after = retry_after_seconds(response)
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        return self.backoff(attempt, retry_after)

    def retry_failure(self, exc: httpx.TransportError, attempt: int, *, replayable: bool) -> float | None:
        """Seconds to wait before retrying after a transport failure, or ``None`` not to retry it. ``replayable``:
        the request is idempotent or keyed, so a repeat cannot act twice."""
        if attempt >= self.max_retries:
            return None
        if isinstance(exc, NOT_SENT) or replayable:
            return self.backoff(attempt)
        return None


@dataclass
class Call:
    """One API request to make: method, path under ``/api/v1``, query, JSON body, and whether repeating it is
    harmless (``replayable``)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    replayable: bool = False

    @property
    def url(self) -> str:
        return API_PREFIX + self.path


def transport_error(call: Call, exc: BaseException, attempts: int) -> TransportError:
    return TransportError(
        f"{call.method} {call.url}: no answer after {attempts} attempt{'s' if attempts != 1 else ''} "
        f"({type(exc).__name__}: {exc})",
        cause=exc,
        attempts=attempts,
        method=call.method,
        url=call.url,
    )


def headers(api_key: str | None) -> dict[str, str]:
    """The headers of one request: JSON, and the key if the client has one (read per request: it may change)."""
    out = {"Accept": "application/json"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out
