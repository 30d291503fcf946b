"""GET /api/v1/markets/{id}/events/: a market's recorded history, as the live feed's public messages with their time,
in seq order over cursor pages, for replays and backtests."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from markets.models import Market, MarketEvent
from markets.tests.factories import SnapshotFactory
from testsupport.api import API, assert_error, assert_page, assert_time, operator_resolver, walk_pages
from testsupport.api import api_client as make_client
from trading.api import _time
from trading.lifecycle import market_close
from trading.models import Order
from trading.orders import order_cancel
from trading.realtime import public_message
from trading.resolution import market_resolve
from trading.tests.factories import new_agent, new_market, place

pytestmark = pytest.mark.django_db


def events_url(market, **params) -> str:
    query = f"?{urlencode(params)}" if params else ""
    return f"{API}/markets/{market.id}/events/{query}"


@pytest.fixture
def history():
    """A market that went through everything a market records: created, orders resting, a trade, a cancel, a
    source's snapshot, closed and resolved. Returns (market, the agents who traded in it)."""
    alice, bob, carol = new_agent("alice"), new_agent("bob"), new_agent("carol")
    market = new_market(question="Will the history replay?")
    Market.objects.filter(id=market.id).update(source="kalshi", external_id="KXHIST-1")
    place(alice, market, "YES", "BUY", "0.60", 10)  # rests
    place(bob, market, "NO", "BUY", "0.45", 4)  # trades 4 at the YES price 0.60
    resting = place(carol, market, "YES", "BUY", "0.30", 2).order
    order_cancel(agent=carol, order_id=resting.id)
    SnapshotFactory(
        market=market, source="kalshi", yes_price=Decimal("0.58"), yes_bid=Decimal("0.57"), yes_ask=Decimal("0.59")
    )
    market_close(market_id=market.id)
    market_resolve(market_id=market.id, outcome="YES", resolver=operator_resolver())
    return Market.objects.get(id=market.id), (alice, bob, carol)


def stored(market) -> list[MarketEvent]:
    return list(MarketEvent.objects.filter(market=market).order_by("seq"))


def expected(market, events) -> list[dict]:
    """What the endpoint must send for ``events``: the live feed's message of each, plus its time."""
    return [{**public_message(str(market.id), e, market), "created_at": _time(e.created_at)} for e in events]


def get_results(url: str) -> list[dict]:
    response = make_client().get(url)
    assert response.status_code == 200, response.content
    return assert_page(response.json())


# --------------------------------------------------------------------------------------------------------------------
# What it sends


def test_it_sends_every_event_of_the_market_in_seq_order_as_the_live_feed_does(history):
    market, _agents = history
    events = stored(market)

    results = get_results(events_url(market))

    assert [m["seq"] for m in results] == list(range(1, market.seq + 1))
    assert results == expected(market, events)
    for message, event in zip(results, events, strict=True):
        assert message["created_at"].endswith("Z")
        assert assert_time(message["created_at"]) == event.created_at
    kinds = {m["type"] for m in results}
    assert kinds == {"book", "trade", "market", "reference"}
    market_events = [m["event"] for m in results if m["type"] == "market"]
    assert market_events == ["created", "closed", "resolved"]
    resolved = results[-1]
    assert resolved["market"]["status"] == "resolved" and resolved["market"]["outcome"] == "YES"
    assert resolved["resolution"]["outcome"] == "YES"
    [trade] = [m["trade"] for m in results if m["type"] == "trade"]
    assert (trade["price"], trade["size"], trade["taker_side"]) == ("0.60", 4, "NO")
    [reference] = [m["reference"] for m in results if m["type"] == "reference"]
    assert reference["source"] == "kalshi" and isinstance(reference["yes_price"], str)
    assert (Decimal(reference["yes_price"]), Decimal(reference["yes_bid"])) == (Decimal("0.58"), Decimal("0.57"))
    # The cancel put carol's level back to nothing: a book message with the level at size 0.
    levels = [level for m in results if m["type"] == "book" for level in m["levels"]]
    assert {"side": "YES", "price": "0.30", "size": 0} in levels
    assert {"side": "YES", "price": "0.60", "size": 6} in levels  # alice's 10 less the 4 traded


def test_it_names_no_agent_and_no_order(history):
    market, agents = history
    text = json.dumps(get_results(events_url(market)))

    orders = Order.objects.filter(market=market)
    assert orders.count() == 3
    for secret in [*(str(a.id) for a in agents), *(a.name for a in agents), *(str(o.id) for o in orders)]:
        assert secret not in text
    for message in get_results(events_url(market)):
        if message["type"] == "book":
            assert set(message) == {"type", "seq", "market", "levels", "created_at"}
            assert all(set(level) == {"side", "price", "size"} for level in message["levels"])


def test_it_is_public_and_the_same_for_everyone(history, make_agent):
    market, _agents = history
    anonymous = make_client().get(events_url(market))
    assert anonymous.status_code == 200
    assert make_client(agent=make_agent()).get(events_url(market)).json() == anonymous.json()


def test_a_market_without_events_beyond_its_creation_has_one_message():
    market = new_market()
    [created] = get_results(events_url(market))
    assert (created["type"], created["seq"], created["event"]) == ("market", 1, "created")


# --------------------------------------------------------------------------------------------------------------------
# Pages


@pytest.mark.parametrize("page_size", [1, 3, 5])
def test_pages_chain_with_next_and_cover_every_seq_exactly_once(history, page_size):
    market, _agents = history
    results, pages = walk_pages(make_client(), events_url(market, page_size=page_size))

    assert [m["seq"] for m in results] == list(range(1, market.seq + 1))
    assert pages == -(-market.seq // page_size)  # a full last page has no empty page after it
    assert results == expected(market, stored(market))


def test_next_links_keep_the_filters(history):
    market, _agents = history
    results, pages = walk_pages(make_client(), events_url(market, since=2, until=9, page_size=2))
    assert [m["seq"] for m in results] == list(range(3, 10))
    assert pages == 4


def test_the_page_size_defaults_to_1000_and_is_capped_at_5000(history):
    market, _agents = history
    events = [
        MarketEvent(market=market, seq=market.seq + n, kind=MarketEvent.Kind.ORDER, data={}) for n in range(1, 5200)
    ]
    MarketEvent.objects.bulk_create(events)
    client = make_client()

    first = client.get(events_url(market)).json()
    assert len(first["results"]) == 1000 and first["next"]
    capped = client.get(events_url(market, page_size=99999)).json()
    assert len(capped["results"]) == 5000 and capped["next"]
    rest = client.get(capped["next"]).json()
    assert [m["seq"] for m in rest["results"]] == list(range(5001, market.seq + 5200))
    assert rest["next"] is None


def test_a_market_row_is_read_once_per_page_however_many_market_events_it_holds(history):
    market, _agents = history

    def queries(**params) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert make_client().get(events_url(market, **params)).status_code == 200
        return len(captured.captured_queries)

    last = market.seq
    one_market_event = queries(since=last - 1)  # the resolution only
    three_market_events = queries()  # created, closed and resolved
    assert one_market_event == three_market_events


def test_a_forged_cursor_is_refused(history):
    market, _agents = history
    for forged in ("p=abc", "p=NaN", "p=2026-13-45", "r=1&p=x"):
        cursor = base64.b64encode(forged.encode()).decode()
        assert_error(make_client().get(f"{events_url(market)}?cursor={cursor}"), 404, "not_found")


# --------------------------------------------------------------------------------------------------------------------
# Filters


@pytest.mark.parametrize(
    ("params", "seqs"),
    [
        ({"since": 0}, "all"),
        ({"since": 3}, "after 3"),
        ({"until": 4}, "to 4"),
        ({"since": 2, "until": 6}, "3 to 6"),
        ({"since": 5, "until": 5}, "none"),
        ({"since": 10**6}, "none"),
        ({"since": ""}, "all"),
    ],
)
def test_since_and_until_select_by_seq(history, params, seqs):
    market, _agents = history
    every = list(range(1, market.seq + 1))
    want = {
        "all": every,
        "after 3": every[3:],
        "to 4": every[:4],
        "3 to 6": [3, 4, 5, 6],
        "none": [],
    }[seqs]
    assert [m["seq"] for m in get_results(events_url(market, **params))] == want


def test_start_and_end_select_by_the_time_recorded(history):
    market, _agents = history
    events = stored(market)
    for start_event, end_event in [(events[2], events[-2]), (events[0], events[-1]), (events[4], events[4])]:
        start, end = start_event.created_at, end_event.created_at
        want = [e.seq for e in events if start <= e.created_at < end]
        # Written as the API writes times ("Z"), and with an explicit offset.
        for text in (_time, lambda t: t.isoformat()):
            got = get_results(events_url(market, start=text(start), end=text(end)))
            assert [m["seq"] for m in got] == want
    start = events[3].created_at
    assert [m["seq"] for m in get_results(events_url(market, start=_time(start)))] == [
        e.seq for e in events if e.created_at >= start
    ]
    end = events[3].created_at
    assert [m["seq"] for m in get_results(events_url(market, end=_time(end)))] == [
        e.seq for e in events if e.created_at < end
    ]
    later = _time(timezone.now() + timedelta(days=1))
    assert get_results(events_url(market, start=later)) == []


def test_seq_and_time_filters_combine(history):
    market, _agents = history
    events = stored(market)
    start = events[1].created_at
    got = get_results(events_url(market, since=4, until=8, start=_time(start)))
    assert [m["seq"] for m in got] == [e.seq for e in events if 4 < e.seq <= 8 and e.created_at >= start]


@pytest.mark.parametrize(
    "params",
    [
        {"since": "-1"},
        {"since": "abc"},
        {"since": "1.5"},
        {"since": "²"},
        {"since": " 3"},
        {"since": str(2**63)},
        {"since": "9" * 5000},
        {"until": "-5"},
        {"until": "x"},
        {"start": "yesterday"},
        {"end": "2026-13-45T00:00:00Z"},
    ],
)
def test_bad_filters_are_refused_in_the_one_error_shape(history, params):
    market, _agents = history
    error = assert_error(make_client().get(events_url(market, **params)), 400, "invalid_request")
    assert set(error["detail"]) & set(params)


@pytest.mark.parametrize(
    "params", [{"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, {"since": "7", "until": "6"}]
)
def test_a_window_with_nothing_in_it_is_an_empty_page(history, params):
    """As for snapshots/: a well-formed window that holds no event answers 200 with no results, not an error."""
    market, _agents = history
    response = make_client().get(events_url(market, **params))
    assert response.status_code == 200
    assert response.json()["results"] == []


def test_an_unknown_market_is_404(history):
    for missing in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        assert_error(make_client().get(f"{API}/markets/{missing}/events/"), 404, "not_found")


# --------------------------------------------------------------------------------------------------------------------
# The query


def _plan_nodes(plan: dict) -> list[dict]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += _plan_nodes(child)
    return nodes


@pytest.mark.parametrize("filters", [{}, {"since": 2000, "until": 4000}, {"start": "2000-01-01T00:00:00Z"}])
def test_a_page_is_one_range_scan_of_the_market_seq_index_stopped_by_its_limit(history, filters):
    market, _agents = history
    # Enough events, in this market and others, that the planner has a real choice (the statistics included).
    others = [new_market(question=f"Other {n}?") for n in range(3)]
    rows = [
        MarketEvent(market=m, seq=m.seq + n, kind=MarketEvent.Kind.ORDER, data={})
        for m in [market, *others]
        for n in range(1, 5001)
    ]
    MarketEvent.objects.bulk_create(rows, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE markets_marketevent")

    with CaptureQueriesContext(connection) as captured:
        response = make_client().get(events_url(market, page_size=50, **filters))
    assert response.status_code == 200 and len(response.json()["results"]) == 50
    [sql] = [q["sql"] for q in captured.captured_queries if 'FROM "markets_marketevent"' in q["sql"]]

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        [[[explained]]] = cursor.fetchall()
    plan = explained["Plan"]
    nodes = _plan_nodes(plan)
    assert plan["Node Type"] == "Limit", plan
    [scan] = [n for n in nodes if n.get("Relation Name") == "markets_marketevent"]
    assert scan["Node Type"] == "Index Scan" and scan["Index Name"] == "markets_event_unique_seq", scan
    assert "market_id" in scan["Index Cond"]
    assert not any(n["Node Type"] == "Sort" for n in nodes), "the index gives the order"
    # The LIMIT stops the scan: it reads the page and one more row to know there is a next page.
    assert scan["Actual Rows"] == 51, scan
