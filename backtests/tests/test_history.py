"""The server's history reader (``backtests.selectors.market_history``) yields exactly what
``GET /api/v1/markets/{id}/events/`` sends, which is what the SDK's ``MarketHistory.fetch`` reads."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from backtests import selectors
from markets.models import MarketEvent
from testsupport.api import API, api_client, walk_pages

pytestmark = pytest.mark.django_db


def endpoint_events(market, **params) -> list[dict]:
    query = urlencode({"page_size": 7, **params})  # small pages: the reader must also equal the pages joined
    results, pages = walk_pages(api_client(), f"{API}/markets/{market.id}/events/?{query}")
    assert pages > 1
    return results


def test_the_history_reader_yields_exactly_what_the_events_endpoint_sends(traded_market):
    messages = selectors.market_events(traded_market)

    assert messages == endpoint_events(traded_market)
    assert {message["type"] for message in messages} == {"book", "trade", "market", "reference"}
    assert [message["seq"] for message in messages] == list(range(1, traded_market.seq + 1))


def test_the_history_reader_stops_before_end_as_the_endpoint_does(traded_market):
    events = list(MarketEvent.objects.filter(market=traded_market).order_by("seq"))
    end = events[len(events) // 2].created_at

    messages = selectors.market_events(traded_market, end=end)

    assert messages == endpoint_events(traded_market, end=end.isoformat())
    assert [message["seq"] for message in messages] == [e.seq for e in events if e.created_at < end]


def test_the_history_reader_renders_in_batches_without_changing_a_message(traded_market, monkeypatch):
    whole = selectors.market_events(traded_market)
    monkeypatch.setattr(selectors, "_CHUNK", 3)

    assert selectors.market_events(traded_market) == whole


def test_the_history_is_the_sdks_market_history(traded_market):
    history = selectors.market_history(traded_market)

    assert history.market == str(traded_market.id)
    assert history.question == traded_market.question
    assert history.deadline == traded_market.deadline
    assert history.trades == 12 and history.snapshots == 2 and history.has_data
