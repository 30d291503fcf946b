"""The one market shape (markets/shape.py): the REST API, the live feed, the market page and the stored ``market``
events render a market from one field table, each as a named subset of it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from markets import shape
from markets.models import Market, MarketEvent
from markets.selectors import with_current_resolution
from markets.services import market_create
from markets.tests.factories import ImportedMarketFactory
from testsupport.api import api_client, operator_resolver
from trading.lifecycle import market_close
from trading.realtime import market_snapshot, public_message
from trading.resolution import market_resolve
from trading.tests.factories import mint, new_agent, place


@pytest.fixture
def traded_market(db):
    """A market with a trade at 0.37, a YES bid at 0.30 and a NO bid at 0.60 (a YES ask at 0.40)."""
    buyer, seller = new_agent("yes"), new_agent("no")
    market = market_create(
        creator=new_agent("creator"), question="Shapes?", deadline=timezone.now() + timedelta(days=3)
    )
    mint(buyer, seller, market, 5, "0.37")
    place(buyer, market, "YES", "BUY", "0.30", 2)
    place(seller, market, "NO", "BUY", "0.60", 3)
    return Market.objects.get(id=market.id)


def _as_the_api_reads_it(market: Market) -> Market:
    return with_current_resolution(Market.objects.select_related("creator")).get(id=market.id)


def test_the_api_answers_a_market_in_its_full_shape(traded_market):
    body = api_client().get(f"/api/v1/markets/{traded_market.id}/").json()

    assert list(body) == list(shape.API)
    assert body == shape.market_view(_as_the_api_reads_it(traded_market))
    assert body["yes_price"] == "0.37" and body["no_price"] == "0.63"
    assert (body["best_bid"], body["best_ask"]) == ("0.30", "0.40")


def test_the_schema_describes_exactly_the_fields_of_the_shape(db):
    schema = api_client().get("/api/schema/?format=json").json()

    assert list(schema["components"]["schemas"]["Market"]["properties"]) == list(shape.API)


def test_the_feed_and_the_page_show_named_subsets_of_the_same_shape(traded_market, client):
    full = shape.market_view(_as_the_api_reads_it(traded_market))

    snapshot = market_snapshot(traded_market.id, "subscribe")
    live = client.get(f"/markets/{traded_market.id}/").context["live"]

    assert snapshot["market"] == {name: full[name] for name in shape.FEED}
    assert list(snapshot["market"]) == list(shape.FEED)
    assert live["market"] == {name: full[name] for name in shape.PAGE}
    assert live["reference_price"] == full["reference_price"]


def test_a_mirrored_markets_reference_price_keeps_its_four_places_everywhere(db, client):
    market = ImportedMarketFactory(reference_price="0.43", source_url="https://example.com/q")

    body = api_client().get(f"/api/v1/markets/{market.id}/").json()

    assert body["reference_price"] == "0.4300"
    assert market_snapshot(market.id, "subscribe")["market"]["reference_price"] == "0.4300"
    assert client.get(f"/markets/{market.id}/").context["live"]["reference_price"] == "0.4300"


def test_a_market_event_stores_the_state_in_its_recorded_format(traded_market):
    stored = MarketEvent.objects.get(market=traded_market, seq=1).data["market"]  # the created event

    assert stored == {
        "id": str(traded_market.id),
        "status": "open",
        "outcome": None,
        "last_price": None,
        "volume": 0,
        "deadline": traded_market.deadline.isoformat(),  # "+00:00", where the API writes "Z"
    }


def test_closing_and_resolving_record_the_state_then(traded_market):
    market_close(market_id=traded_market.id)
    market_resolve(market_id=traded_market.id, outcome="YES", resolver=operator_resolver())

    recorded = {
        event.data["event"]: event.data["market"]
        for event in MarketEvent.objects.filter(market=traded_market, kind=MarketEvent.Kind.MARKET)
    }

    assert {name: recorded["closed"][name] for name in ("status", "outcome", "last_price", "volume")} == {
        "status": "closed",
        "outcome": None,
        "last_price": "0.37",
        "volume": 5,
    }
    assert (recorded["resolved"]["status"], recorded["resolved"]["outcome"]) == ("resolved", "YES")


def test_a_stored_market_event_reads_as_it_always_has(traded_market):
    # As market events have been stored since the first version; the deadline in another offset than UTC.
    event = MarketEvent(
        market=traded_market,
        seq=99,
        kind=MarketEvent.Kind.MARKET,
        data={
            "event": "updated",
            "market": {
                "id": str(traded_market.id),
                "status": "open",
                "outcome": None,
                "last_price": "0.42",
                "volume": 7,
                "deadline": "2027-01-02T03:04:05.123456+02:00",
            },
            "fields": ["deadline"],
        },
    )

    message = public_message(str(traded_market.id), event, traded_market)

    assert message == {
        "type": "market",
        "seq": 99,
        "event": "updated",
        "market": {
            "id": str(traded_market.id),
            "question": "Shapes?",
            "status": "open",
            "outcome": None,
            "yes_price": "0.42",
            "no_price": "0.58",
            "best_bid": "0.30",  # the book as the market row has it now: events do not record it
            "best_ask": "0.40",
            "volume": 7,
            "deadline": "2027-01-02T01:04:05.123456Z",
            "reference_price": None,
        },
    }
    assert list(message["market"]) == list(shape.FEED)


def test_a_recorded_state_reads_back_as_the_shape_renders_it(traded_market):
    recorded = shape.market_payload(traded_market)

    view = shape.recorded_view(recorded)

    assert view == {
        name: value for name, value in shape.market_view(traded_market).items() if name in (*shape.RECORDED, "no_price")
    }
    assert Decimal(view["yes_price"]) + Decimal(view["no_price"]) == 1
