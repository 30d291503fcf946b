"""Polymarket (Gamma market data, with the CLOB's order book) as a source (DESIGN section 10).

Gamma's ``GET /markets?limit=&offset=&active=true&closed=false`` lists markets a page at a time (plain offset
paging; an empty or short page is the last) and ``GET /markets/{id}`` answers one market object. ``outcomes``,
``outcomePrices`` and ``clobTokenIds`` are JSON-encoded *strings*, ``closedTime`` is not ISO
(``"2026-06-10 13:13:13+00"``), numbers come as strings or floats (``/work/shared/data/sources/README.md``). When Gamma
has no ``bestBid``/``bestAsk``, the CLOB's ``GET /book?token_id=`` gives the top of the YES token's book: prices are
strings, bids sorted low to high and asks high to low, so the best of each is found, not assumed.
"""

from __future__ import annotations

import json
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
    OPEN,
    POLYMARKET,
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

TERMS = "Market data from Polymarket (polymarket.com), used under its terms."

STATUS_FILTERS = {OPEN: {"active": "true", "closed": "false"}, "any": {}}  # our list status -> Gamma's filters

# A closed market's final outcomePrices (YES, NO) -> its result. Anything else closed is awaiting resolution.
_FINAL_PRICES: dict[tuple[Decimal, ...], str] = {
    (Decimal(1), Decimal(0)): "YES",
    (Decimal(0), Decimal(1)): "NO",
    (Decimal("0.5"), Decimal("0.5")): "VOID",  # "resolves 50-50"
}


class PolymarketClient:
    """Polymarket's Yes/No markets as :class:`SourceMarket` values (the :class:`SourceClient` protocol).

    ``base_url`` and ``clob_base_url`` default to ``settings.POLYMARKET_GAMMA_BASE`` and
    ``settings.POLYMARKET_CLOB_BASE``; ``transport`` is for tests. ``page_size`` markets are asked for per page, at
    most ``max_pages`` pages per listing. A market whose outcomes are not exactly Yes and No (Up/Down, team names,
    Over/Under) is not binary in MoltStreet's sense and is passed over.
    """

    name = POLYMARKET

    def __init__(
        self,
        base_url: str | None = None,
        *,
        clob_base_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        page_size: int = 100,
        max_pages: int = 50,
    ):
        self.http = SourceHTTP(base_url or settings.POLYMARKET_GAMMA_BASE, transport=transport)
        self.clob = SourceHTTP(clob_base_url or settings.POLYMARKET_CLOB_BASE, transport=transport)
        self.page_size, self.max_pages = page_size, max_pages

    def close(self) -> None:
        self.http.close()
        self.clob.close()

    def __enter__(self) -> PolymarketClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def list_markets(
        self, *, query: str = "", status: str = OPEN, limit: int = 20
    ) -> Iterator[SourceMarket | BadEntry]:
        """Yes/No markets whose question or slug contains ``query`` (case-insensitive, matched here), ``status``
        ``open`` (active and not closed) or ``any``, at most ``limit``.

        Pages through ``offset`` lazily until a page comes back short, ``limit`` markets were yielded, or
        ``max_pages`` pages were read. Reads the CLOB book of an open market Gamma gives no bid or ask for; when the
        CLOB fails, the listing goes on without bid and ask (and asks it no more). Raises :class:`SourceError` when
        a Gamma page cannot be read, ``ValueError`` for another ``status``.
        """
        if status not in STATUS_FILTERS:
            raise ValueError(f"status must be one of {sorted(STATUS_FILTERS)}, not {status!r}")
        needle = query.strip().lower()
        books = _Books(self.clob)
        found = 0
        if limit <= 0:
            return
        for entry in self._entries(STATUS_FILTERS[status]):
            if not isinstance(entry, dict):
                yield BadEntry(f"a market entry is a {type(entry).__name__}, not an object")
                continue
            if needle and not any(needle in str(entry.get(key) or "").lower() for key in ("question", "slug")):
                continue
            item = _read(entry, books)
            if item is None:
                continue
            if isinstance(item, BadEntry):
                yield item
            elif status != OPEN or item.status == OPEN:
                yield item
                found += 1
                if found >= limit:  # before the next entry, which may cost another page
                    return

    def get_market(self, external_id: str) -> SourceMarket | None:
        """The Gamma market with id ``external_id``; ``None`` when Gamma has no such market (404) or it is not a
        Yes/No market.

        Raises :class:`SourceError` when Gamma cannot be read or the market cannot be read (a failing CLOB only
        leaves bid and ask out).
        """
        body = self.http.get_json(f"/markets/{quote(external_id, safe='')}", missing_ok=True)
        if body is None:
            return None
        if not isinstance(body, dict):
            raise SourceError(f"Polymarket /markets/{external_id}: the body is not a market object")
        item = _read(body, _Books(self.clob))
        if isinstance(item, BadEntry):
            raise SourceError(f"Polymarket /markets/{external_id}: {item.reason}")
        return item

    def _entries(self, filters: dict[str, str]) -> Iterator[Any]:
        """The raw entries of every page, requesting the next page only when the caller wants more."""
        offset = 0
        for _ in range(self.max_pages):
            body = self.http.get_json("/markets", {"limit": self.page_size, "offset": offset, **filters})
            if not isinstance(body, list):
                raise SourceError("Polymarket /markets: the body is not a list of markets")
            yield from body
            if len(body) < self.page_size:
                return
            offset += len(body)
        logger.warning("Polymarket /markets: stopped after %d pages", self.max_pages)


class _Books:
    """Top of the CLOB book for the markets of one listing; after one failure it is not asked again."""

    def __init__(self, http: SourceHTTP):
        self.http, self.down = http, False

    def top(self, token_id: str) -> tuple[Decimal | None, Decimal | None]:
        """(best bid, best ask) of ``token_id``'s book; ``(None, None)`` when there is no book or the CLOB fails."""
        if self.down:
            return None, None
        try:
            body = self.http.get_json("/book", {"token_id": token_id}, missing_ok=True)
        except SourceError as exc:
            self.down = True
            logger.warning("Polymarket CLOB book unavailable, bid and ask left out: %s", exc)
            return None, None
        if not isinstance(body, dict):
            return None, None
        bids, asks = _levels(body.get("bids")), _levels(body.get("asks"))
        return (max(bids) if bids else None), (min(asks) if asks else None)


def _levels(levels: Any) -> list[Decimal]:
    """The readable prices of a side of the book (``[{"price": "0.52", "size": "10"}, ...]``)."""
    if not isinstance(levels, list):
        return []
    prices = (probability(level.get("price")) for level in levels if isinstance(level, dict))
    return [price for price in prices if price is not None]


def _read(entry: dict[str, Any], books: _Books) -> SourceMarket | BadEntry | None:
    """One Gamma market as a :class:`SourceMarket`; ``None`` when it is not a Yes/No market; a :class:`BadEntry`
    saying what could not be read."""
    market_id = entry.get("id")
    external_id = str(market_id) if isinstance(market_id, str | int) and not isinstance(market_id, bool) else ""
    try:
        outcomes = _json_list(entry, "outcomes")
        if outcomes is None:
            raise ValueError("no outcomes")
        if [str(outcome).strip().lower() for outcome in outcomes] != ["yes", "no"]:
            return None
        return _market(entry, external_id, books)
    except (ValueError, TypeError, AttributeError) as exc:
        logger.warning("Polymarket market %r skipped: %s", market_id, exc)
        return BadEntry(str(exc), external_id=external_id)


def _market(entry: dict[str, Any], external_id: str, books: _Books) -> SourceMarket:
    question = _text(entry, "question")
    if not external_id.strip():
        raise ValueError("no id")
    if not question:
        raise ValueError("no question")
    prices = _json_list(entry, "outcomePrices") or []
    if prices and len(prices) != 2:
        raise ValueError(f"outcomePrices has {len(prices)} prices for 2 outcomes")
    yes_no = tuple(_probability(price, "outcomePrices") for price in prices)

    if entry.get("closed") is True:
        result = _FINAL_PRICES.get(yes_no)
        status = SETTLED if result else CLOSED
    else:
        status, result = OPEN, None

    bid, ask = _price(entry, "bestBid"), _price(entry, "bestAsk")
    bid = None if bid == 0 else bid  # no bid / no ask, as a price
    ask = None if ask == 1 else ask
    if status == OPEN and (bid is None or ask is None):
        tokens = _json_list(entry, "clobTokenIds") or []
        if tokens:
            bid, ask = books.top(str(tokens[0]))

    settled_at, evidence = None, {}
    if status == SETTLED:
        settled_at = next(
            (when for key in ("closedTime", "umaEndDate", "updatedAt") if (when := iso_time(entry.get(key)))), None
        )
        evidence = {
            key: entry.get(key)
            for key in ("outcomePrices", "closed", "umaResolutionStatus", "umaResolutionStatuses", "closedTime")
        }
    slug, events = _text(entry, "slug"), entry.get("events")
    event_slug = _text(events[0], "slug") if isinstance(events, list) and events and isinstance(events[0], dict) else ""
    if slug:
        url = f"https://polymarket.com/market/{quote(slug)}"
    elif event_slug:
        url = f"https://polymarket.com/event/{quote(event_slug)}"
    else:
        url = ""
    volume = amount(entry.get("volumeNum"))
    return SourceMarket(
        source=POLYMARKET,
        external_id=external_id.strip(),
        question=question,
        url=url,
        rules=_text(entry, "description"),
        category=_text(entry, "category"),
        close_time=_time(entry, "endDate"),
        status=status,
        yes_price=yes_no[0] if yes_no else None,
        yes_bid=bid,
        yes_ask=ask,
        volume=volume if volume is not None else amount(entry.get("volume")),
        result=result,
        settled_at=settled_at,
        evidence=evidence,
        terms=TERMS,
    )


def _json_list(entry: dict[str, Any], key: str) -> list[Any] | None:
    """A list Gamma sends JSON-encoded in a string (or, to be lenient, as a list); ``None`` when absent."""
    raw = entry.get(key)
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{key} is not JSON: {raw[:80]!r}") from exc
    if not isinstance(raw, list):
        raise ValueError(f"{key} is not a list: {raw!r}")
    return raw


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    return value.strip() if isinstance(value, str) else ""


def _probability(raw: Any, name: str) -> Decimal:
    value = probability(raw)
    if value is None:
        raise ValueError(f"{name} has a price that is not a probability: {raw!r}")
    return value


def _price(entry: dict[str, Any], key: str) -> Decimal | None:
    """A price 0-1; ``None`` when absent; ``ValueError`` when present but not a price."""
    raw = entry.get(key)
    return None if raw is None or raw == "" else _probability(raw, key)


def _time(entry: dict[str, Any], key: str) -> datetime | None:
    raw = entry.get(key)
    value = iso_time(raw)
    if value is None and raw not in (None, ""):
        raise ValueError(f"{key} is not a time: {raw!r}")
    return value
