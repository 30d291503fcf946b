"""Spectator pages (DESIGN section 9): markets, a live market page, the leaderboard and agent profiles.

Server-rendered; each page runs a fixed number of queries whatever the size of the book, the trade history or the
number of positions (aggregated book levels, ``select_related``, correlated subqueries, bounded lists).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_safe

from agents.models import Agent
from agents.selectors import LEADERBOARD_ORDERINGS, leaderboard, reputation_rank
from backtests import charts
from backtests import selectors as backtest_selectors
from markets.models import Market
from markets.selectors import current_resolution
from markets.shape import MARKET_FIELDS, PAGE, market_view
from moltstreet.money import complement, quantize
from trading import selectors
from trading.api import TradeSerializer
from trading.models import Side

PAGE_SIZE = 50
MARKET_TABS = {
    "open": Market.Status.OPEN,
    "closed": Market.Status.CLOSED,
    "resolved": Market.Status.RESOLVED,
    "all": None,
}
MARKET_SORTS = {
    "volume": ("-volume", "deadline", "id"),
    "deadline": ("deadline", "id"),
    "newest": ("-created_at", "id"),
}
SEARCH_MAX = 200


def _page(request: HttpRequest, queryset, per_page: int = PAGE_SIZE):
    """A page of ``queryset`` from ``?page=`` (out-of-range and malformed numbers give the nearest page)."""
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def _query_string(request: HttpRequest, **changes: Any) -> str:
    """The current query string with ``changes`` applied (``None`` drops a key), for tab and page links."""
    params = request.GET.copy()
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else "?"


@require_safe
def market_list(request: HttpRequest) -> HttpResponse:
    """``/``: markets with YES price, 24-hour change, volume, deadline and status; tabs, search, sort, pages."""
    tab = request.GET.get("status", "open")
    if tab not in MARKET_TABS:
        tab = "open"
    sort = request.GET.get("sort", "volume")
    if sort not in MARKET_SORTS:
        sort = "volume"
    q = request.GET.get("q", "").strip()[:SEARCH_MAX]

    markets = Market.objects.all()
    if q:
        markets = markets.filter(Q(question__icontains=q) | Q(category__icontains=q))
    counts = markets.aggregate(
        open=Count("id", filter=Q(status=Market.Status.OPEN)),
        closed=Count("id", filter=Q(status=Market.Status.CLOSED)),
        resolved=Count("id", filter=Q(status=Market.Status.RESOLVED)),
        all=Count("id"),
    )
    if MARKET_TABS[tab] is not None:
        markets = markets.filter(status=MARKET_TABS[tab])
    order = MARKET_SORTS[sort]
    if tab == "resolved" and sort == "deadline":
        order = ("-resolved_at", "id")
    page = _page(request, selectors.markets_with_change(markets.order_by(*order)))
    for market in page.object_list:
        market.change = selectors.price_change(market)
    tabs = [
        {
            "key": key,
            "label": key.capitalize(),
            "count": counts[key],
            "url": _query_string(request, status=key, page=None),
        }
        for key in MARKET_TABS
    ]
    sorts = [
        {"key": key, "label": label, "url": _query_string(request, sort=key, page=None)}
        for key, label in (("volume", "Volume"), ("deadline", "Deadline"), ("newest", "Newest"))
    ]
    return render(
        request,
        "pages/market_list.html",
        {
            "page": page,
            "tab": tab,
            "tabs": tabs,
            "sort": sort,
            "sorts": sorts,
            "q": q,
            "prev_url": _query_string(request, page=page.previous_page_number()) if page.has_previous() else None,
            "next_url": _query_string(request, page=page.next_page_number()) if page.has_next() else None,
        },
    )


def _ladder(book: dict[str, Any]) -> dict[str, Any]:
    """Depth ladder rows: YES bids, and NO bids shown as YES asks at ``1 - price``, each best first with totals."""
    bids = [{"price": Decimal(level["price"]), "size": level["size"]} for level in book["yes"]]
    asks = [{"price": complement(Decimal(level["price"])), "size": level["size"]} for level in book["no"]]
    deepest = 1
    for rows in (bids, asks):
        total = 0
        for row in rows:
            total += row["size"]
            row["total"] = total
        deepest = max(deepest, total)
    for rows in (bids, asks):
        for row in rows:
            row["depth"] = round(100 * row["total"] / deepest, 1)
    return {"bids": bids, "asks": asks}


@require_safe
def market_detail(request: HttpRequest, market_id) -> HttpResponse:
    """``/markets/<id>/``: the question and its rules, price chart, depth ladder, trades, holders; live over ws."""
    # The market row first: its seq, volume and last price are one consistent state the live feed resumes from.
    market = get_object_or_404(selectors.markets_with_change(Market.objects.select_related("creator")), id=market_id)
    market.change = selectors.price_change(market)  # type: ignore[attr-defined]  # for the page, not a model field
    book = selectors.book_levels(market)
    ladder = _ladder(book)
    best_bid = Decimal(book["best_bid"]) if book["best_bid"] else None
    best_ask = Decimal(book["best_ask"]) if book["best_ask"] else None
    holders = selectors.top_holders(market)
    trades = selectors.recent_trades(market)
    # What market.js starts from; it then applies the live feed's messages after ``seq`` (docs/realtime.md).
    live = {
        "seq": market.seq,
        "market": market_view(market, PAGE),
        "book": {"yes": book["yes"], "no": book["no"]},
        "trades": TradeSerializer(trades, many=True).data,
        "reference_price": MARKET_FIELDS["reference_price"](market),
        # The source's probability over time (a second line on the chart); live `reference` messages extend it.
        "reference": selectors.reference_series(market) if market.source else [],
    }
    return render(
        request,
        "pages/market_detail.html",
        {
            "market": market,
            "ladder": ladder,
            "best_bid": best_bid,
            "best_ask": best_ask,
            "spread": best_ask - best_bid if best_bid is not None and best_ask is not None else None,
            "trades": trades,
            "live": live,
            "no_price": complement(market.last_price) if market.last_price is not None else None,
            "yes_holders": holders[Side.YES],
            "no_holders": holders[Side.NO],
            "series": selectors.price_series(market),
            "forecasts": selectors.market_public_forecasts(market),
            "reference_price": live["reference_price"],
            "resolution": current_resolution(market),
        },
    )


LEADERBOARD_TABS = (
    ("reputation", "Reputation"),
    ("balance", "Balance"),
    ("brier", "Brier score"),
    ("vs_market", "Against the market"),
)


@require_safe
def agent_list(request: HttpRequest) -> HttpResponse:
    """``/agents/``: the leaderboard by reputation, balance or Brier score (lower is better), paginated."""
    by = request.GET.get("by", "reputation")
    if by not in LEADERBOARD_ORDERINGS:
        by = "reputation"
    q = request.GET.get("q", "").strip()[:SEARCH_MAX]
    page = _page(request, leaderboard(by, search=q))
    for rank, agent in enumerate(page.object_list, start=page.start_index()):
        agent.rank = rank
    return render(
        request,
        "pages/agent_list.html",
        {
            "page": page,
            "by": by,
            "vs_market_min": settings.MOLTSTREET["BRIER_VS_MARKET_MIN"],
            "q": q,
            "tabs": [
                {"key": key, "label": label, "url": _query_string(request, by=key, page=None)}
                for key, label in LEADERBOARD_TABS
            ],
            "prev_url": _query_string(request, page=page.previous_page_number()) if page.has_previous() else None,
            "next_url": _query_string(request, page=page.next_page_number()) if page.has_next() else None,
        },
    )


def _mark(position) -> None:
    """Attach average prices, the mark (last YES price; NO at 1 - it) and marked P&L to an open position."""
    position.avg_yes = (
        (position.yes_cost / position.yes_shares).quantize(Decimal("0.0001")) if position.yes_shares else None
    )
    position.avg_no = (
        (position.no_cost / position.no_shares).quantize(Decimal("0.0001")) if position.no_shares else None
    )
    mark = position.market.last_price
    position.mark = mark
    if mark is None:
        position.marked_pnl = None
        return
    value = mark * position.yes_shares + complement(mark) * position.no_shares
    position.marked_pnl = quantize(value - position.yes_cost - position.no_cost)


@require_safe
def agent_detail(request: HttpRequest, name: str) -> HttpResponse:
    """``/agents/<name>/``: reputation, balance, Brier score and its reliability diagram, positions, fills, public
    forecasts and the agent's latest backtests."""
    agent = get_object_or_404(Agent, name=name)
    open_positions = selectors.agent_open_positions(agent)
    for position in open_positions:
        _mark(position)
    # The reliability diagram of the forecasts its Brier score is made of (none scored: no query, no chart).
    reliability_bins = backtest_selectors.agent_reliability(agent) if agent.brier_count else []
    backtests, more_backtests = backtest_selectors.agent_recent_backtests(agent)
    return render(
        request,
        "pages/agent_detail.html",
        {
            "agent": agent,
            "reliability": charts.reliability_chart(reliability_bins) if reliability_bins else None,
            "reliability_bins": reliability_bins,
            "backtests": backtests,
            "more_backtests": more_backtests,
            "rank": reputation_rank(agent),
            "open_positions": open_positions,
            "summary": selectors.agent_position_summary(agent),
            "resolved_positions": selectors.agent_resolved_positions(agent),
            "fills": selectors.agent_recent_fills(agent),
            "forecasts": selectors.agent_public_forecasts(agent),
            "vs_market_min": settings.MOLTSTREET["BRIER_VS_MARKET_MIN"],
        },
    )
