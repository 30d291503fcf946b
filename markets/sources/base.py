"""What every source client shares (DESIGN section 10): the market it reports, its errors, and its HTTP.

A source is an outside venue whose public market data MoltStreet mirrors. Each has one client module
(``markets/sources/kalshi.py``, ``polymarket.py``, ``manifold.py``) turning the venue's JSON into
:class:`SourceMarket` values; the poller (``markets/poller.py``) does the rest. Clients talk HTTP through
:class:`SourceHTTP`: httpx with a 5 s connect and 10 s total timeout, and tenacity retries (3 attempts, exponential
waits of 2-10 s, or the ``Retry-After`` the source asked for) on 429, 5xx and connection errors. What still fails
after the retries is a :class:`SourceError`; one entry of a page that cannot be read is a :class:`BadEntry`, so the
pass skips it, counts it and goes on.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import httpx
from django.conf import settings
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

logger = logging.getLogger(__name__)

KALSHI, POLYMARKET, MANIFOLD = "kalshi", "polymarket", "manifold"
SOURCES = (KALSHI, POLYMARKET, MANIFOLD)
SOURCE_NAMES = {KALSHI: "Kalshi", POLYMARKET: "Polymarket", MANIFOLD: "Manifold"}

# A market's state at its source, as every client reports it.
OPEN, CLOSED, SETTLED = "open", "closed", "settled"
PROBABILITY_PLACES = Decimal("0.0001")


@dataclass(frozen=True)
class SourceMarket:
    """One binary market as its source reports it, normalized.

    ``yes_price`` is the source's own probability of YES (0-1, four places): Kalshi's last price (or the bid/ask mid
    when it never traded), Polymarket's ``outcomePrices[0]``, Manifold's ``probability``. ``yes_bid``/``yes_ask`` are
    the top of its book as YES prices where it has one. ``volume`` is in the source's own unit (contracts, USD,
    mana). ``status`` is ``open`` (trading), ``closed`` (trading over, no result yet) or ``settled`` (``result`` is
    ``YES``, ``NO`` or ``VOID``; ``VOID`` for a cancelled or non-binary result), with ``settled_at`` and the raw
    fields the result rests on in ``evidence``. Times are aware UTC.
    """

    source: str
    external_id: str
    question: str
    url: str = ""
    rules: str = ""
    description: str = ""
    category: str = ""
    close_time: datetime | None = None
    status: str = OPEN
    yes_price: Decimal | None = None
    yes_bid: Decimal | None = None
    yes_ask: Decimal | None = None
    volume: Decimal | None = None
    result: str | None = None
    settled_at: datetime | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    terms: str = ""  # the licence or terms line kept with the mirrored text

    @property
    def settled(self) -> bool:
        return self.status == SETTLED and self.result is not None


@dataclass(frozen=True)
class BadEntry:
    """An entry of a page that could not be read as a market: skipped, counted and logged, never fatal."""

    reason: str
    external_id: str = ""


class SourceError(Exception):
    """The source could not be read: unreachable, timing out, rate-limiting or answering garbage after the retries.

    ``status`` is the last HTTP status, if any."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class SourceClient(Protocol):
    """What the poller asks of a source."""

    name: str

    def list_markets(
        self, *, query: str = "", status: str = OPEN, limit: int = 20
    ) -> Iterator[SourceMarket | BadEntry]:
        """The source's binary markets whose question (or ticker, slug) contains ``query`` (case-insensitive;
        ``""`` matches all), ``status`` ``open`` or ``any``, at most ``limit`` of them, paging through the
        source's cursor. A non-binary market is passed over silently; an unreadable one is yielded as a
        :class:`BadEntry`. Raises :class:`SourceError` when a page cannot be read."""
        ...

    def get_market(self, external_id: str) -> SourceMarket | None:
        """One market by its id at the source, or ``None`` when the source no longer has it (404) or it is not a
        binary market. Raises :class:`SourceError`; a market that cannot be read is a :class:`SourceError` too."""
        ...

    def close(self) -> None:
        """Close the client's connections."""
        ...


# --------------------------------------------------------------------------------------------------------------------
# Parsing helpers shared by the clients


def probability(value: Any) -> Decimal | None:
    """A probability 0-1 from a number or a decimal string, four places; ``None`` for missing or out of range."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or number < 0 or number > 1:
        return None
    return number.quantize(PROBABILITY_PLACES)


def amount(value: Any) -> Decimal | None:
    """A non-negative amount (volume) from a number or a decimal string; ``None`` when missing or unreadable."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() and number >= 0 else None


def iso_time(value: Any) -> datetime | None:
    """An aware UTC time from ISO 8601 text (``Z``, offsets, or Polymarket's ``"2026-06-10 13:13:13+00"``)."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif len(text) > 3 and text[-3] in "+-" and text[-2:].isdigit() and ":" not in text[-6:]:
        text += ":00"  # "+00" -> "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def epoch_ms(value: Any) -> datetime | None:
    """An aware UTC time from epoch milliseconds (Manifold)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------------------
# HTTP


class RetryableStatus(Exception):
    """A 429 or 5xx answer, worth another attempt (after ``retry_after`` seconds when the source said so)."""

    def __init__(self, status: int, retry_after: float | None):
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after = status, retry_after


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date; ``None`` when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    # A source's garbage header must not escape as a ValueError (or, for a "-0000" date, a naive datetime and a
    # TypeError): an unreadable Retry-After is no Retry-After, and the exponential wait applies.
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(tz=UTC)).total_seconds())


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, RetryableStatus | httpx.TransportError)


class SourceHTTP:
    """GETs of one source's JSON API with DESIGN section 10's timeouts and retries.

    ``base_url`` comes from the settings (``KALSHI_API_BASE``, ...), so tests point it at a local server.
    ``transport`` is for tests only (an ``httpx.MockTransport``).
    """

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None):
        config = settings.SOURCE_HTTP
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(config["TIMEOUT"], connect=config["CONNECT_TIMEOUT"]),
            headers={"Accept": "application/json", "User-Agent": "MoltStreet source poller"},
            transport=transport,
            follow_redirects=True,
        )
        self.attempts = config["RETRY_ATTEMPTS"]
        self.backoff = wait_exponential(
            multiplier=config["RETRY_WAIT_MIN"], min=config["RETRY_WAIT_MIN"], max=config["RETRY_WAIT_MAX"]
        )
        self.max_wait = config["RETRY_AFTER_MAX"]
        self.total_timeout = config["TIMEOUT"]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> SourceHTTP:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _wait(self, retry_state: Any) -> float:
        """Tenacity's wait: the source's ``Retry-After`` (at most ``RETRY_AFTER_MAX`` seconds), else exponential."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RetryableStatus) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait)
        return self.backoff(retry_state)

    def get_json(self, path: str, params: dict[str, Any] | None = None, *, missing_ok: bool = False) -> Any:
        """``GET base_url + path`` and its JSON body; ``None`` for a 404 when ``missing_ok``.

        Retries 429, 5xx and connection errors (timeouts included); raises :class:`SourceError` when they persist,
        for any other 4xx, or for a body that is not JSON.
        """
        url = f"{self.base_url}{path}"
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self.attempts),
                wait=self._wait,
                retry=retry_if_exception(_retryable),
                reraise=True,
                sleep=time.sleep,
            ):
                with attempt:
                    status, body, retry_after = self._get(path, params)
                    if status == 429 or status >= 500:
                        raise RetryableStatus(status, retry_after)
        except RetryableStatus as exc:
            raise SourceError(f"{url}: HTTP {exc.status} after {self.attempts} attempts", status=exc.status) from exc
        except httpx.TransportError as exc:
            raise SourceError(f"{url}: {exc.__class__.__name__} after {self.attempts} attempts") from exc
        except httpx.HTTPError as exc:
            # Not worth another attempt (a body that fails its Content-Encoding, too many redirects), but still the
            # source's failure, not ours: the caller sees a SourceError like any other.
            raise SourceError(f"{url}: {exc.__class__.__name__}: {exc}") from exc
        if status == 404 and missing_ok:
            return None
        if status >= 400:
            raise SourceError(f"{url}: HTTP {status}", status=status)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise SourceError(f"{url}: the body is not JSON") from exc

    def _get(self, path: str, params: dict[str, Any] | None) -> tuple[int, bytes, float | None]:
        """One GET: status, body and ``Retry-After``, the whole of it within about ``TIMEOUT`` seconds.

        httpx's timeouts bound each read, not the request: a source trickling its body a few bytes at a time would
        hold a pass for as long as it liked. The body is read in chunks against one deadline (checked as each chunk
        arrives, so a request ends at most one read timeout past it), and a request past it is a ``ReadTimeout``,
        retried like any other."""
        deadline = time.monotonic() + self.total_timeout
        with self.client.stream("GET", path, params=params) as response:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(
                        f"the response took longer than {self.total_timeout} s", request=response.request
                    )
            return response.status_code, b"".join(chunks), _retry_after(response)
