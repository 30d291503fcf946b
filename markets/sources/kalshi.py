"""Kalshi (Trade API v2, public market data) as a source (DESIGN section 10).

``GET /markets?status=open&limit=&cursor=`` lists markets a page at a time (the response's ``cursor`` names the next
page; ``""`` or ``null`` after the last), ``GET /markets/{ticker}`` answers ``{"market": {...}}``. Prices are the
``*_dollars`` strings (``"0.8100"``) and counts the ``*_fp`` strings (``"271926.68"``); the older integer-cent fields
are gone from the API (``/work/shared/data/sources/README.md``). The ``status`` filter of the list takes
``unopened|open|paused|closed|settled``, while a market's own ``status`` is one of ``initialized``, ``active``,
``inactive``, ``closed``, ``determined``, ``disputed``, ``amended``, ``finalized`` (docs.kalshi.com, "Market
Lifecycle"; older recordings say ``settled`` for ``finalized``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings

from markets.sources.base import (
    CLOSED,
    KALSHI,
    OPEN,
    PROBABILITY_PLACES,
    SETTLED,
    BadEntry,
    SourceError,
    SourceHTTP,
    SourceMarket,
    amount,
    iso_time,
    probability,
)

logger = logging.getLogger(__name__)

TERMS = "Market data from Kalshi (kalshi.com), used under its terms."

# A market's own status -> ours. "inactive" is a pause, not the end, so it stays open; "initialized" is a market
# about to open. "determined" has a result, but it may still be disputed and amended: only "finalized" is final.
_OPEN_STATUSES = {"initialized", "active", "inactive"}
_CLOSED_STATUSES = {"closed", "determined", "disputed", "amended"}
_FINAL_STATUSES = {"finalized", "settled"}

STATUS_FILTERS = {OPEN: "open", "any": None}  # our list status -> the API's status filter


class KalshiClient:
    """Kalshi's binary markets as :class:`SourceMarket` values (the :class:`SourceClient` protocol).

    ``base_url`` defaults to ``settings.KALSHI_API_BASE``; ``transport`` is for tests. ``page_size`` markets are asked
    for per page (the API's default is 100, its maximum 1000), at most ``max_pages`` pages per listing.
    """

    name = KALSHI

    def __init__(
        self,
        base_url: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        page_size: int = 100,
        max_pages: int = 50,
    ):
        self.http = SourceHTTP(base_url or settings.KALSHI_API_BASE, transport=transport)
        self.page_size, self.max_pages = page_size, max_pages

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> KalshiClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def list_markets(
        self, *, query: str = "", status: str = OPEN, limit: int = 20
    ) -> Iterator[SourceMarket | BadEntry]:
        """Binary markets whose ticker, event ticker, title or subtitles contain ``query`` (case-insensitive, matched
        here: the API has no text search), ``status`` ``open`` (trading now) or ``any``, at most ``limit``.

        Pages through ``cursor`` lazily until it is empty, ``limit`` markets were yielded, or ``max_pages`` pages were
        read. Non-binary (scalar) markets are passed over; an unreadable entry is a :class:`BadEntry`. Raises
        :class:`SourceError` when a page cannot be read, ``ValueError`` for another ``status``.
        """
        if status not in STATUS_FILTERS:
            raise ValueError(f"status must be one of {sorted(STATUS_FILTERS)}, not {status!r}")
        needle = query.strip().lower()
        found = 0
        if limit <= 0:
            return
        for entry in self._entries(STATUS_FILTERS[status]):
            if not isinstance(entry, dict):
                yield BadEntry(f"a market entry is a {type(entry).__name__}, not an object")
                continue
            if entry.get("market_type") != "binary" or not _matches(entry, needle):
                continue
            item = _read(entry)
            if isinstance(item, BadEntry):
                yield item
            elif status != OPEN or item.status == OPEN:
                yield item
                found += 1
                if found >= limit:  # before the next entry, which may cost another page
                    return

    def get_market(self, external_id: str) -> SourceMarket | None:
        """The market with ticker ``external_id``; ``None`` when Kalshi has no such market (404) or it is not binary.

        Raises :class:`SourceError` when Kalshi cannot be read or the market cannot be read.
        """
        body = self.http.get_json(f"/markets/{quote(external_id, safe='')}", missing_ok=True)
        if body is None:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("market"), dict):
            raise SourceError(f"Kalshi /markets/{external_id}: the body is not {{'market': {{...}}}}")
        entry = body["market"]
        if entry.get("market_type") != "binary":
            return None
        item = _read(entry)
        if isinstance(item, BadEntry):
            raise SourceError(f"Kalshi /markets/{external_id}: {item.reason}")
        return item

    def _entries(self, status_filter: str | None) -> Iterator[Any]:
        """The raw entries of every page, requesting the next page only when the caller wants more."""
        cursor = ""
        for _ in range(self.max_pages):
            params: dict[str, Any] = {"limit": self.page_size}
            if status_filter:
                params["status"] = status_filter
            if cursor:
                params["cursor"] = cursor
            body = self.http.get_json("/markets", params)
            if not isinstance(body, dict) or not isinstance(body.get("markets"), list):
                raise SourceError("Kalshi /markets: the body is not {'markets': [...], 'cursor': ...}")
            next_cursor = body.get("cursor")
            if next_cursor is not None and not isinstance(next_cursor, str):
                raise SourceError(f"Kalshi /markets: the cursor is a {type(next_cursor).__name__}, not a string")
            yield from body["markets"]
            # A cursor that does not move would page forever.
            if not next_cursor or next_cursor == cursor or not body["markets"]:
                return
            cursor = next_cursor
        logger.warning("Kalshi /markets: stopped after %d pages", self.max_pages)


def _matches(entry: dict[str, Any], needle: str) -> bool:
    if not needle:
        return True
    fields = ("ticker", "event_ticker", "title", "subtitle", "yes_sub_title", "no_sub_title")
    return any(needle in str(entry.get(name) or "").lower() for name in fields)


def _read(entry: dict[str, Any]) -> SourceMarket | BadEntry:
    """One binary market entry as a :class:`SourceMarket`, or a :class:`BadEntry` saying what could not be read."""
    ticker = entry.get("ticker")
    try:
        return _market(entry)
    except (ValueError, TypeError, AttributeError) as exc:
        logger.warning("Kalshi market %r skipped: %s", ticker, exc)
        return BadEntry(str(exc), external_id=ticker if isinstance(ticker, str) else "")


def _market(entry: dict[str, Any]) -> SourceMarket:
    ticker, title = _text(entry, "ticker"), _text(entry, "title")
    if not ticker:
        raise ValueError("no ticker")
    if not title:
        raise ValueError("no title")
    last = _price(entry, "last_price_dollars")
    bid, ask = _price(entry, "yes_bid_dollars"), _price(entry, "yes_ask_dollars")
    # An empty side of the book shows as a 0.0000 bid or a 1.0000 ask: no price at all.
    bid = None if bid == 0 else bid
    ask = None if ask == 1 else ask
    if last is not None and last > 0:  # Kalshi prices are 0.01-0.99: a zero last price means it never traded
        yes_price = last
    elif bid is not None and ask is not None:
        yes_price = ((bid + ask) / 2).quantize(PROBABILITY_PLACES)
    else:
        yes_price = None

    status, result, settled_at, evidence = _status(entry)
    sub = _text(entry, "yes_sub_title")
    question = f"{title} ({sub})" if sub and sub.lower() not in title.lower() else title
    rules = "\n\n".join(part for part in (_text(entry, "rules_primary"), _text(entry, "rules_secondary")) if part)
    event = _text(entry, "event_ticker")
    return SourceMarket(
        source=KALSHI,
        external_id=ticker,
        question=question,
        url=f"https://kalshi.com/markets/{(event or ticker).lower()}",
        rules=rules,
        close_time=_time(entry, "close_time"),
        status=status,
        yes_price=yes_price,
        yes_bid=bid,
        yes_ask=ask,
        volume=amount(entry.get("volume_fp")),
        result=result,
        settled_at=settled_at,
        evidence=evidence,
        terms=TERMS,
    )


def _status(entry: dict[str, Any]) -> tuple[str, str | None, datetime | None, dict[str, Any]]:
    """(status, result, settled_at, evidence) from Kalshi's ``status`` and ``result``."""
    status, result = entry.get("status"), str(entry.get("result") or "").strip().lower()
    if status in _OPEN_STATUSES:
        return OPEN, None, None, {}
    if status in _CLOSED_STATUSES or (status in _FINAL_STATUSES and not result):
        return CLOSED, None, None, {}
    if status not in _FINAL_STATUSES:
        raise ValueError(f"unknown status {status!r}")
    evidence = {
        key: entry.get(key)
        for key in ("result", "settlement_value_dollars", "settlement_ts", "expiration_value", "status")
    }
    # "void", or a scalar or fair-price settlement of a binary market: not a YES/NO answer.
    outcome = result.upper() if result in ("yes", "no") else "VOID"
    return SETTLED, outcome, _time(entry, "settlement_ts"), evidence


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    return value.strip() if isinstance(value, str) else ""


def _price(entry: dict[str, Any], key: str) -> Decimal | None:
    """A ``*_dollars`` price 0-1; ``None`` when absent; ``ValueError`` when present but not a price."""
    raw = entry.get(key)
    value = probability(raw)
    if value is None and raw not in (None, ""):
        raise ValueError(f"{key} is not a price: {raw!r}")
    return value


def _time(entry: dict[str, Any], key: str) -> datetime | None:
    raw = entry.get(key)
    value = iso_time(raw)
    if value is None and raw not in (None, ""):
        raise ValueError(f"{key} is not a time: {raw!r}")
    return value
