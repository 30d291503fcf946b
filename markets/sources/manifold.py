"""Manifold (API v0) as a source (DESIGN section 10).

``GET /v0/markets?limit=&before=`` lists markets newest first ("ordered by creation date descending"; ``limit`` at
most 1000, default 500; ``before`` is the id of the last market of the previous page, per Manifold's own
``docs/docs/api.md``), ``GET /v0/market/{id}`` answers one market (a ``FullMarket``: with ``textDescription``). Times are
epoch milliseconds. There is no order book: bid and ask stay empty. A resolved binary market says ``YES``, ``NO``,
``CANCEL`` or ``MKT`` (resolved to ``resolutionProbability``); the last two resolve MoltStreet's mirror ``VOID``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings
from django.utils import timezone

from markets.sources.base import (
    CLOSED,
    MANIFOLD,
    OPEN,
    SETTLED,
    BadEntry,
    SourceError,
    SourceHTTP,
    SourceMarket,
    amount,
    epoch_ms,
    probability,
)

logger = logging.getLogger(__name__)

# Manifold's API documentation says "Feel free to use the API for any purpose you'd like"; no content licence
# (Creative Commons or other) could be confirmed, so the line credits the source and nothing more.
TERMS = "Market data from Manifold (manifold.markets)."

STATUSES = (OPEN, "any")
_RESULTS = {"YES": "YES", "NO": "NO", "CANCEL": "VOID", "MKT": "VOID"}


class ManifoldClient:
    """Manifold's binary markets as :class:`SourceMarket` values (the :class:`SourceClient` protocol).

    ``base_url`` defaults to ``settings.MANIFOLD_API_BASE`` (the host: paths are under ``/v0/``); ``transport`` is
    for tests. ``page_size`` markets are asked for per page, at most ``max_pages`` pages per listing. ``now`` is the
    clock that decides whether an unresolved market is still open (its ``closeTime`` in the future); tests fix it.
    """

    name = MANIFOLD

    def __init__(
        self,
        base_url: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        page_size: int = 500,
        max_pages: int = 50,
        now: Callable[[], datetime] = timezone.now,
    ):
        self.http = SourceHTTP(base_url or settings.MANIFOLD_API_BASE, transport=transport)
        self.page_size, self.max_pages, self.now = page_size, max_pages, now

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ManifoldClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def list_markets(
        self, *, query: str = "", status: str = OPEN, limit: int = 20
    ) -> Iterator[SourceMarket | BadEntry]:
        """Binary markets whose question or slug contains ``query`` (case-insensitive, matched here), ``status``
        ``open`` (not resolved and closing in the future: the API has no such filter, so it is applied here) or
        ``any``, at most ``limit``, newest first.

        Pages through ``before`` lazily until a page comes back short, ``limit`` markets were yielded, or
        ``max_pages`` pages were read. Other outcome types (multiple choice, polls, numbers, dates) are passed over.
        Raises :class:`SourceError` when a page cannot be read, ``ValueError`` for another ``status``.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}, not {status!r}")
        needle = query.strip().lower()
        found = 0
        if limit <= 0:
            return
        for entry in self._entries():
            if not isinstance(entry, dict):
                yield BadEntry(f"a market entry is a {type(entry).__name__}, not an object")
                continue
            if entry.get("outcomeType") != "BINARY":
                continue
            if needle and not any(needle in str(entry.get(key) or "").lower() for key in ("question", "slug")):
                continue
            item = self._read(entry)
            if isinstance(item, BadEntry):
                yield item
            elif status != OPEN or item.status == OPEN:
                yield item
                found += 1
                if found >= limit:  # before the next entry, which may cost another page
                    return

    def get_market(self, external_id: str) -> SourceMarket | None:
        """The market with id ``external_id``; ``None`` when Manifold has no such market (404) or it is not binary.

        Raises :class:`SourceError` when Manifold cannot be read or the market cannot be read.
        """
        body = self.http.get_json(f"/v0/market/{quote(external_id, safe='')}", missing_ok=True)
        if body is None:
            return None
        if not isinstance(body, dict):
            raise SourceError(f"Manifold /v0/market/{external_id}: the body is not a market object")
        if body.get("outcomeType") != "BINARY":
            return None
        item = self._read(body)
        if isinstance(item, BadEntry):
            raise SourceError(f"Manifold /v0/market/{external_id}: {item.reason}")
        return item

    def _entries(self) -> Iterator[Any]:
        """The raw entries of every page, requesting the next page only when the caller wants more."""
        before = ""
        for _ in range(self.max_pages):
            params: dict[str, Any] = {"limit": self.page_size}
            if before:
                params["before"] = before
            body = self.http.get_json("/v0/markets", params)
            if not isinstance(body, list):
                raise SourceError("Manifold /v0/markets: the body is not a list of markets")
            yield from body
            last = body[-1] if body else None
            last_id = last.get("id") if isinstance(last, dict) else None
            # The next page starts after the last entry: without its id (or with the same one again) it cannot.
            if len(body) < self.page_size or not isinstance(last_id, str) or not last_id or last_id == before:
                return
            before = last_id
        logger.warning("Manifold /v0/markets: stopped after %d pages", self.max_pages)

    def _read(self, entry: dict[str, Any]) -> SourceMarket | BadEntry:
        market_id = entry.get("id")
        try:
            return self._market(entry)
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("Manifold market %r skipped: %s", market_id, exc)
            return BadEntry(str(exc), external_id=market_id if isinstance(market_id, str) else "")

    def _market(self, entry: dict[str, Any]) -> SourceMarket:
        market_id, question = _text(entry, "id"), _text(entry, "question")
        if not market_id:
            raise ValueError("no id")
        if not question:
            raise ValueError("no question")
        close_time = _time(entry, "closeTime")
        if entry.get("isResolved") is True:
            resolution = entry.get("resolution")
            if resolution not in _RESULTS:
                # Not guessed: a binary market resolves YES, NO, CANCEL or MKT, and anything else is left for a
                # later pass (or an operator) rather than voiding the mirror on a word we do not know.
                raise ValueError(f"resolved, but to {resolution!r}")
            status, result = SETTLED, _RESULTS[resolution]
            settled_at = _time(entry, "resolutionTime")
            evidence = {key: entry.get(key) for key in ("resolution", "resolutionTime", "resolutionProbability")}
        else:
            status = OPEN if close_time is None or close_time > self.now() else CLOSED
            result, settled_at, evidence = None, None, {}
        url = _text(entry, "url")
        if not url and _text(entry, "creatorUsername") and _text(entry, "slug"):
            url = f"https://manifold.markets/{quote(_text(entry, 'creatorUsername'))}/{quote(_text(entry, 'slug'))}"
        # textDescription is the plain text of a FullMarket; older responses had a plain-text description, newer
        # ones a rich-text (TipTap JSON) one, which is not rules text.
        description = entry.get("description")
        rules = _text(entry, "textDescription") or (description.strip() if isinstance(description, str) else "")
        groups = entry.get("groupSlugs")
        return SourceMarket(
            source=MANIFOLD,
            external_id=market_id,
            question=question,
            url=url,
            rules=rules,
            category=str(groups[0]) if isinstance(groups, list) and groups else "",
            close_time=close_time,
            status=status,
            yes_price=_price(entry, "probability"),
            volume=amount(entry.get("volume")),
            result=result,
            settled_at=settled_at,
            evidence=evidence,
            terms=TERMS,
        )


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    return value.strip() if isinstance(value, str) else ""


def _price(entry: dict[str, Any], key: str) -> Decimal | None:
    """A probability 0-1; ``None`` when absent; ``ValueError`` when present but not a probability."""
    raw = entry.get(key)
    value = probability(raw)
    if value is None and raw not in (None, ""):
        raise ValueError(f"{key} is not a probability: {raw!r}")
    return value


def _time(entry: dict[str, Any], key: str) -> datetime | None:
    """Epoch milliseconds as an aware UTC time; ``None`` when absent; ``ValueError`` when unreadable."""
    raw = entry.get(key)
    value = epoch_ms(raw)
    if value is None and raw is not None:
        raise ValueError(f"{key} is not a time in epoch milliseconds: {raw!r}")
    return value
