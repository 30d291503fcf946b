"""Spectator pages (DESIGN section 9): what each page shows, and that each takes a fixed number of queries.

Functional tests trade through the services. The query-count tests add volume with ``bulk_create`` (resting and
filled orders, trades, positions, agents, markets with consistent fields) and compare a page's query count with 10
rows against thousands; they also print how long each page takes to render with the large book.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.models import Agent
from markets.models import Forecast, Market
from markets.tests.factories import ForecastFactory, MarketFactory
from moltstreet.money import complement
from testsupport.api import operator_resolver
from trading.lifecycle import market_close
from trading.models import BookLevel, Order, Position, Side, Trade
from trading.resolution import market_resolve
from trading.tests.factories import mint, new_agent, place

pytestmark = pytest.mark.django_db

# --------------------------------------------------------------------------------------------------------------------
# Helpers


def get(client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code)
    return response.content.decode()


def ladder_levels(html: str) -> list[tuple[str, str, int]]:
    """(data-side, data-price, size) of every depth-ladder row, in page order."""
    ladder = html[html.index('id="depth-ladder"') :]
    ladder = ladder[: ladder.index("</section>")]
    rows = re.findall(r'data-side="(YES|NO)" data-price="([0-9.]+)"[^>]*>.*?class="size">(\d+)<', ladder)
    return [(side, price, int(size)) for side, price, size in rows]


def trade_ids(html: str) -> list[str]:
    return re.findall(r'class="trade-row" data-trade-id="([0-9a-f-]+)"', html)


def market_url(market: Market) -> str:
    return f"/markets/{market.id}/"


def resolved(market: Market, outcome: str) -> Market:
    return market_resolve(market_id=market.id, outcome=outcome, resolver=operator_resolver())


_bulk_names = itertools.count(1)


def bulk_agents(n: int) -> list[Agent]:
    """``n`` agents straight into the table (no grant: they only need to exist as holders and ranks)."""
    start = next(_bulk_names) * 100_000
    agents = [Agent(name=f"bulk-{start + i}", reputation=Decimal(i % 97) - 40) for i in range(n)]
    return Agent.objects.bulk_create(agents)


def bulk_markets(n: int, *, status: str = Market.Status.OPEN, traded: bool = False) -> list[Market]:
    """``n`` markets; ``traded`` gives each a last price and volume (trades are added by :func:`bulk_trades`)."""
    now = timezone.now()
    markets = [
        Market(
            question=f"Bulk question {uuid.uuid4().hex[:8]}?",
            deadline=now + timedelta(days=3 + i % 30),
            status=status,
            outcome="YES" if status == Market.Status.RESOLVED else None,
            resolved_at=now if status == Market.Status.RESOLVED else None,
            last_price=Decimal("0.50") if traded else None,
            volume=10 if traded else 0,
        )
        for i in range(n)
    ]
    return Market.objects.bulk_create(markets)


class Seq:
    """Hands out a market's next sequence numbers and writes the last one back to the market row."""

    def __init__(self, market: Market):
        market.refresh_from_db()
        self.market = market
        self.last = market.seq

    def next(self) -> int:
        self.last += 1
        return self.last

    def save(self, **fields) -> None:
        Market.objects.filter(id=self.market.id).update(seq=self.last, **fields)


def bulk_resting(market: Market, agents: list[Agent], n: int, seq: Seq) -> None:
    """``n`` resting BUY orders, alternating YES bids at 0.01-0.45 and NO bids at 0.01-0.45 (YES asks 0.55-0.99)."""
    orders = []
    for i in range(n):
        side = Side.YES if i % 2 else Side.NO
        price = Decimal(1 + i // 2 % 45) / 100
        number = seq.next()
        orders.append(
            Order(
                market=market,
                agent=agents[i % len(agents)],
                side=side,
                action="BUY",
                price=price,
                size=10,
                filled=3 if i % 5 == 0 else 0,
                status=Order.Status.PARTIAL if i % 5 == 0 else Order.Status.OPEN,
                book_side=side,
                book_price=price,
                seq=number,
                updated_seq=number,
            )
        )
    Order.objects.bulk_create(orders, batch_size=2000)
    levels: dict = {}
    for order in orders:
        key = (order.book_side, order.book_price)
        levels[key] = levels.get(key, 0) + order.size - order.filled
    for (side, price), size in levels.items():  # the services keep each level's total with its orders
        BookLevel.objects.update_or_create(
            market=market,
            book_side=side,
            price=price,
            defaults={"size": F("size") + size},
            create_defaults={"size": size},
        )


def bulk_trades(market: Market, agents: list[Agent], n: int, seq: Seq) -> list[Trade]:
    """``n`` mint trades at 0.46-0.54, each between a filled BUY YES (maker) and a filled BUY NO (taker)."""
    orders, trades = [], []
    for i in range(n):
        maker_agent, taker_agent = agents[i % len(agents)], agents[(i + 1) % len(agents)]
        price = Decimal(46 + i % 9) / 100
        maker_seq, taker_seq = seq.next(), seq.next()
        common = {"market": market, "action": "BUY", "size": 2, "filled": 2, "status": Order.Status.FILLED}
        maker = Order(
            agent=maker_agent,
            side=Side.YES,
            price=price,
            book_side=Side.YES,
            book_price=price,
            seq=maker_seq,
            updated_seq=taker_seq,
            **common,
        )
        taker = Order(
            agent=taker_agent,
            side=Side.NO,
            price=complement(price),
            book_side=Side.NO,
            book_price=complement(price),
            seq=taker_seq,
            updated_seq=taker_seq,
            **common,
        )
        orders += [maker, taker]
        trades.append(
            Trade(
                market=market,
                seq=seq.next(),
                price=price,
                size=2,
                taker_side=Side.NO,
                kind=Trade.Kind.MINT,
                maker_order=maker,
                taker_order=taker,
                maker_agent=maker_agent,
                taker_agent=taker_agent,
            )
        )
    Order.objects.bulk_create(orders, batch_size=2000)
    Market.objects.filter(id=market.id).update(trade_count=F("trade_count") + n)  # as the services count them
    return Trade.objects.bulk_create(trades, batch_size=2000)


def bulk_positions(market: Market, agents: list[Agent]) -> None:
    Position.objects.bulk_create(
        [
            Position(
                agent=agent,
                market=market,
                yes_shares=i if i % 2 else 0,
                no_shares=0 if i % 2 else i,
                yes_cost=Decimal(i) / 2 if i % 2 else Decimal("0.00"),
                no_cost=Decimal("0.00") if i % 2 else Decimal(i) / 2,
            )
            for i, agent in enumerate(agents, start=1)
        ],
        batch_size=2000,
    )


def grow_market(market: Market, *, orders: int, trades: int, holders: int) -> None:
    seq = Seq(market)
    agents = bulk_agents(max(holders, 2))
    bulk_resting(market, agents, orders, seq)
    bulk_trades(market, agents, trades, seq)
    bulk_positions(market, agents[:holders])
    market.refresh_from_db()
    seq.save(last_price=Decimal("0.50"), volume=market.volume + 2 * trades)


def count_queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        get(client, url)
    return len(queries)


def timed(client, url: str, runs: int = 3) -> float:
    """The best of ``runs`` renders of ``url``, in milliseconds."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        get(client, url)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def report(capsys, page: str, ms: float, what: str) -> None:
    with capsys.disabled():
        print(f"\n[render time] {page}: {ms:.0f} ms with {what}")


# --------------------------------------------------------------------------------------------------------------------
# The layout every page shares


def test_every_page_has_the_navigation_and_the_data_attribution(client, market):
    for url in ("/", market_url(market), "/agents/"):
        html = get(client, url)
        for link in ('href="/"', 'href="/agents/"', 'href="/docs/"', 'href="/api/docs/"'):
            assert link in html, (url, link)
        assert "ForecastBench" in html and "CC BY-SA 4.0" in html
        assert "Polymarket" in html and "Apache-2.0" in html
        assert "/static/css/site.css" in html


# --------------------------------------------------------------------------------------------------------------------
# Markets


def test_the_markets_page_shows_price_24_hour_change_and_volume_and_links_each_market(client, market):
    alice, bob = new_agent(), new_agent()
    mint(alice, bob, market, 5, yes_price="0.40")
    Trade.objects.filter(market=market).update(created_at=timezone.now() - timedelta(days=2))
    mint(alice, bob, market, 3, yes_price="0.55")

    html = get(client, "/")

    assert "Will the test pass?" in html
    assert f'href="/markets/{market.id}/"' in html
    row = html[html.index(f'data-market-id="{market.id}"') :]
    row = row[: row.index("</tr>")]
    assert ">0.55<" in row  # last traded YES price
    assert "+0.15" in row  # 0.55 now against 0.40, the last trade at or before 24 hours ago
    assert ">8<" in row  # contracts traded
    assert "Open" in row


def test_the_24_hour_change_of_a_market_that_started_trading_today_is_measured_from_its_first_trade(client, market):
    alice, bob = new_agent(), new_agent()
    mint(alice, bob, market, 2, yes_price="0.60")
    mint(alice, bob, market, 2, yes_price="0.52")

    row = get(client, "/")
    row = row[row.index(f'data-market-id="{market.id}"') :]
    assert "-0.08" in row[: row.index("</tr>")]


def test_a_market_without_trades_shows_no_price_and_no_change(client, market):
    row = get(client, "/")
    row = row[row.index(f'data-market-id="{market.id}"') :]
    row = row[: row.index("</tr>")]
    assert "No trades yet" in row
    change = re.search(r'data-label="24h">\s*(.*?)\s*</td>', row, re.S).group(1)
    assert change == '<span class="flat">—</span>'
    assert re.search(r'data-label="Vol">0<', row)


def test_the_status_tabs_show_open_closed_and_resolved_markets(client, make_agent):
    creator = make_agent()
    still_open = MarketFactory(creator=creator, question="Still open?")
    closed = MarketFactory(creator=creator, question="Closed early?")
    market_close(market_id=closed.id)
    done = MarketFactory(creator=creator, question="Already resolved?")
    resolved(done, "NO")

    default = get(client, "/")
    assert still_open.question in default
    assert closed.question not in default and done.question not in default
    assert "Closed early?" in get(client, "/?status=closed")
    resolved_tab = get(client, "/?status=resolved")
    assert "Already resolved?" in resolved_tab and "Still open?" not in resolved_tab
    assert "badge-no" in resolved_tab
    everything = get(client, "/?status=all")
    assert all(q in everything for q in ("Still open?", "Closed early?", "Already resolved?"))
    assert get(client, "/?status=bogus&page=abc&sort=nope").count('class="market-row"') == 1  # falls back to open


def test_the_search_box_filters_questions(client, make_agent):
    creator = make_agent()
    MarketFactory(creator=creator, question="Will the Fed cut rates?")
    MarketFactory(creator=creator, question="Will it snow in Paris?")

    html = get(client, "/?q=fed")

    assert "Will the Fed cut rates?" in html
    assert "Will it snow in Paris?" not in html
    assert 'value="fed"' in html
    assert "No open market matches" in get(client, "/?q=nothing-like-this")


def test_the_markets_page_is_paginated(client, db):
    bulk_markets(120)

    first, third = get(client, "/"), get(client, "/?page=3")

    assert first.count('class="market-row"') == 50
    assert third.count('class="market-row"') == 20
    assert "1–50 of 120" in first
    assert 'rel="next"' in first and 'rel="prev"' in third


def test_historical_reopened_markets_are_marked(client, market):
    Market.objects.filter(id=market.id).update(is_historical=True)
    assert "Historical · reopened" in get(client, "/")


# --------------------------------------------------------------------------------------------------------------------
# A market


def test_the_market_page_shows_the_question_rules_source_and_live_hooks(client, make_agent):
    market = MarketFactory(
        creator=make_agent(),
        question="Will the comet be visible?",
        description="A comet passes in spring.",
        resolution_criteria="YES if an observatory reports it.",
        deadline=timezone.now() + timedelta(days=5),
    )
    Market.objects.filter(id=market.id).update(
        source="polymarket",
        source_url="https://polymarket.com/event/comet",
        attribution="Question from Polymarket, Apache-2.0.",
        is_historical=True,
    )
    market.refresh_from_db()

    html = get(client, market_url(market))

    for text in (
        "Will the comet be visible?",
        "A comet passes in spring.",
        "YES if an observatory reports it.",
        'href="https://polymarket.com/event/comet"',
        "Question from Polymarket, Apache-2.0.",
        "Historical · reopened",
        f'data-market-id="{market.id}"',
        f'data-seq="{market.seq}"',
        'id="ws-status"',
        'id="last-price"',
        'id="volume"',
        'id="trades"',
        "/static/js/market.js",
        "No trades yet",
    ):
        assert text in html, text
    assert 'id="market-outcome" class="outcome-banner outcome-none" hidden' in html


def test_the_depth_ladder_aggregates_levels_and_shows_no_bids_as_yes_asks(client, market):
    alice, bob, carol, dave = new_agent(), new_agent(), new_agent(), new_agent()
    mint(carol, dave, market, 10, yes_price="0.20")  # carol holds 10 YES to sell; one trade, nothing rests
    place(alice, market, "YES", "BUY", "0.40", 3)
    place(bob, market, "YES", "BUY", "0.40", 4)  # same level: 7
    place(alice, market, "YES", "BUY", "0.38", 5)
    place(bob, market, "NO", "BUY", "0.45", 6)  # NO bid 0.45 = YES ask 0.55
    place(carol, market, "NO", "BUY", "0.50", 2)  # YES ask 0.50 (best)
    place(carol, market, "YES", "SELL", "0.70", 8)  # SELL YES 0.70 rests as a NO bid at 0.30 = YES ask 0.70
    place(bob, market, "NO", "BUY", "0.50", 1)  # and NO bids at 0.50 grow to 3

    levels = ladder_levels(get(client, market_url(market)))

    asks = [(price, size) for side, price, size in levels if side == "NO"]
    bids = [(price, size) for side, price, size in levels if side == "YES"]
    assert asks == [("0.50", 3), ("0.55", 6), ("0.70", 8)]  # best (lowest) ask first
    assert bids == [("0.40", 7), ("0.38", 5)]  # best (highest) bid first


def test_the_market_page_shows_trades_prices_and_top_holders(client, market):
    alice, bob = new_agent(), new_agent()
    place(alice, market, "YES", "BUY", "0.60", 10)
    first = place(bob, market, "NO", "BUY", "0.45", 4).trades[0]
    place(alice, market, "YES", "BUY", "0.61", 5)
    second = place(bob, market, "NO", "BUY", "0.40", 5).trades[0]
    place(bob, market, "NO", "BUY", "0.30", 2)

    html = get(client, market_url(market))

    assert trade_ids(html)[:2] == [str(second.id), str(first.id)]  # newest first
    assert re.search(r'id="last-price">0.61<', html)
    assert re.search(r'id="volume">9<', html)
    assert re.search(r'id="best-bid">0.60<', html) and re.search(r'id="best-ask">0.70<', html)
    assert re.search(r'id="spread">0.10<', html)
    holders_yes = html[html.index('id="holders-yes"') : html.index('id="holders-no"')]
    holders_no = html[html.index('id="holders-no"') :]
    assert f'href="/agents/{alice.name}/"' in holders_yes and ">9<" in holders_yes
    assert f'href="/agents/{bob.name}/"' in holders_no[: holders_no.index("</table>")]
    assert re.search(r"\"points\": \[\[\d+, \"0.60\"\], \[\d+, \"0.61\"\]\], \"trades\": 2", html)  # the chart


def test_a_resolved_market_shows_its_outcome_and_the_agents_reasoning(client, market):
    alice, bob = new_agent(), new_agent()
    place(alice, market, "YES", "BUY", "0.60", 3, forecast="0.8", reasoning="Tests usually pass.")
    ForecastFactory(agent=bob, market=market, probability="0.3", reasoning="Flaky suite, I think.")

    before = get(client, market_url(market))
    assert "Tests usually pass." not in before and "Flaky suite" not in before

    resolved(market, "YES")
    html = get(client, market_url(market))

    banner = html[html.index('id="market-outcome"') :]
    banner = banner[: banner.index("</div>")]
    assert "outcome-YES" in banner and "hidden" not in banner
    assert ">YES<" in banner and "Each YES contract paid 1.00." in banner
    assert "Tests usually pass." in html and "Flaky suite, I think." in html
    assert ladder_levels(html) == []  # resolution cancelled the resting order
    assert 'data-status="resolved"' in html and 'data-outcome="YES"' in html


def test_unknown_pages_are_404(client, db):
    get(client, f"/markets/{uuid.uuid4()}/", status=404)
    get(client, "/markets/not-a-uuid/", status=404)
    get(client, "/agents/nobody-here/", status=404)
    get(client, "/agents/bad%00name/", status=404)


# --------------------------------------------------------------------------------------------------------------------
# Leaderboard and profiles


def _scored_trio(market: Market) -> tuple[Agent, Agent, Agent]:
    """alice wins on YES, bob loses on NO, carol only trades nothing and states no forecast."""
    alice, bob, carol = new_agent("alice"), new_agent("bob"), new_agent("carol")
    place(alice, market, "YES", "BUY", "0.60", 10, forecast="0.9", reasoning="Strong signal.")
    place(bob, market, "NO", "BUY", "0.40", 10, forecast="0.2", reasoning="I doubt it.")
    resolved(market, "YES")
    for agent in (alice, bob, carol):
        agent.refresh_from_db()
    return alice, bob, carol


def test_the_leaderboard_ranks_by_reputation_balance_and_brier_score(client, market):
    alice, bob, carol = _scored_trio(market)
    assert alice.reputation > carol.reputation > bob.reputation

    def order(html: str) -> list[str]:
        names = re.findall(r'class="agent-row" data-agent="([^"]+)"', html)
        return [n for n in names if n in (alice.name, bob.name, carol.name)]

    assert order(get(client, "/agents/")) == [alice.name, carol.name, bob.name]
    assert order(get(client, "/agents/?by=balance")) == [alice.name, carol.name, bob.name]
    brier = get(client, "/agents/?by=brier")
    assert order(brier) == [alice.name, bob.name]  # 0.01 before 0.64; carol has no score
    assert "0.0100" in brier and "0.6400" in brier
    assert f'href="/agents/{alice.name}/"' in brier
    assert order(get(client, f"/agents/?q={carol.name}")) == [carol.name]


def test_the_leaderboard_is_paginated(client, db):
    bulk_agents(130)
    first, last = get(client, "/agents/"), get(client, "/agents/?page=3")
    assert first.count('class="agent-row"') == 50 and last.count('class="agent-row"') == 30
    ranks = re.findall(r'class="rank[^"]*">(\d+)<', last)
    assert ranks[0] == "101"


def test_a_profile_shows_pnl_brier_positions_fills_and_public_reasoning(client, market, make_agent):
    alice, bob, _carol = _scored_trio(market)
    other = MarketFactory(creator=make_agent(), question="Another question?")
    place(alice, other, "YES", "BUY", "0.30", 4, forecast="0.35", reasoning="Secret until it resolves.")
    fill = place(bob, other, "NO", "BUY", "0.70", 4).trades[0]
    place(alice, other, "YES", "BUY", "0.25", 2)
    Market.objects.filter(id=other.id).update(last_price=Decimal("0.45"))  # a later mark, for the marked P&L
    alice.refresh_from_db()

    html = get(client, f"/agents/{alice.name}/")

    assert re.search(r'id="reputation"[^>]*>\+4\.00<', html)  # paid 6.00 for 10 YES that paid 10.00
    assert re.search(rf'id="balance">{alice.balance:,}<', html)
    assert re.search(r'id="brier">0\.0100<', html) and "over 1 market" in html
    assert "#1 by reputation" in html
    open_positions = html[html.index('id="open-positions"') : html.index('id="resolved-positions"')]
    assert "Another question?" in open_positions
    assert "YES 0.3000" in open_positions  # average price
    assert "0.45" in open_positions and "+0.60" in open_positions  # 4 YES marked at 0.45, bought at 0.30
    resolved_positions = html[html.index('id="resolved-positions"') : html.index('id="agent-fills"')]
    assert "Will the test pass?" in resolved_positions and "+4.00" in resolved_positions
    assert f'data-trade-id="{fill.id}"' in html
    assert "Strong signal." in html  # its reasoning in the resolved market is public
    assert "Secret until it resolves." not in html  # not yet: the other market is open

    bob_html = get(client, f"/agents/{bob.name}/")
    assert re.search(r'id="reputation"[^>]*>-4\.00<', bob_html) and "I doubt it." in bob_html


# --------------------------------------------------------------------------------------------------------------------
# Query counts and render times with a large book


def test_the_market_page_takes_the_same_queries_for_10_or_thousands_of_orders_trades_and_holders(
    client, market, django_assert_max_num_queries, capsys
):
    grow_market(market, orders=10, trades=10, holders=10)
    small = count_queries(client, market_url(market))

    grow_market(market, orders=5000, trades=5000, holders=2000)
    large = count_queries(client, market_url(market))

    assert small == large
    with django_assert_max_num_queries(9):
        html = get(client, market_url(market))
    assert len(trade_ids(html)) == 50
    assert len(ladder_levels(html)) == 90  # 45 YES bid levels and 45 YES ask levels, aggregated
    series = json.loads(re.search(r'<script id="price-series" type="application/json">(.*?)</script>', html).group(1))
    last = Trade.objects.filter(market=market).order_by("-seq").first()
    # The whole history, thinned: one point per run of seqs that holds a trade (here a quarter of the runs fall in
    # the stretch of resting orders, which has none), and the last trade.
    assert series["trades"] == 5010 and 250 < len(series["points"]) <= 501
    first = Trade.objects.filter(market=market).order_by("seq").first()
    assert series["points"][0] == [int(first.created_at.timestamp() * 1000), str(first.price)]
    assert series["points"][-1] == [int(last.created_at.timestamp() * 1000), str(last.price)]
    report(
        capsys,
        "market page",
        timed(client, market_url(market)),
        f"{Order.objects.filter(market=market, status__in=Order.RESTING).count()} resting orders, "
        f"{Trade.objects.filter(market=market).count()} trades, "
        f"{Position.objects.filter(market=market).count()} positions ({large} queries)",
    )


def test_a_resolved_market_page_takes_the_same_queries_for_few_or_many_forecasts(
    client, market, django_assert_max_num_queries
):
    Market.objects.filter(id=market.id).update(status=Market.Status.RESOLVED, outcome="NO", resolved_at=timezone.now())
    agents = bulk_agents(2000)
    Forecast.objects.bulk_create(
        [Forecast(agent=agents[i], market=market, probability=Decimal("0.3"), reasoning="why") for i in range(10)]
    )
    small = count_queries(client, market_url(market))
    Forecast.objects.bulk_create(
        [Forecast(agent=a, market=market, probability=Decimal("0.6"), reasoning="because") for a in agents]
    )
    assert count_queries(client, market_url(market)) == small
    with django_assert_max_num_queries(10):
        get(client, market_url(market))


def test_the_markets_page_takes_the_same_queries_for_10_or_thousands_of_markets_and_trades(
    client, db, django_assert_max_num_queries, capsys
):
    def grow(n_markets: int, trades_each: int) -> None:
        agents = bulk_agents(2)
        for market in bulk_markets(n_markets, traded=True):
            seq = Seq(market)
            bulk_trades(market, agents, trades_each, seq)
            seq.save()

    grow(10, 1)
    small = count_queries(client, "/")
    grow(40, 100)
    grow(500, 2)
    Trade.objects.filter(seq__lte=6).update(created_at=timezone.now() - timedelta(days=2))
    large = count_queries(client, "/")

    assert small == large
    with django_assert_max_num_queries(3):
        html = get(client, "/")
    assert html.count('class="market-row"') == 50
    report(
        capsys,
        "markets page",
        timed(client, "/"),
        f"{Market.objects.count()} markets, {Trade.objects.count()} trades ({large} queries)",
    )
    report(capsys, "markets page, search", timed(client, "/?q=bulk&sort=deadline&page=3"), "the same data")


def test_the_leaderboard_takes_the_same_queries_for_10_or_thousands_of_agents(
    client, db, django_assert_max_num_queries, capsys
):
    few = bulk_agents(10)
    Agent.objects.filter(id__in=[a.id for a in few[:4]]).update(brier_score=Decimal("0.1"), brier_count=1)
    small = {by: count_queries(client, f"/agents/?by={by}") for by in ("reputation", "balance", "brier")}
    agents = bulk_agents(5000)
    Agent.objects.filter(id__in=[a.id for a in agents[::3]]).update(brier_score=Decimal("0.2"), brier_count=3)
    large = {by: count_queries(client, f"/agents/?by={by}") for by in ("reputation", "balance", "brier")}

    assert small == large
    with django_assert_max_num_queries(2):
        get(client, "/agents/?page=40")
    report(capsys, "leaderboard", timed(client, "/agents/?page=20"), f"{Agent.objects.count()} agents")


def test_a_profile_takes_the_same_queries_for_10_or_thousands_of_positions_trades_and_forecasts(
    client, market, make_agent, django_assert_max_num_queries, capsys
):
    agent = make_agent("the-busy-one")
    url = f"/agents/{agent.name}/"

    def grow(n: int) -> None:
        peer = bulk_agents(1)[0]
        opened, done = bulk_markets(n, traded=True), bulk_markets(n, status=Market.Status.RESOLVED)
        Position.objects.bulk_create(
            [Position(agent=agent, market=m, yes_shares=3, yes_cost=Decimal("1.20")) for m in opened]
            + [Position(agent=agent, market=m, realized_pnl=Decimal("2.50")) for m in done]
        )
        Forecast.objects.bulk_create(
            [Forecast(agent=agent, market=m, probability=Decimal("0.7"), reasoning="reasons") for m in done + opened]
        )
        seq = Seq(market)
        bulk_trades(market, [agent, peer], n, seq)
        seq.save()

    grow(10)
    small = count_queries(client, url)
    grow(2000)
    large = count_queries(client, url)

    assert small == large
    # 8, and the latest backtests (the reliability diagram's query runs only for an agent with scored forecasts:
    # backtests/tests/test_pages.py counts that case).
    with django_assert_max_num_queries(9):
        html = get(client, url)
    assert "latest 50 of 2,010" in html  # open positions
    assert re.search(r'id="marked-pnl">\+603\.00<', html)  # 2010 x (3 YES at 0.50 - 1.20 paid)
    assert html.count('class="fill-row"') == 50
    report(
        capsys,
        "agent profile",
        timed(client, url),
        f"{Position.objects.filter(agent=agent).count()} positions, "
        f"{Trade.objects.filter(maker_agent=agent).count() + Trade.objects.filter(taker_agent=agent).count()} fills, "
        f"{Forecast.objects.filter(agent=agent).count()} forecasts ({large} queries)",
    )
