"""The source clients (markets/sources/) against a local server serving recorded Kalshi, Polymarket and Manifold
responses (markets/tests/source_server.py, /work/shared/data/sources).

Where no recording exists for a case (a second page, a settled market, a 429), the test derives the response from a
recorded one and says what it changed.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from markets.sources import (
    CLOSED,
    OPEN,
    SETTLED,
    BadEntry,
    KalshiClient,
    ManifoldClient,
    PolymarketClient,
    SourceError,
    SourceMarket,
    client_for,
)
from markets.tests.source_server import CLOB, GAMMA, KALSHI, MANIFOLD, Reply, down

DAL = "KXNFLGAME-26OCT08TBDAL-DAL"
TB = "KXNFLGAME-26OCT08TBDAL-TB"
RIHANNA = "540817"  # "New Rihanna Album before GTA VI?"
UP_DOWN = "1669969"  # "Bitcoin Up or Down - March 22, 3:50AM-3:55AM ET": outcomes Up/Down
MANIFOLD_NOW = datetime(2026, 1, 31, 19, 0, tzinfo=UTC)  # just after the newest market of the recorded page


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def markets(items) -> dict[str, SourceMarket]:
    """The markets of a listing by external id (asserting there are no bad entries among them)."""
    items = list(items)
    assert all(isinstance(item, SourceMarket) for item in items), [i for i in items if isinstance(i, BadEntry)]
    return {item.external_id: item for item in items}


@pytest.fixture
def kalshi(source_server):
    with KalshiClient() as client:
        yield client


@pytest.fixture
def polymarket(source_server):
    with PolymarketClient() as client:
        yield client


@pytest.fixture
def manifold(source_server):
    with ManifoldClient(now=lambda: MANIFOLD_NOW) as client:
        yield client


# --------------------------------------------------------------------------------------------------------------------
# Kalshi


def test_kalshi_reads_the_recorded_open_markets_page(source_server, kalshi):
    source_server.route("GET", KALSHI + "/markets", Reply.file("kalshi/sdv_markets_page.json"))

    found = markets(kalshi.list_markets())

    assert list(found) == [DAL, TB]
    dal = found[DAL]
    assert dal.source == "kalshi" and dal.status == OPEN and dal.result is None
    assert (dal.yes_price, dal.yes_bid, dal.yes_ask) == (Decimal("0.8100"), Decimal("0.8000"), Decimal("0.8100"))
    assert dal.volume == Decimal("271926.68")
    assert dal.question == "Dallas wins"  # yes_sub_title "Dallas" adds nothing to the title
    assert dal.close_time == utc(2026, 10, 11, 0, 15)
    assert dal.url == "https://kalshi.com/markets/kxnflgame-26oct08tbdal"
    assert dal.rules.startswith("If Dallas wins the TB Buccaneers vs DAL Cowboys")
    assert "If the game ends in a tie" in dal.rules  # rules_secondary follows rules_primary
    assert "Kalshi" in dal.terms
    tb = found[TB]
    assert (tb.yes_price, tb.yes_bid, tb.yes_ask, tb.volume) == (
        Decimal("0.2000"),
        Decimal("0.1900"),
        Decimal("0.2000"),
        Decimal("444468.26"),
    )
    [request] = source_server.requests_to(KALSHI + "/markets")
    assert request.query == {"status": "open", "limit": "100"}


def test_kalshi_reads_the_recorded_settled_page_as_results(source_server, kalshi):
    page = source_server.load("kalshi/cfb_markets_settled_page.json")
    source_server.route("GET", KALSHI + "/markets", Reply(json=page))
    # The recorded page names a next page; derived: that page, empty and the last.
    source_server.route(
        "GET", KALSHI + "/markets", Reply(json={"cursor": "", "markets": []}), query={"cursor": page["cursor"]}
    )

    found = markets(kalshi.list_markets(status="any"))

    assert {ticker: (m.status, m.result) for ticker, m in found.items()} == {
        "KXNCAAFTOTAL-26SEP12ULLUSC-84": (SETTLED, "NO"),
        "KXNCAAFTOTAL-26SEP12MTSTNEV-22": (SETTLED, "YES"),
        "KXNCAAFTOTAL-26SEP12MTSTNEV-25": (SETTLED, "YES"),
    }
    no = found["KXNCAAFTOTAL-26SEP12ULLUSC-84"]
    assert no.settled and no.settled_at == datetime(2026, 9, 13, 6, 18, 38, 477908, tzinfo=UTC)
    assert no.evidence == {
        "result": "no",
        "settlement_value_dollars": "0.0000",
        "settlement_ts": "2026-09-13T06:18:38.477908Z",
        "expiration_value": "79",
        "status": "finalized",
    }
    assert (no.yes_price, no.yes_bid, no.yes_ask) == (Decimal("0.0100"), None, None)  # a 0 bid and a 1 ask: no book
    assert found["KXNCAAFTOTAL-26SEP12MTSTNEV-22"].settled_at == datetime(2026, 9, 13, 6, 3, 58, 459241, tzinfo=UTC)
    first, second = source_server.requests_to(KALSHI + "/markets")
    assert "status" not in first.query and second.query["cursor"] == page["cursor"]


def test_kalshi_open_listing_passes_over_markets_that_no_longer_trade(source_server, kalshi):
    page = source_server.load("kalshi/cfb_markets_settled_page.json")
    page["cursor"] = ""  # derived: the recorded settled page, as the only page
    source_server.route("GET", KALSHI + "/markets", Reply(json=page))

    assert list(kalshi.list_markets(status="open")) == []


def test_kalshi_pages_by_cursor_until_the_cursor_is_empty(source_server, kalshi):
    recorded = source_server.load("kalshi/sdv_markets_page.json")
    # Derived: the recorded page split in two, the first naming the second by a cursor.
    first = {"cursor": "page-2", "markets": [recorded["markets"][0]]}
    second = {"cursor": "", "markets": [recorded["markets"][1]]}
    source_server.route("GET", KALSHI + "/markets", Reply(json=first))
    source_server.route("GET", KALSHI + "/markets", Reply(json=second), query={"cursor": "page-2"})

    assert list(markets(kalshi.list_markets())) == [DAL, TB]
    assert [r.query.get("cursor") for r in source_server.requests_to(KALSHI + "/markets")] == [None, "page-2"]


def test_kalshi_stops_at_the_limit_without_asking_for_the_next_page(source_server, kalshi):
    page = source_server.load("kalshi/sdv_markets_page.json")
    page["cursor"] = "page-2"  # derived: the recorded page, naming a next page
    source_server.route("GET", KALSHI + "/markets", Reply(json=page))

    assert list(markets(kalshi.list_markets(limit=1))) == [DAL]
    assert len(source_server.requests_to(KALSHI + "/markets")) == 1


def test_kalshi_stops_paging_at_the_page_cap(source_server):
    page = source_server.load("kalshi/sdv_markets_page.json")
    page["cursor"] = "again"  # derived: a source whose every page names another (a cursor that never ends)
    source_server.route("GET", KALSHI + "/markets", Reply(json=page))
    page_two = copy.deepcopy(page)
    page_two["cursor"] = "and-again"
    source_server.route("GET", KALSHI + "/markets", Reply(json=page_two), query={"cursor": "again"})
    source_server.route("GET", KALSHI + "/markets", Reply(json=page), query={"cursor": "and-again"})

    with KalshiClient(max_pages=3) as client:
        assert len(list(client.list_markets(limit=100))) == 6
    assert len(source_server.requests_to(KALSHI + "/markets")) == 3


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("tampa", [TB]),  # title and yes_sub_title
        ("kxnflgame-26oct08tbdal-dal", [DAL]),  # ticker, any case
        ("KXNFLGAME-26OCT08TBDAL", [DAL, TB]),  # event ticker
        ("super bowl", []),
    ],
)
def test_kalshi_filters_by_query_on_ticker_event_title_and_subtitles(source_server, kalshi, query, expected):
    source_server.route("GET", KALSHI + "/markets", Reply.file("kalshi/sdv_markets_page.json"))

    assert list(markets(kalshi.list_markets(query=query))) == expected


def test_kalshi_passes_over_markets_that_are_not_binary(source_server, kalshi):
    page = source_server.load("kalshi/sdv_markets_page.json")
    page["markets"][0]["market_type"] = "scalar"  # derived: the Dallas market made scalar
    source_server.route("GET", KALSHI + "/markets", Reply(json=page))

    assert list(markets(kalshi.list_markets())) == [TB]


def test_kalshi_yields_a_bad_entry_for_an_unreadable_market_and_reads_the_rest(source_server, kalshi):
    page = source_server.load("kalshi/sdv_markets_page.json")
    # Derived: Dallas's last price made a word, a copy of Tampa Bay without its ticker, and an entry that is no object.
    page["markets"][0]["last_price_dollars"] = "eighty-one cents"
    nameless = copy.deepcopy(page["markets"][1])
    del nameless["ticker"]
    page["markets"][1:1] = [nameless, "KXNFLGAME"]
    source_server.route("GET", KALSHI + "/markets", Reply(json=page))

    items = list(kalshi.list_markets())

    bad = [item for item in items if isinstance(item, BadEntry)]
    assert [(b.external_id, "last_price_dollars" in b.reason) for b in bad] == [(DAL, True), ("", False), ("", False)]
    assert "no ticker" in bad[1].reason
    assert [item.external_id for item in items if isinstance(item, SourceMarket)] == [TB]


def test_kalshi_uses_the_mid_of_bid_and_ask_when_a_market_never_traded(source_server, kalshi):
    page = source_server.load("kalshi/sdv_markets_page.json")
    page["markets"][0]["last_price_dollars"] = "0.0000"  # derived: Dallas never traded (0.80 bid, 0.81 ask)
    # Derived: Tampa Bay never traded and has an empty book (a 0 bid, a 1 ask).
    page["markets"][1].update(last_price_dollars="0.0000", yes_bid_dollars="0.0000", yes_ask_dollars="1.0000")
    source_server.route("GET", KALSHI + "/markets", Reply(json=page))

    found = markets(kalshi.list_markets())

    assert found[DAL].yes_price == Decimal("0.8050")
    assert (found[TB].yes_price, found[TB].yes_bid, found[TB].yes_ask) == (None, None, None)


def test_kalshi_reads_one_market_by_ticker(source_server, kalshi):
    source_server.route("GET", f"{KALSHI}/markets/{DAL}", Reply.file("kalshi/sdv_market_by_ticker.json"))
    source_server.route("GET", KALSHI + "/markets", Reply.file("kalshi/sdv_markets_page.json"))

    market = kalshi.get_market(DAL)

    assert market == markets(kalshi.list_markets())[DAL]  # the same market, whichever way it was read


def test_kalshi_has_no_market_for_an_unknown_ticker(source_server, kalshi):
    source_server.route("GET", KALSHI + "/markets/NOPE-1", Reply(404, json={"error": {"code": "not_found"}}))

    assert kalshi.get_market("NOPE-1") is None


def test_kalshi_reports_a_market_that_settles_between_two_polls(source_server, kalshi):
    recorded = source_server.load("kalshi/sdv_market_by_ticker.json")
    settled = copy.deepcopy(recorded)
    # Derived: the recorded open Dallas market, finalized YES after the game, as Kalshi's settled markets read.
    settled["market"].update(
        status="finalized",
        result="yes",
        settlement_value_dollars="1.0000",
        settlement_ts="2026-10-09T06:40:12.5Z",
        expiration_value="Dallas",
        yes_bid_dollars="0.0000",
        yes_ask_dollars="1.0000",
        last_price_dollars="0.9900",
    )
    source_server.route("GET", f"{KALSHI}/markets/{DAL}", Reply(json=recorded), Reply(json=settled))

    before, after = kalshi.get_market(DAL), kalshi.get_market(DAL)

    assert (before.status, before.result, before.settled_at) == (OPEN, None, None)
    assert (after.status, after.result) == (SETTLED, "YES")
    assert after.settled_at == datetime(2026, 10, 9, 6, 40, 12, 500000, tzinfo=UTC)
    assert after.evidence["result"] == "yes" and after.evidence["settlement_value_dollars"] == "1.0000"


@pytest.mark.parametrize(
    ("status", "result", "expected"),
    [
        ("active", "", (OPEN, None)),
        ("inactive", "", (OPEN, None)),  # paused, not over
        ("closed", "", (CLOSED, None)),
        ("determined", "yes", (CLOSED, None)),  # the result may still be disputed: only finalized is final
        ("finalized", "no", (SETTLED, "NO")),
        ("settled", "yes", (SETTLED, "YES")),  # the older word for finalized
        ("finalized", "void", (SETTLED, "VOID")),
        ("finalized", "scalar", (SETTLED, "VOID")),  # a binary market settled at a fair price: no YES/NO answer
    ],
)
def test_kalshi_maps_status_and_result(source_server, kalshi, status, result, expected):
    body = source_server.load("kalshi/sdv_market_by_ticker.json")
    body["market"].update(status=status, result=result)  # derived: the recorded market in another state
    source_server.route("GET", f"{KALSHI}/markets/{DAL}", Reply(json=body))

    market = kalshi.get_market(DAL)

    assert (market.status, market.result) == expected


def test_kalshi_refuses_a_market_it_cannot_read_as_a_source_error(source_server, kalshi):
    body = source_server.load("kalshi/sdv_market_by_ticker.json")
    body["market"]["status"] = "exploded"  # derived: a status Kalshi does not have
    source_server.route("GET", f"{KALSHI}/markets/{DAL}", Reply(json=body))

    with pytest.raises(SourceError, match="unknown status"):
        kalshi.get_market(DAL)


@pytest.mark.parametrize("body", [{"markets": "none today"}, [], {"cursor": 7, "markets": []}])
def test_kalshi_refuses_a_page_that_is_not_a_markets_page(source_server, kalshi, body):
    source_server.route("GET", KALSHI + "/markets", Reply(json=body))

    with pytest.raises(SourceError):
        list(kalshi.list_markets())


# --------------------------------------------------------------------------------------------------------------------
# Polymarket


def test_polymarket_reads_the_recorded_active_markets(source_server, polymarket):
    source_server.route("GET", GAMMA + "/markets", Reply.file("polymarket/drmanhattan_gamma_markets_active.json"))

    found = markets(polymarket.list_markets())

    assert list(found) == [RIHANNA, "540818", "540819", "540820", "540843"]
    rihanna = found[RIHANNA]
    assert rihanna.source == "polymarket" and rihanna.status == OPEN
    assert rihanna.question == "New Rihanna Album before GTA VI?"
    assert (rihanna.yes_price, rihanna.yes_bid, rihanna.yes_ask) == (Decimal("0.51"), Decimal("0.5"), Decimal("0.52"))
    assert rihanna.volume == Decimal("832995.125818007")
    assert rihanna.close_time == utc(2026, 7, 31, 12)
    assert rihanna.url == "https://polymarket.com/market/new-rhianna-album-before-gta-vi-926"
    assert rihanna.rules.startswith('This market will resolve to "Yes" if Rihanna officially releases')
    assert "Polymarket" in rihanna.terms
    assert found["540819"].yes_price == Decimal("0.495")
    [request] = source_server.requests_to(GAMMA + "/markets")
    assert request.query == {"limit": "100", "offset": "0", "active": "true", "closed": "false"}
    assert source_server.requests_to(CLOB + "/book") == []  # Gamma had every bid and ask


def test_polymarket_passes_over_markets_whose_outcomes_are_not_yes_and_no(source_server, polymarket):
    page = source_server.load("polymarket/drmanhattan_gamma_markets_active.json")
    # Derived: the recorded Up/Down market placed first on the recorded active page.
    page.insert(0, source_server.load("polymarket/ra1nty_gamma_market_detail.json"))
    source_server.route("GET", GAMMA + "/markets", Reply(json=page))
    source_server.route("GET", f"{GAMMA}/markets/{UP_DOWN}", Reply.file("polymarket/ra1nty_gamma_market_detail.json"))

    assert UP_DOWN not in markets(polymarket.list_markets())
    assert len(markets(polymarket.list_markets())) == 5
    assert polymarket.get_market(UP_DOWN) is None


def test_polymarket_reads_the_clob_book_when_gamma_has_no_bid_or_ask(source_server, polymarket):
    book = source_server.load("polymarket/ra1nty_clob_book.json")
    market = source_server.load("polymarket/drmanhattan_gamma_markets_active.json")[0]
    # Derived: Rihanna's market without bestBid/bestAsk, its YES token made the recorded book's token.
    del market["bestBid"], market["bestAsk"]
    tokens = json.loads(market["clobTokenIds"])
    market["clobTokenIds"] = json.dumps([book["asset_id"], tokens[1]])
    source_server.route("GET", f"{GAMMA}/markets/{RIHANNA}", Reply(json=market))
    source_server.route("GET", CLOB + "/book", Reply(json=book), query={"token_id": book["asset_id"]})

    read = polymarket.get_market(RIHANNA)

    # The recorded book has no bids and 104 asks sorted high to low: the best ask is the last, 0.001.
    assert (read.yes_bid, read.yes_ask) == (None, Decimal("0.001"))
    assert read.yes_price == Decimal("0.51")  # the price stays Gamma's outcomePrices[0]
    [request] = source_server.requests_to(CLOB + "/book")
    assert request.query == {"token_id": book["asset_id"]}


def test_polymarket_takes_the_highest_bid_and_the_lowest_ask_of_the_book(source_server, polymarket):
    market = source_server.load("polymarket/drmanhattan_gamma_markets_active.json")[0]
    del market["bestBid"]  # derived: Gamma without a best bid
    book = source_server.load("polymarket/ra1nty_clob_book.json")
    # Derived: the recorded book given bids, sorted low to high as the CLOB sorts them (best last).
    book["bids"] = [{"price": "0.3", "size": "10"}, {"price": "0.45", "size": "25"}, {"price": "0.48", "size": "5"}]
    source_server.route("GET", f"{GAMMA}/markets/{RIHANNA}", Reply(json=market))
    source_server.route("GET", CLOB + "/book", Reply(json=book))

    read = polymarket.get_market(RIHANNA)

    assert (read.yes_bid, read.yes_ask) == (Decimal("0.48"), Decimal("0.001"))


def test_polymarket_lists_without_bid_and_ask_when_the_clob_fails(source_server, polymarket):
    page = source_server.load("polymarket/drmanhattan_gamma_markets_active.json")
    for market in page:  # derived: Gamma without any bid or ask
        del market["bestBid"], market["bestAsk"]
    source_server.route("GET", GAMMA + "/markets", Reply(json=page))
    source_server.route("GET", CLOB + "/book", *down(1, status=500))

    found = markets(polymarket.list_markets())

    assert len(found) == 5
    assert all(m.yes_bid is None and m.yes_ask is None and m.yes_price is not None for m in found.values())
    assert len(source_server.requests_to(CLOB + "/book")) == 3  # one book, three attempts, then no more asking


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        ('["1", "0"]', (SETTLED, "YES")),
        ('["0", "1"]', (SETTLED, "NO")),
        ('["0.5", "0.5"]', (SETTLED, "VOID")),  # "resolves 50-50"
        ('["0.9995", "0.0005"]', (CLOSED, None)),  # closed, awaiting resolution
    ],
)
def test_polymarket_settles_a_closed_market_from_its_final_prices(source_server, polymarket, prices, expected):
    market = source_server.load("polymarket/drmanhattan_gamma_markets_active.json")[0]
    # Derived: Rihanna's market closed with these final prices, as Gamma reports a resolved market.
    market.update(
        closed=True,
        outcomePrices=prices,
        closedTime="2026-06-10 13:13:13+00",
        umaResolutionStatus="resolved",
        umaResolutionStatuses='["proposed", "resolved"]',
    )
    source_server.route("GET", f"{GAMMA}/markets/{RIHANNA}", Reply(json=market))

    read = polymarket.get_market(RIHANNA)

    assert (read.status, read.result) == expected
    if read.status == SETTLED:
        assert read.settled_at == utc(2026, 6, 10, 13, 13, 13)
        assert read.evidence == {
            "outcomePrices": prices,
            "closed": True,
            "umaResolutionStatus": "resolved",
            "umaResolutionStatuses": '["proposed", "resolved"]',
            "closedTime": "2026-06-10 13:13:13+00",
        }
    assert source_server.requests_to(CLOB + "/book") == []  # no book for a market that no longer trades


def test_polymarket_pages_by_offset_until_a_page_comes_back_short(source_server):
    page = source_server.load("polymarket/drmanhattan_gamma_markets_active.json")
    # Derived: the recorded five markets served two at a time.
    for offset in (0, 2, 4):
        source_server.route("GET", GAMMA + "/markets", Reply(json=page[offset : offset + 2]), query={"offset": offset})

    with PolymarketClient(page_size=2) as client:
        found = markets(client.list_markets(limit=10))

    assert list(found) == [RIHANNA, "540818", "540819", "540820", "540843"]
    assert [r.query["offset"] for r in source_server.requests_to(GAMMA + "/markets")] == ["0", "2", "4"]


def test_polymarket_filters_by_query_and_stops_at_the_limit(source_server, polymarket):
    source_server.route("GET", GAMMA + "/markets", Reply.file("polymarket/drmanhattan_gamma_markets_active.json"))

    assert list(markets(polymarket.list_markets(query="JESUS"))) == ["540819"]
    assert list(markets(polymarket.list_markets(query="album", limit=1))) == [RIHANNA]


def test_polymarket_has_no_market_for_an_unknown_id(source_server, polymarket):
    source_server.route("GET", GAMMA + "/markets/999999999", Reply(404, json={"type": "not found"}))

    assert polymarket.get_market("999999999") is None


def test_polymarket_yields_bad_entries_for_unreadable_markets_and_reads_the_rest(source_server, polymarket):
    page = source_server.load("polymarket/drmanhattan_gamma_markets_active.json")
    page[0]["outcomePrices"] = '["fifty-one", "0.49"]'  # derived: a price that is no number
    page[1]["outcomes"] = "Yes or No"  # derived: outcomes that are not JSON
    del page[2]["question"]  # derived: no question
    source_server.route("GET", GAMMA + "/markets", Reply(json=page))

    items = list(polymarket.list_markets())

    bad = {item.external_id: item.reason for item in items if isinstance(item, BadEntry)}
    assert list(bad) == [RIHANNA, "540818", "540819"]
    assert "outcomePrices" in bad[RIHANNA] and "outcomes" in bad["540818"] and "question" in bad["540819"]
    assert [i.external_id for i in items if isinstance(i, SourceMarket)] == ["540820", "540843"]


def test_polymarket_refuses_a_page_that_is_not_a_list(source_server, polymarket):
    source_server.route("GET", GAMMA + "/markets", Reply(json={"markets": []}))

    with pytest.raises(SourceError):
        list(polymarket.list_markets())


# --------------------------------------------------------------------------------------------------------------------
# Manifold


def test_manifold_reads_the_recorded_markets_page(source_server, manifold):
    source_server.route("GET", MANIFOLD + "/v0/markets", Reply.file("manifold/predictngin_v0_markets_first100.json"))

    found = markets(manifold.list_markets(status="any", limit=1000))

    recorded = source_server.load("manifold/predictngin_v0_markets_first100.json")
    assert list(found) == [m["id"] for m in recorded if m["outcomeType"] == "BINARY"]
    assert len(found) == 62  # of 100: multiple choice, polls, numbers and dates are passed over
    assert {(m.status, m.result) for m in found.values() if m.status == SETTLED} == {
        (SETTLED, "YES"),
        (SETTLED, "NO"),
        (SETTLED, "VOID"),
    }
    yes = found["ygtnI8ZQ5n"]  # "CBLOL - FUR beats FX", resolved YES
    assert (yes.status, yes.result, yes.yes_price) == (SETTLED, "YES", Decimal("0.78"))
    assert yes.settled_at == datetime.fromtimestamp(1769881682.350, tz=UTC)
    assert yes.evidence == {"resolution": "YES", "resolutionTime": 1769881682350, "resolutionProbability": 0.78}
    assert (yes.yes_bid, yes.yes_ask) == (None, None)  # no order book
    assert yes.volume == Decimal("479.26953036377193")
    assert yes.url == "https://manifold.markets/DogOdds/cblol-fur-beats-fx"
    assert "Manifold" in yes.terms
    assert (found["QlQRu9SQSh"].result, found["Qsys20dP9n"].result) == ("NO", "VOID")  # NO; CANCEL
    assert found["Qsys20dP9n"].evidence["resolution"] == "CANCEL"
    opened = found["qy222g0Nhq"]  # "[Polymarket] Moltbook AI agent sues a human by Feb 28?"
    assert (opened.status, opened.yes_price, opened.close_time) == (OPEN, Decimal("0.5"), utc(2026, 2, 27, 23, 59))
    resolved_multiple_choice = [m["id"] for m in recorded if m["outcomeType"] == "MULTIPLE_CHOICE" and m["isResolved"]]
    assert len(resolved_multiple_choice) == 14 and not set(resolved_multiple_choice) & set(found)
    [request] = source_server.requests_to(MANIFOLD + "/v0/markets")
    assert request.query == {"limit": "500"}  # 100 came back: the last page


def test_manifold_open_means_unresolved_and_closing_in_the_future(source_server):
    source_server.route("GET", MANIFOLD + "/v0/markets", Reply.file("manifold/predictngin_v0_markets_first100.json"))

    with ManifoldClient(now=lambda: MANIFOLD_NOW) as client:
        open_then = markets(client.list_markets(limit=1000))
    with ManifoldClient(now=lambda: utc(2026, 2, 28)) as client:
        open_later = markets(client.list_markets(limit=1000))
        everything_later = markets(client.list_markets(status="any", limit=1000))

    assert len(open_then) == 54 and all(m.status == OPEN for m in open_then.values())
    assert "qy222g0Nhq" in open_then and "qy222g0Nhq" not in open_later  # it closed on Feb 27
    assert (everything_later["qy222g0Nhq"].status, everything_later["qy222g0Nhq"].result) == (CLOSED, None)


def test_manifold_pages_by_before_until_a_page_comes_back_short(source_server):
    recorded = source_server.load("manifold/predictngin_v0_markets_first100.json")
    # Derived: the recorded 100 markets served 40 at a time, each page after the last id of the one before.
    source_server.route("GET", MANIFOLD + "/v0/markets", Reply(json=recorded[:40]))
    source_server.route(
        "GET", MANIFOLD + "/v0/markets", Reply(json=recorded[40:80]), query={"before": recorded[39]["id"]}
    )
    source_server.route(
        "GET", MANIFOLD + "/v0/markets", Reply(json=recorded[80:]), query={"before": recorded[79]["id"]}
    )

    with ManifoldClient(page_size=40, now=lambda: MANIFOLD_NOW) as client:
        found = markets(client.list_markets(status="any", limit=1000))

    assert len(found) == 62
    assert [r.query.get("before") for r in source_server.requests_to(MANIFOLD + "/v0/markets")] == [
        None,
        recorded[39]["id"],
        recorded[79]["id"],
    ]


def test_manifold_filters_by_query_on_the_question(source_server, manifold):
    source_server.route("GET", MANIFOLD + "/v0/markets", Reply.file("manifold/predictngin_v0_markets_first100.json"))

    assert list(markets(manifold.list_markets(query="gta vi", status="any"))) == ["Qsys20dP9n"]
    assert len(markets(manifold.list_markets(query="league of legends", status="any", limit=1))) == 1


def test_manifold_resolves_mkt_void_and_asks_for_the_page_after_a_full_one(source_server, manifold):
    recorded = source_server.load("manifold/pymanifold_decoded/v0_markets_2022-10-10.json")
    source_server.route("GET", MANIFOLD + "/v0/markets", Reply(json=recorded))
    # Derived: the recorded page is a full 500, so a next page is asked for: empty, the last.
    source_server.route("GET", MANIFOLD + "/v0/markets", Reply(json=[]), query={"before": recorded[-1]["id"]})

    found = markets(manifold.list_markets(status="any", limit=1000))

    market = found["TaOWd6RLq4npElKPhJOS"]  # "Poll: Was the chart better with a zoom option?", resolved MKT at 0.33
    assert (market.status, market.result) == (SETTLED, "VOID")
    assert market.evidence["resolution"] == "MKT" and market.evidence["resolutionProbability"] == 0.33
    results = [m.result for m in found.values() if m.settled]
    assert (results.count("YES"), results.count("NO"), results.count("VOID")) == (29, 25, 33)  # CANCEL 32 + MKT 1
    assert len(source_server.requests_to(MANIFOLD + "/v0/markets")) == 2


def test_manifold_reads_one_market_by_id(source_server, manifold):
    market_id = "rIR6mWqaO9xKLifr6cLL"
    path = "manifold/pymanifold_decoded/v0_market_rIR6mWqaO9xKLifr6cLL_2022-06-15.json"
    source_server.route("GET", f"{MANIFOLD}/v0/market/{market_id}", Reply.file(path))

    market = manifold.get_market(market_id)

    assert market.question == "Will Bitcoin's price fall below $25k for at least one day in 2022?"
    assert (market.status, market.result, market.yes_price) == (SETTLED, "YES", Decimal("0.9912"))
    assert market.settled_at == datetime.fromtimestamp(1655299026.599, tz=UTC)
    assert market.rules.startswith("Using data source: https://coinmarketcap.com/")
    assert market.url == "https://manifold.markets/bcongdon/will-bitcoins-price-fall-below-25k"


def test_manifold_has_no_market_for_an_unknown_id_or_a_non_binary_one(source_server, manifold):
    multiple_choice = next(
        m
        for m in source_server.load("manifold/predictngin_v0_markets_first100.json")
        if m["outcomeType"] == "MULTIPLE_CHOICE"
    )
    source_server.route("GET", MANIFOLD + "/v0/market/gone", Reply(404, json={"message": "Contract not found"}))
    source_server.route("GET", f"{MANIFOLD}/v0/market/{multiple_choice['id']}", Reply(json=multiple_choice))

    assert manifold.get_market("gone") is None
    assert manifold.get_market(multiple_choice["id"]) is None


def test_manifold_yields_bad_entries_for_unreadable_markets_and_reads_the_rest(source_server, manifold):
    recorded = source_server.load("manifold/predictngin_v0_markets_first100.json")
    binary = [m for m in recorded if m["outcomeType"] == "BINARY"][:3]
    binary[0]["probability"] = "likely"  # derived: a probability that is no number
    binary[1]["isResolved"], binary[1]["resolution"] = True, "MAYBE"  # derived: a resolution Manifold does not have
    source_server.route("GET", MANIFOLD + "/v0/markets", Reply(json=binary))

    items = list(manifold.list_markets(status="any"))

    bad = [item for item in items if isinstance(item, BadEntry)]
    assert [b.external_id for b in bad] == [binary[0]["id"], binary[1]["id"]]
    assert "probability" in bad[0].reason and "MAYBE" in bad[1].reason
    assert [i.external_id for i in items if isinstance(i, SourceMarket)] == [binary[2]["id"]]


# --------------------------------------------------------------------------------------------------------------------
# Faults, through SourceHTTP


def test_a_429_is_retried_after_the_wait_the_source_asked_for(source_server, kalshi):
    page = Reply.file("kalshi/sdv_markets_page.json")
    source_server.route(
        "GET", KALSHI + "/markets", Reply(429, json={"error": "slow down"}, headers={"Retry-After": "1"}), page
    )

    assert list(markets(kalshi.list_markets())) == [DAL, TB]
    first, second = source_server.requests_to(KALSHI + "/markets")
    assert second.at - first.at >= 0.95  # Retry-After: 1, not the 0.01 s backoff


@pytest.mark.parametrize("retry_after", ["soon", "Wed, 21 Oct 2015 07:28:00 -0000"])
def test_an_unreadable_retry_after_falls_back_to_the_backoff(source_server, kalshi, retry_after):
    # "soon" is no number and no date; the "-0000" date parses to a naive time. Either escaped as an error once.
    page = Reply.file("kalshi/sdv_markets_page.json")
    source_server.route("GET", KALSHI + "/markets", Reply(429, headers={"Retry-After": retry_after}), page)

    assert list(markets(kalshi.list_markets())) == [DAL, TB]
    assert len(source_server.requests_to(KALSHI + "/markets")) == 2


def test_a_retry_after_beyond_the_cap_waits_only_the_cap(source_server, settings):
    settings.SOURCE_HTTP = {**settings.SOURCE_HTTP, "RETRY_AFTER_MAX": 0.05}
    page = Reply.file("kalshi/sdv_markets_page.json")
    source_server.route("GET", KALSHI + "/markets", Reply(429, headers={"Retry-After": "3600"}), page)

    with KalshiClient() as client:
        assert len(markets(client.list_markets())) == 2
    first, second = source_server.requests_to(KALSHI + "/markets")
    assert second.at - first.at < 1


def test_a_500_is_retried(source_server, polymarket):
    page = Reply.file("polymarket/drmanhattan_gamma_markets_active.json")
    source_server.route("GET", GAMMA + "/markets", Reply(500, body=b"Internal Server Error"), page)

    assert len(markets(polymarket.list_markets())) == 5
    assert len(source_server.requests_to(GAMMA + "/markets")) == 2


def test_a_source_down_through_every_attempt_is_a_source_error(source_server, manifold):
    source_server.route(
        "GET", MANIFOLD + "/v0/markets", *down(3), Reply.file("manifold/predictngin_v0_markets_first100.json")
    )

    with pytest.raises(SourceError) as error:
        list(manifold.list_markets())

    assert error.value.status == 503
    assert len(source_server.requests_to(MANIFOLD + "/v0/markets")) == 3
    assert len(markets(manifold.list_markets())) == 20  # the fourth request finds it up again


def test_a_response_past_the_timeout_is_retried_then_a_source_error(source_server, settings):
    settings.SOURCE_HTTP = {**settings.SOURCE_HTTP, "TIMEOUT": 0.3}
    source_server.route("GET", KALSHI + "/markets", Reply.file("kalshi/sdv_markets_page.json", delay=2))

    with KalshiClient() as client, pytest.raises(SourceError, match="ReadTimeout after 3 attempts"):
        list(client.list_markets())

    assert len(source_server.requests_to(KALSHI + "/markets")) == 3


def test_a_body_trickling_past_the_timeout_is_a_timeout_too(source_server, settings):
    # Every piece comes sooner than the read timeout, the whole body later than the request's.
    settings.SOURCE_HTTP = {**settings.SOURCE_HTTP, "TIMEOUT": 0.3}
    source_server.route("GET", KALSHI + "/markets", Reply.file("kalshi/sdv_markets_page.json", trickle=0.15, pieces=4))

    with KalshiClient() as client, pytest.raises(SourceError, match="ReadTimeout"):
        list(client.list_markets())

    assert len(source_server.requests_to(KALSHI + "/markets")) == 3


def test_a_refused_connection_is_a_source_error(unreachable_sources):
    with KalshiClient() as client, pytest.raises(SourceError, match="ConnectError after 3 attempts"):
        client.get_market(DAL)


def test_a_body_that_is_not_json_is_a_source_error_without_retries(source_server, polymarket):
    page = b"<html><body>Just a moment...</body></html>"
    source_server.route("GET", GAMMA + "/markets", Reply(body=page, headers={"Content-Type": "text/html"}))

    with pytest.raises(SourceError, match="not JSON"):
        list(polymarket.list_markets())

    assert len(source_server.requests_to(GAMMA + "/markets")) == 1


def test_a_client_error_is_a_source_error_without_retries(source_server, kalshi):
    source_server.route("GET", KALSHI + "/markets", Reply(400, json={"error": "bad cursor"}))

    with pytest.raises(SourceError) as error:
        list(kalshi.list_markets())

    assert error.value.status == 400
    assert len(source_server.requests_to(KALSHI + "/markets")) == 1


# --------------------------------------------------------------------------------------------------------------------
# client_for


def test_client_for_builds_each_sources_client_on_the_settings_base_url(source_server):
    expected = {
        "kalshi": (KalshiClient, source_server.url + KALSHI),
        "polymarket": (PolymarketClient, source_server.url + GAMMA),
        "manifold": (ManifoldClient, source_server.url + MANIFOLD),
    }
    for source, (cls, base_url) in expected.items():
        client = client_for(source)
        try:
            assert isinstance(client, cls) and client.name == source and client.http.base_url == base_url
        finally:
            client.close()


def test_client_for_refuses_an_unknown_source():
    with pytest.raises(ValueError, match="unknown source 'metaculus'"):
        client_for("metaculus")
