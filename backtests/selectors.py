"""Reads of the backtests app: a market's recorded history as the backtest engine takes it, backtest lists, and
what the spectator pages of section 11 show: a backtest's markets with their prices over its period and, on an
agent's profile, its latest backtests and the reliability diagram of its scored forecasts.

Each page read is a fixed number of queries whatever the size of the history: the diagram is one grouped query, the
executions shown are capped, a market's prices are sampled in the database."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Sum, Window
from django.db.models.functions import RowNumber
from moltstreet_client import metrics
from moltstreet_client.backtest import MarketHistory
from rest_framework import serializers

from agents.models import Agent
from backtests.charts import decimal_or_none
from backtests.models import Backtest, BacktestExecution
from markets.models import Forecast, Market, MarketEvent, Outcome
from trading.models import Trade
from trading.realtime import public_messages

# The API's time format (ISO 8601, UTC, ``Z``), the one GET /markets/{id}/events/ writes ``created_at`` in.
_TIME = serializers.DateTimeField()
# Events rendered per batch: the events endpoint's largest page, so memory stays bounded by the result, not the query.
_CHUNK = 5000
# The event kinds that give a strategy something to trade on (the engine's ``MarketHistory.has_data``): trades, book
# changes (order events) and source snapshots. ``market`` events alone (created, closed) are not a history.
TRADABLE_KINDS = (MarketEvent.Kind.TRADE, MarketEvent.Kind.ORDER, MarketEvent.Kind.REFERENCE)
# The page lists at most this many executions; the API pages through all of them.
EXECUTIONS_SHOWN = 500
# Points of a market's price line on a backtest's page (a sample of its trades over the period, and the last one).
PRICE_POINTS = 300
# Backtests listed on a profile.
PROFILE_BACKTESTS = 20


def market_events(market: Market, *, end: datetime | None = None) -> list[dict[str, Any]]:
    """Every public event of ``market`` recorded before ``end`` (all of them without it), in ``seq`` order, exactly as
    ``GET /api/v1/markets/{id}/events/?end=...`` sends them: ``trading.realtime.public_messages`` of the stored
    events plus ``created_at`` (ISO 8601, UTC). Read from the database, never over HTTP;
    ``backtests/tests/test_history.py`` checks it against the endpoint."""
    events = MarketEvent.objects.filter(market=market).order_by("seq")
    if end is not None:
        events = events.filter(created_at__lt=end)
    messages: list[dict[str, Any]] = []
    batch: list[MarketEvent] = []

    def flush() -> None:
        recorded = {event.seq: _TIME.to_representation(event.created_at) for event in batch}
        messages.extend(
            {**message, "created_at": recorded[message["seq"]]} for message in public_messages(market.id, batch)
        )
        batch.clear()

    for event in events.iterator(chunk_size=_CHUNK):
        batch.append(event)
        if len(batch) >= _CHUNK:
            flush()
    if batch:
        flush()
    return messages


def market_history(market: Market, *, end: datetime | None = None) -> MarketHistory:
    """The SDK's :class:`~moltstreet_client.backtest.MarketHistory` of ``market`` up to ``end`` (exclusive), built
    from the database the way ``MarketHistory.fetch`` builds it over the API."""
    return MarketHistory(str(market.id), market.question, market.deadline, market_events(market, end=end))


def markets_without_history(
    market_ids: list[Any], *, start: datetime | None = None, end: datetime | None = None
) -> list[str]:
    """The ids among ``market_ids`` with no trade, book change or source snapshot recorded in ``[start, end)`` (either
    bound open when ``None``): a backtest there would have nothing to trade on."""
    events = MarketEvent.objects.filter(kind__in=TRADABLE_KINDS)
    if start is not None:
        events = events.filter(created_at__gte=start)
    if end is not None:
        events = events.filter(created_at__lt=end)
    # One EXISTS per market (at most 20): each stops at the first matching row of the (market, seq) index.
    return [str(market_id) for market_id in market_ids if not events.filter(market_id=market_id).exists()]


def agent_backtests(agent: Agent) -> QuerySet[Backtest]:
    """``agent``'s backtests, newest first (the list's cursor orders them; ``backtests_agent_created`` serves it)."""
    return Backtest.objects.filter(agent=agent).select_related("agent").prefetch_related("markets")


def backtest_executions(backtest: Backtest) -> QuerySet[BacktestExecution]:
    """A backtest's executions in their order (``number``)."""
    return BacktestExecution.objects.filter(backtest=backtest)


# --------------------------------------------------------------------------------------------------------------------
# The spectator pages: calibration on the profile


def scored_forecasts(agent: Agent) -> QuerySet[Forecast]:
    """The forecasts the agent's Brier score is made of (``trading.resolution._settle``): in every market resolved YES
    or NO, its last forecast (the highest id; forecasts are refused once a market closes). A void market scores
    nothing. "Last" is an anti-join (no newer forecast of the agent in that market) on the
    ``markets_forecast_latest`` index."""
    newer = Forecast.objects.filter(agent=OuterRef("agent"), market=OuterRef("market"), id__gt=OuterRef("id"))
    return Forecast.objects.filter(
        agent=agent, market__status=Market.Status.RESOLVED, market__outcome__in=(Outcome.YES, Outcome.NO)
    ).exclude(Exists(newer))


def agent_reliability(agent: Agent) -> list[dict[str, Any]]:
    """The reliability diagram of :func:`scored_forecasts`: the ten bins of
    :func:`moltstreet_client.metrics.reliability` (``{lower, upper, count, mean_forecast, observed}``).

    One query grouped by (probability, outcome): probabilities have four places, so there are at most 20,002 groups
    and, in practice (agents state round numbers), a few dozen. The SDK's function then bins them exactly as it bins
    a backtest's forecasts (``Decimal``, no float edge at 0.3 or 0.7)."""
    rows = (
        scored_forecasts(agent)
        .values("probability", "market__outcome")
        .annotate(n=Count("id"))
        .values_list("probability", "market__outcome", "n")
        .order_by()
    )
    pairs = itertools.chain.from_iterable(
        itertools.repeat((probability, 1 if outcome == Outcome.YES else 0), n) for probability, outcome, n in rows
    )
    return metrics.reliability(pairs)


def agent_recent_backtests(agent: Agent, limit: int = PROFILE_BACKTESTS) -> tuple[list[Backtest], bool]:
    """The agent's newest ``limit`` backtests (only what the list shows) with ``pnl`` (credits, or ``None`` until it
    is done: an upload in progress has unchecked metrics) attached, and whether there are more. One query on
    ``backtests_agent_created``."""
    rows = list(
        Backtest.objects.filter(agent=agent)
        .only("id", "agent_id", "strategy", "version", "status", "reported", "metrics", "created_at")
        .order_by("-created_at", "-id")[: limit + 1]
    )
    for backtest in rows:
        done = backtest.status == Backtest.Status.DONE
        # An attribute for the profile page, set on the instance: not a model field, so unknown to mypy.
        backtest.pnl = decimal_or_none(backtest.metrics.get("pnl")) if done else None  # type: ignore[attr-defined]
    return rows[:limit], len(rows) > limit


# --------------------------------------------------------------------------------------------------------------------
# A backtest's page


@dataclass
class MarketRow:
    """A market of a backtest as its page shows it: P&L (its executions' cash flows, payout and marked value left,
    credits), fills and netting counts, and its YES price over the period."""

    market: Market
    fills: int = 0
    executions: int = 0
    cash: Decimal = Decimal("0.00")
    payout: Decimal | None = None
    marked: Decimal | None = None
    prices: list[tuple[datetime, Decimal]] = field(default_factory=list)
    before: Decimal | None = None
    trades: int = 0
    chart: dict[str, Any] | None = None

    @property
    def pnl(self) -> Decimal:
        return self.cash + (self.payout or 0) + (self.marked or 0)


def backtest_markets(backtest: Backtest, start: datetime, end: datetime, *, prices: bool) -> list[MarketRow]:
    """The backtest's markets with their executions summed (one grouped query) and, with ``prices``, each one's YES
    price over ``[start, end]`` (:func:`market_prices`: up to three queries a market, at most 20 markets)."""
    rows = {m.id: MarketRow(market=m) for m in backtest.markets.order_by("question", "id")}
    sums = (
        BacktestExecution.objects.filter(backtest=backtest)
        .values("market_id")
        .annotate(executions=Count("id"), fills=Count("id", filter=~Q(reason="netting")), cash=Sum("cash"))
        .order_by()
    )
    for total in sums:
        row = rows[total["market_id"]]
        row.executions, row.fills, row.cash = total["executions"], total["fills"], total["cash"]
    for market_id, row in rows.items():
        row.payout = decimal_or_none(backtest.payouts.get(str(market_id)))
        row.marked = decimal_or_none(backtest.marked.get(str(market_id)))
        if prices:
            row.prices, row.before, row.trades = market_prices(row.market, start, end)
    return list(rows.values())


def market_prices(
    market: Market, start: datetime, end: datetime, max_points: int = PRICE_POINTS
) -> tuple[list[tuple[datetime, Decimal]], Decimal | None, int]:
    """The market's trades in ``[start, end]`` as ``(time, YES price)`` in seq order (every trade up to
    ``max_points``, else every k-th and the last, numbered in the database), the last price before ``start`` and
    the number of trades in the period. Three queries on the ``(market, created_at)`` covering index."""
    trades = Trade.objects.filter(market=market)
    window = trades.filter(created_at__gte=start, created_at__lte=end)
    count = window.count()
    before = trades.filter(created_at__lt=start).order_by("-created_at", "-seq").values_list("price", flat=True).first()
    if count <= max_points:
        rows = window.order_by("seq").values_list("created_at", "price")
    else:
        step = math.ceil(count / max_points)
        keep = [*range(1, count + 1, step), count]
        rows = (
            window.annotate(n=Window(RowNumber(), order_by=F("seq").asc()))
            .filter(n__in=keep)
            .order_by("seq")
            .values_list("created_at", "price")
        )
    return list(rows), before, count


__all__ = [
    "EXECUTIONS_SHOWN",
    "TRADABLE_KINDS",
    "MarketRow",
    "agent_backtests",
    "agent_recent_backtests",
    "agent_reliability",
    "backtest_executions",
    "backtest_markets",
    "market_events",
    "market_history",
    "market_prices",
    "markets_without_history",
    "scored_forecasts",
]
